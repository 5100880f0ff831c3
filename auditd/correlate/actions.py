"""What people do to an incident: change its status or tier, assign it, add a note,
dismiss it with a reason, merge a duplicate into it, set its economic loss or its
critical-infrastructure flag; and the respond stage's trace of a playbook step.

Actions are values (``model.Transition``, ``SetTier``, ``Assign``, ``Note``,
``Dismiss``, ``Merge``, ``SetLoss``, ``SetCII``, ``StepTrace``) applied by
``Correlator.apply`` in the caller's transaction, like alerts, so that every change to
an incident reaches the change log the same way. Each says who (and, where it changes
the incident's course, why) and leaves an entry on the hash-chained timeline.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import msgspec

from auditd.correlate.grading import Facts, Grade, Grader
from auditd.correlate.model import (
    DISMISSAL_REASONS, STATUSES, TRANSITIONS, Action, Assign, CorrelateError, Dismiss,
    IllegalTransition, IncidentChange, Merge, Note, SetCII, SetLoss, SetTier, StepTrace, Transition,
    UnknownIncident,
)
from auditd.correlate.settings import TIERS, tier_rank
from auditd.correlate.timeline import INSERT_ENTRY, Head, next_entry
from auditd.store.times import from_db

# columns an action may set; names never come from the caller
_SETTABLE = frozenset({"status", "tier", "assignee", "dismissal_reason", "merged_into", "economic_loss", "cii",
                       "discovered_at", "first_seen", "last_seen", "alert_count", "affected_count",
                       "max_record_count", "sensitive", "band", "rules", "categories", "step_entries"})
_FINAL = ("closed", "dismissed")
_list = msgspec.json.Decoder(list[str])
_encode = msgspec.json.Encoder()


def _require(value: str | None, what: str) -> str:
    if value is None or not value.strip():
        raise CorrelateError(f"{what} is required")
    return value.strip()


def validate(action: Action) -> None:
    """Refuse an action that cannot apply to any incident, before touching the store."""
    _require(action.who, "who")
    if isinstance(action, Transition):
        _require(action.why, "why")
        if action.status not in STATUSES:
            raise CorrelateError(f"unknown status '{action.status}' (valid: {', '.join(STATUSES)})")
    elif isinstance(action, SetTier):
        _require(action.why, "why")
        if action.tier not in TIERS:
            raise CorrelateError(f"unknown tier '{action.tier}' (valid: {', '.join(TIERS)})")
    elif isinstance(action, Assign):
        _require(action.assignee, "assignee")
    elif isinstance(action, Note):
        _require(action.text, "text")
    elif isinstance(action, Dismiss):
        _require(action.why, "why")
        if action.reason not in DISMISSAL_REASONS:
            raise CorrelateError(f"unknown dismissal reason '{action.reason}' (valid: {', '.join(DISMISSAL_REASONS)})")
    elif isinstance(action, Merge):
        _require(action.why, "why")
        if _require(action.into, "into") == action.incident_id:
            raise CorrelateError("an incident cannot be merged into itself")
    elif isinstance(action, SetLoss):
        _require(action.why, "why")
        if not action.yuan >= 0 or action.yuan == float("inf"):  # also refuses NaN
            raise CorrelateError("the economic loss must be a finite amount of yuan, 0 or more")
    elif isinstance(action, SetCII):
        _require(action.why, "why")
    elif isinstance(action, StepTrace):
        _require(action.step_id, "step_id")
        _require(action.event, "event")
    else:
        raise CorrelateError(f"unknown action {type(action).__name__}")


_COLUMNS = ("status, tier, assignee, timeline_seq, timeline_head, actor, title, band, alert_count,"
            " affected_count, discovered_at, economic_loss, cii, dismissal_reason, merged_into,"
            " max_record_count, categories, first_seen, last_seen, sensitive, rules, step_entries")
_CLAIM = f"UPDATE incidents SET updated_at = ? WHERE incident_id = ? RETURNING {_COLUMNS}"


@dataclass(slots=True)
class _Row:
    """An incident as an action finds it; updated in place as the action applies."""

    incident_id: str
    status: str
    tier: str
    assignee: str | None
    head: Head
    actor: str | None
    title: str
    band: str | None
    alert_count: int
    affected_count: int
    discovered_at: str
    economic_loss: float | None
    cii: bool
    dismissal_reason: str | None
    merged_into: str | None
    max_record_count: int
    categories: str
    first_seen: str
    last_seen: str
    sensitive: bool
    rules: str
    step_entries: int


def _claim(conn: sqlite3.Connection, incident_id: str, at: str) -> _Row:
    # Touch the incident first, so this connection holds the write lock before it reads
    # the timeline head: a daemon batch cannot slip an entry in between.
    row = conn.execute(_CLAIM, (at, incident_id)).fetchone()
    if row is None:
        raise UnknownIncident(incident_id)
    (status, tier, assignee, seq, head_hash, actor, title, band, alerts, affected, discovered, loss, cii,
     reason, merged_into, max_records, categories, first_seen, last_seen, sensitive, rules, steps) = row
    return _Row(incident_id, status, tier, assignee, Head(seq, head_hash), actor, title, band, alerts, affected,
                discovered, loss, bool(cii), reason, merged_into, max_records, categories, first_seen, last_seen,
                bool(sensitive), rules, steps)


def _change(row: _Row, who: str, at: str, **fields: Any) -> IncidentChange:
    return IncidentChange(
        incident_id=row.incident_id, version=row.head.seq, who=who, at=from_db(at), actor=row.actor,
        title=row.title, status=row.status, tier=row.tier, band=row.band, alert_count=row.alert_count,
        affected_count=row.affected_count, discovered_at=from_db(row.discovered_at), assignee=row.assignee,
        economic_loss=row.economic_loss, cii=row.cii, dismissal_reason=row.dismissal_reason,
        merged_into=row.merged_into, **fields,
    )


def apply_action(conn: sqlite3.Connection, action: Action, at: str, grader: Grader) -> list[IncidentChange]:
    """Apply one validated action; the changes it made (none when it changes nothing)."""
    row = _claim(conn, action.incident_id, at)
    who = action.who.strip()
    if isinstance(action, Merge):
        return _merge(conn, action, row, who, at, grader)
    change: dict[str, Any]
    if isinstance(action, Transition):
        if action.status not in TRANSITIONS[row.status]:
            raise IllegalTransition(action.incident_id, row.status, action.status)
        previous = row.status
        _record(conn, row, at, "status_changed", who,
                {"from": previous, "to": action.status, "why": action.why.strip()}, status=action.status)
        change = {"cause": "status_changed", "previous_status": previous}
    elif isinstance(action, Dismiss):
        if "dismissed" not in TRANSITIONS[row.status]:
            raise IllegalTransition(action.incident_id, row.status, "dismissed")
        previous = row.status
        _record(conn, row, at, "status_changed", who,
                {"from": previous, "to": "dismissed", "reason": action.reason, "why": action.why.strip()},
                status="dismissed", dismissal_reason=action.reason)
        change = {"cause": "dismissed", "previous_status": previous}
    elif isinstance(action, SetTier):
        if action.tier == row.tier:
            return []
        previous = row.tier
        _record(conn, row, at, "tier_changed", who, {"from": previous, "to": action.tier, "reason": action.why.strip()},
                tier=action.tier)
        change = {"cause": "tier_changed", "previous_tier": previous,
                  "tier_raised": tier_rank(action.tier) < tier_rank(previous) if previous in TIERS else False}
    elif isinstance(action, Assign):
        new = action.assignee.strip()
        _record(conn, row, at, "assigned", who, {"from": row.assignee, "to": new}, assignee=new)
        change = {"cause": "assigned"}
    elif isinstance(action, Note):
        _record(conn, row, at, "note", who, {"text": action.text.strip()})
        change = {"cause": "note"}
    elif isinstance(action, SetLoss):
        _record(conn, row, at, "loss_set", who,
                {"from": row.economic_loss, "to": action.yuan, "why": action.why.strip()}, economic_loss=action.yuan)
        change = {"cause": "loss_set", **_regrade(conn, row, at, grader)}
    elif isinstance(action, SetCII):
        if action.cii == row.cii:
            return []
        _record(conn, row, at, "cii_set", who, {"from": row.cii, "to": action.cii, "why": action.why.strip()},
                cii=action.cii)
        change = {"cause": "cii_set", **_regrade(conn, row, at, grader)}
    elif isinstance(action, StepTrace):
        _record(conn, row, at, "step", who, {"step": action.step_id, "event": action.event, **action.detail},
                step_entries=row.step_entries + 1)
        change = {"cause": "step"}
    else:  # pragma: no cover - validate() refused it
        raise CorrelateError(f"unknown action {type(action).__name__}")
    return [_change(row, who, at, **change)]


def _facts(row: _Row) -> Facts:
    return Facts(actor=row.actor, categories=frozenset(_list.decode(row.categories)), affected=row.affected_count,
                 max_record_count=row.max_record_count, rules=frozenset(), severe_sensitive=False)


def _regrade(conn: sqlite3.Connection, row: _Row, at: str, grader: Grader) -> dict[str, Any]:
    """Raise the tier by the size bands after a fact changed; upward only."""
    grade = grader.by_size(Grade(row.tier, "", None), max(row.affected_count, row.max_record_count),
                           row.economic_loss, row.cii)
    if tier_rank(grade.tier) >= tier_rank(row.tier):
        return {}
    previous = row.tier
    _record(conn, row, at, "tier_changed", "correlator", {"from": previous, "to": grade.tier, "reason": grade.reason},
            tier=grade.tier)
    return {"previous_tier": previous, "tier_raised": True}


def _merge(conn: sqlite3.Connection, action: Merge, source: _Row, who: str, at: str,
           grader: Grader) -> list[IncidentChange]:
    target = _claim(conn, action.into, at)
    for row in (source, target):
        if row.status in _FINAL:
            raise CorrelateError(f"{row.incident_id} is {row.status}: only active incidents are merged")
    why = action.why.strip()
    # the survivor's clocks start at the earlier discovery; the absorbed chain's head is
    # written into the survivor's chain, so the two timelines stay tied to each other
    conn.execute("INSERT OR IGNORE INTO incident_subjects (incident_id, subject_id)"
                 " SELECT ?, subject_id FROM incident_subjects WHERE incident_id = ?",
                 (target.incident_id, source.incident_id))
    affected = conn.execute("SELECT COUNT(*) FROM incident_subjects WHERE incident_id = ?",
                            (target.incident_id,)).fetchone()[0]
    discovered = min(source.discovered_at, target.discovered_at)
    categories = sorted(set(_list.decode(source.categories)) | set(_list.decode(target.categories)))
    rules = sorted(set(_list.decode(source.rules)) | set(_list.decode(target.rules)))
    merged = {
        "discovered_at": discovered, "first_seen": min(source.first_seen, target.first_seen),
        "last_seen": max(source.last_seen, target.last_seen),
        "alert_count": source.alert_count + target.alert_count, "affected_count": affected,
        "max_record_count": max(source.max_record_count, target.max_record_count),
        "sensitive": source.sensitive or target.sensitive, "categories": _encode.encode(categories).decode(),
        "rules": _encode.encode(rules).decode(),
        "economic_loss": _sum_loss(source.economic_loss, target.economic_loss), "cii": source.cii or target.cii,
    }
    previous_discovery = target.discovered_at
    for name, value in merged.items():
        setattr(target, name, value)
    band = target.band or source.band or grader.band_reached(_facts(target))
    band_reached = band is not None and target.band is None
    target.band = band
    tier = min((source.tier, target.tier), key=tier_rank)
    if band_reached:
        tier = min((tier, grader.tiers.leak), key=tier_rank)
    grade = grader.by_size(Grade(tier, "", None), max(affected, target.max_record_count), target.economic_loss,
                           target.cii)
    previous_tier, source_status = target.tier, source.status
    _record(conn, source, at, "merged_into", who, {"into": target.incident_id, "why": why},
            status="dismissed", dismissal_reason="duplicate", merged_into=target.incident_id)
    _record(conn, target, at, "merged", who, {
        "from": source.incident_id, "why": why, "from_head": {"seq": source.head.seq, "hash": source.head.hash},
        "discovered_at": {"from": previous_discovery, "to": discovered}, "affected_count": affected,
        "tier": {"from": previous_tier, "to": grade.tier},
    }, **merged, band=band, tier=grade.tier)
    raised = tier_rank(grade.tier) < tier_rank(previous_tier)
    return [
        _change(source, who, at, cause="merged_away", previous_status=source_status),
        _change(target, who, at, cause="merged", merged_from=source.incident_id, band_reached=band_reached,
                previous_tier=previous_tier if raised else None, tier_raised=raised),
    ]


def _sum_loss(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


def _record(conn: sqlite3.Connection, row: _Row, at: str, kind: str, who: str, data: dict[str, Any],
            **columns: Any) -> None:
    assert set(columns) <= _SETTABLE
    conn.execute(INSERT_ENTRY, next_entry(row.incident_id, row.head, at, kind, who, data))
    for name, value in columns.items():
        setattr(row, name, value)
    sets = "".join(f"{name} = ?, " for name in columns)
    conn.execute(
        f"UPDATE incidents SET {sets}timeline_seq = ?, timeline_head = ? WHERE incident_id = ?",
        (*columns.values(), row.head.seq, row.head.hash, row.incident_id),
    )
