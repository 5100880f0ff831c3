"""What people do to an incident: change its status or tier, assign it, add a note.

Actions are values (``model.Transition``, ``SetTier``, ``Assign``, ``Note``) applied by
``Correlator.apply`` in the caller's transaction, like alerts, so that every change to
an incident reaches the change log the same way. Each says who (and, where it changes
the incident's course, why) and leaves an entry on the hash-chained timeline.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from auditd.correlate.model import (
    STATUSES, TRANSITIONS, Action, Assign, CorrelateError, IllegalTransition, IncidentChange,
    Note, SetTier, Transition, UnknownIncident,
)
from auditd.correlate.settings import TIERS
from auditd.correlate.timeline import INSERT_ENTRY, Head, next_entry
from auditd.store.times import from_db

# columns an action may set; names never come from the caller
_SETTABLE = frozenset({"status", "tier", "assignee"})


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
    else:
        raise CorrelateError(f"unknown action {type(action).__name__}")


_CLAIM = ("UPDATE incidents SET updated_at = ? WHERE incident_id = ?"
          " RETURNING status, tier, assignee, timeline_seq, timeline_head, actor, title, band,"
          " alert_count, affected_count, discovered_at")


def apply_action(conn: sqlite3.Connection, action: Action, at: str) -> IncidentChange | None:
    """Apply one validated action; None when it changes nothing (the tier it already has)."""
    # Touch the incident first, so this connection holds the write lock before it reads
    # the timeline head: a daemon batch cannot slip an entry in between.
    row = conn.execute(_CLAIM, (at, action.incident_id)).fetchone()
    if row is None:
        raise UnknownIncident(action.incident_id)
    status, tier, assignee, seq, head_hash, actor, title, band, alerts, affected, discovered = row
    head = Head(seq, head_hash)
    who = action.who.strip()
    change: dict[str, Any] = {}
    if isinstance(action, Transition):
        if action.status not in TRANSITIONS[status]:
            raise IllegalTransition(action.incident_id, status, action.status)
        _record(conn, action.incident_id, head, at, "status_changed", who,
                {"from": status, "to": action.status, "why": action.why.strip()}, status=action.status)
        change = {"cause": "status_changed", "previous_status": status}
        status = action.status
    elif isinstance(action, SetTier):
        if action.tier == tier:
            return None
        _record(conn, action.incident_id, head, at, "tier_changed", who,
                {"from": tier, "to": action.tier, "reason": action.why.strip()}, tier=action.tier)
        change = {"cause": "tier_changed", "previous_tier": tier,
                  "tier_raised": TIERS.index(action.tier) < TIERS.index(tier) if tier in TIERS else False}
        tier = action.tier
    elif isinstance(action, Assign):
        new = action.assignee.strip()
        _record(conn, action.incident_id, head, at, "assigned", who, {"from": assignee, "to": new}, assignee=new)
        change = {"cause": "assigned"}
        assignee = new
    elif isinstance(action, Note):
        _record(conn, action.incident_id, head, at, "note", who, {"text": action.text.strip()})
        change = {"cause": "note"}
    return IncidentChange(
        incident_id=action.incident_id, version=head.seq, who=who, at=from_db(at), actor=actor,
        title=title, status=status, tier=tier, band=band, alert_count=alerts, affected_count=affected,
        discovered_at=from_db(discovered), assignee=assignee, **change,
    )


def _record(conn: sqlite3.Connection, incident_id: str, head: Head, at: str, kind: str,
            who: str, data: dict[str, Any], **columns: Any) -> None:
    assert set(columns) <= _SETTABLE
    conn.execute(INSERT_ENTRY, next_entry(incident_id, head, at, kind, who, data))
    sets = "".join(f"{name} = ?, " for name in columns)
    conn.execute(
        f"UPDATE incidents SET {sets}timeline_seq = ?, timeline_head = ? WHERE incident_id = ?",
        (*columns.values(), head.seq, head.hash, incident_id),
    )
