"""0006: every incident's fleet key, the same on every daemon that sees its episode.

Local incident ids (INC-YYYYMMDD-NNNN) number a store's openings in order, so two
daemons fed the same log number alike only as long as every alert reaches both in the
same order. The fleet key depends on the episode alone: its group (the actor) and the
alert that opened it. The Elasticsearch replica keys incidents by it, so the fleet
holds one incident per episode however many daemons saw it. Incidents from before
take theirs from the ``opened`` entry of their timeline.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3


def fleet_key(group_key: str, opening_alert_id: str) -> str:
    digest = hashlib.blake2b(f"{group_key}\0{opening_alert_id}".encode("utf-8"), digest_size=10).hexdigest()
    return f"FI-{digest}"


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE incidents ADD COLUMN fleet_key TEXT")
    rows = conn.execute(
        "SELECT i.incident_id, i.group_key, t.data FROM incidents i"
        " LEFT JOIN incident_timeline t ON t.incident_id = i.incident_id AND t.kind = 'opened'").fetchall()
    updates = []
    for incident_id, group_key, data in rows:
        try:
            opening = json.loads(data)["opening_alert"] if data else incident_id
        except (ValueError, KeyError, TypeError):
            opening = incident_id  # a damaged entry: still a key of its own
        updates.append((fleet_key(group_key, opening), incident_id))
    conn.executemany("UPDATE incidents SET fleet_key = ? WHERE incident_id = ?", updates)
    conn.execute("CREATE INDEX incidents_by_fleet_key ON incidents (fleet_key)")
