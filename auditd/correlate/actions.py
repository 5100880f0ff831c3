"""What people do to an incident: change its status or tier, assign it, add a note.

Each action is one savepoint: atomic on a connection in autocommit mode (the CLI), and
folded into the caller's transaction when there is one. Every action says who and why,
and leaves an entry on the hash-chained timeline.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from auditd.correlate.model import (
    STATUSES, TRANSITIONS, Clock, CorrelateError, IllegalTransition, IncidentSummary,
    UnknownIncident, system_clock,
)
from auditd.correlate.queries import get_summary
from auditd.correlate.schema import iso_utc, savepoint
from auditd.correlate.settings import TIERS
from auditd.correlate.timeline import INSERT_ENTRY, Head, next_entry

# columns an action may set; names never come from the caller
_SETTABLE = frozenset({"status", "tier", "assignee"})


def _require(value: str | None, what: str) -> str:
    if value is None or not value.strip():
        raise CorrelateError(f"{what} is required")
    return value.strip()


def _claim(conn: sqlite3.Connection, incident_id: str, at: str) -> tuple[dict[str, Any], Head]:
    """Touch the incident first, so this connection holds the write lock before it reads
    the timeline head: a daemon batch cannot slip an entry in between."""
    row = conn.execute(
        "UPDATE incidents SET updated_at = ? WHERE incident_id = ?"
        " RETURNING status, tier, assignee, timeline_seq, timeline_head", (at, incident_id),
    ).fetchone()
    if row is None:
        raise UnknownIncident(incident_id)
    status, tier, assignee, seq, head = row
    return {"status": status, "tier": tier, "assignee": assignee}, Head(seq, head)


def _record(conn: sqlite3.Connection, incident_id: str, head: Head, at: str, kind: str,
            who: str, data: dict[str, Any], **columns: Any) -> None:
    assert set(columns) <= _SETTABLE
    conn.execute(INSERT_ENTRY, next_entry(incident_id, head, at, kind, who, data))
    sets = "".join(f"{name} = ?, " for name in columns)
    conn.execute(
        f"UPDATE incidents SET {sets}timeline_seq = ?, timeline_head = ? WHERE incident_id = ?",
        (*columns.values(), head.seq, head.hash, incident_id),
    )


def transition(conn: sqlite3.Connection, incident_id: str, new_status: str, who: str, why: str,
               *, clock: Clock = system_clock) -> IncidentSummary:
    """Move an incident to new_status if TRANSITIONS allows it; otherwise raise."""
    who, why = _require(who, "who"), _require(why, "why")
    if new_status not in STATUSES:
        raise CorrelateError(f"unknown status '{new_status}' (valid: {', '.join(STATUSES)})")
    at = iso_utc(clock())
    with savepoint(conn, "correlate_action"):
        current, head = _claim(conn, incident_id, at)
        old = current["status"]
        if new_status not in TRANSITIONS[old]:
            raise IllegalTransition(incident_id, old, new_status)
        _record(conn, incident_id, head, at, "status_changed", who,
                {"from": old, "to": new_status, "why": why}, status=new_status)
    return get_summary(conn, incident_id)


def set_tier(conn: sqlite3.Connection, incident_id: str, tier: str, who: str, why: str,
             *, clock: Clock = system_clock) -> IncidentSummary:
    """A person's grade, up or down. The correlator raises it again only when its own
    grade climbs past the highest it had reached before."""
    who, why = _require(who, "who"), _require(why, "why")
    if tier not in TIERS:
        raise CorrelateError(f"unknown tier '{tier}' (valid: {', '.join(TIERS)})")
    at = iso_utc(clock())
    with savepoint(conn, "correlate_action"):
        current, head = _claim(conn, incident_id, at)
        if current["tier"] != tier:
            _record(conn, incident_id, head, at, "tier_changed", who,
                    {"from": current["tier"], "to": tier, "reason": why}, tier=tier)
    return get_summary(conn, incident_id)


def assign(conn: sqlite3.Connection, incident_id: str, assignee: str, who: str,
           *, clock: Clock = system_clock) -> IncidentSummary:
    who, assignee = _require(who, "who"), _require(assignee, "assignee")
    at = iso_utc(clock())
    with savepoint(conn, "correlate_action"):
        current, head = _claim(conn, incident_id, at)
        _record(conn, incident_id, head, at, "assigned", who,
                {"from": current["assignee"], "to": assignee}, assignee=assignee)
    return get_summary(conn, incident_id)


def add_note(conn: sqlite3.Connection, incident_id: str, who: str, text: str,
             *, clock: Clock = system_clock) -> IncidentSummary:
    """A free-text note. It is hashed into the chain for good: write pseudonyms, never
    a customer's raw identifier."""
    who, text = _require(who, "who"), _require(text, "text")
    at = iso_utc(clock())
    with savepoint(conn, "correlate_action"):
        _, head = _claim(conn, incident_id, at)
        _record(conn, incident_id, head, at, "note", who, {"text": text})
    return get_summary(conn, incident_id)
