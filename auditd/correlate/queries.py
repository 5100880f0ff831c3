"""Read incidents for the CLI and the respond stage."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any, Iterable

import msgspec

from auditd.correlate.model import (
    STATUSES, AlertBrief, CorrelateError, IncidentDetail, IncidentSummary, UnknownIncident,
)
from auditd.store.times import from_db, to_db
from auditd.correlate.settings import TIERS
from auditd.correlate.timeline import read_timeline, verify_timeline

_SUMMARY_COLUMNS = (
    "incident_id, title, tier, status, severity, actor, assignee, alert_count, affected_count,"
    " sensitive, band, categories, first_seen, last_seen, discovered_at, updated_at,"
    " economic_loss, cii, dismissal_reason, merged_into"
)
_list_decoder = msgspec.json.Decoder(tuple[str, ...])


_brief_decoder = msgspec.json.Decoder(AlertBrief)  # the part of a stored Alert document shown


def _summary(row: tuple[Any, ...]) -> IncidentSummary:
    (incident_id, title, tier, status, severity, actor, assignee, alert_count, affected_count,
     sensitive, band, categories, first_seen, last_seen, discovered_at, updated_at,
     economic_loss, cii, dismissal_reason, merged_into) = row
    return IncidentSummary(
        incident_id=incident_id, title=title, tier=tier, status=status, severity=severity,
        actor=actor, assignee=assignee, alert_count=alert_count, affected_count=affected_count,
        sensitive=bool(sensitive), band=band, categories=_list_decoder.decode(categories),
        first_seen=from_db(first_seen), last_seen=from_db(last_seen),
        discovered_at=from_db(discovered_at), updated_at=from_db(updated_at),
        economic_loss=economic_loss, cii=bool(cii), dismissal_reason=dismissal_reason,
        merged_into=merged_into,
    )


def _one_or_many(name: str, value: str | Iterable[str] | None, valid: tuple[str, ...]) -> list[str]:
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    for item in values:
        if item not in valid:
            raise CorrelateError(f"unknown {name} '{item}' (valid: {', '.join(valid)})")
    return values


def list_incidents(conn: sqlite3.Connection, status: str | Iterable[str] | None = None,
                   tier: str | Iterable[str] | None = None, since: dt.datetime | None = None,
                   limit: int = 100) -> list[IncidentSummary]:
    """Incidents, latest activity first; since filters on last_seen (event time)."""
    where: list[str] = []
    params: list[Any] = []
    for column, values in (("status", _one_or_many("status", status, STATUSES)),
                           ("tier", _one_or_many("tier", tier, TIERS))):
        if values:
            where.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
    if since is not None:
        where.append("last_seen >= ?")
        params.append(to_db(since))
    sql = f"SELECT {_SUMMARY_COLUMNS} FROM incidents"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY last_seen DESC, incident_id DESC LIMIT ?"
    return [_summary(row) for row in conn.execute(sql, [*params, limit])]


def get_summary(conn: sqlite3.Connection, incident_id: str) -> IncidentSummary:
    row = conn.execute(
        f"SELECT {_SUMMARY_COLUMNS} FROM incidents WHERE incident_id = ?", (incident_id,)
    ).fetchone()
    if row is None:
        raise UnknownIncident(incident_id)
    return _summary(row)


def get_incident(conn: sqlite3.Connection, incident_id: str, limit: int = 1000) -> IncidentDetail:
    """One incident in full; pseudonyms, alerts and evidence capped at limit each."""
    row = conn.execute(
        f"SELECT {_SUMMARY_COLUMNS}, rules FROM incidents WHERE incident_id = ?", (incident_id,)
    ).fetchone()
    if row is None:
        raise UnknownIncident(incident_id)
    summary, rules = _summary(row[:-1]), row[-1]
    subjects = [row[0] for row in conn.execute(
        "SELECT subject_id FROM incident_subjects WHERE incident_id = ? ORDER BY subject_id LIMIT ?",
        (incident_id, limit + 1),
    )]
    alerts = conn.execute(
        "SELECT alert_id, doc FROM alerts WHERE incident_id = ? ORDER BY timestamp, alert_id LIMIT ?",
        (incident_id, limit + 1),
    ).fetchall()
    events: dict[str, None] = {}  # insertion-ordered set: evidence in event order
    briefs = [_brief_decoder.decode(doc) for _, doc in alerts[:limit]]
    for brief in briefs:
        events.update(dict.fromkeys(brief.event_ids))
    ok, first_bad = verify_timeline(conn, incident_id)
    return IncidentDetail(
        summary=summary,
        rules=_list_decoder.decode(rules),
        affected_subjects=tuple(subjects[:limit]),
        affected_subjects_truncated=len(subjects) > limit,
        evidence_event_ids=tuple(list(events)[:limit]),
        evidence_truncated=len(alerts) > limit or len(events) > limit,
        alert_ids=tuple(alert_id for alert_id, _ in alerts[:limit]),
        timeline=tuple(read_timeline(conn, incident_id)),
        timeline_verified=ok,
        timeline_first_bad_seq=first_bad,
        alerts=tuple(briefs),
    )
