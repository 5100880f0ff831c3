"""0003: the incident change log and its consumers' cursors.

Every change to an incident (alerts applied, a status, tier or assignee set, a note)
appends one row in the same transaction (``correlate.seam``); response and the
Elasticsearch replica read the log by a cursor of their own, stored here and moved in
the transaction that records what they did with a change. ``version`` is the
incident's ``timeline_seq`` after the change: every change adds a timeline entry, so it
rises with each one, and a replica can keep the newest snapshot by it.

Incidents from before the log get one ``migrated`` change each, so that a consumer
starting on an upgraded store knows every incident, and can tell which ones predate it.
"""

from __future__ import annotations

import json
import sqlite3

_SCHEMA = (
    """CREATE TABLE incident_changes (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after a purge
        incident_id TEXT NOT NULL,
        version     INTEGER NOT NULL,                   -- the incident's timeline_seq after it
        at          TEXT NOT NULL,
        cause       TEXT NOT NULL,                      -- alerts, status_changed, ..., migrated
        change      TEXT NOT NULL                       -- JSON of correlate.model.IncidentChange
    )""",
    "CREATE UNIQUE INDEX incident_changes_by_version ON incident_changes (incident_id, version)",
    """CREATE TABLE change_cursors (
        consumer   TEXT PRIMARY KEY,                    -- e.g. respond, elastic.incidents
        seq        INTEGER NOT NULL,                    -- the last change it has dealt with
        updated_at TEXT NOT NULL
    )""",
)


def migrate(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)
    rows = conn.execute(
        "SELECT incident_id, timeline_seq, updated_at, actor, title, status, tier, band,"
        " alert_count, affected_count, discovered_at FROM incidents ORDER BY discovered_at, incident_id"
    ).fetchall()
    conn.executemany(
        "INSERT INTO incident_changes (incident_id, version, at, cause, change) VALUES (?, ?, ?, 'migrated', ?)",
        [(incident_id, seq, updated_at, json.dumps({
            "incident_id": incident_id, "version": seq, "cause": "migrated", "who": "migration",
            "at": updated_at, "opened": False, "actor": actor, "title": title, "status": status,
            "tier": tier, "band": band, "alert_count": alerts, "affected_count": affected,
            "discovered_at": discovered_at,
        }, ensure_ascii=False, sort_keys=True))
         for incident_id, seq, updated_at, actor, title, status, tier, band, alerts, affected, discovered_at in rows],
    )
