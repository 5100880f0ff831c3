"""Rows for tests that read the store the way metrics and status do."""

from __future__ import annotations


def insert_incident(conn, incident_id: str, tier: str, status: str,
                    at: str = "2026-11-01T00:00:00.000000+00:00") -> None:
    """The smallest valid incidents row: metrics and status read only tier and status."""
    conn.execute(
        "INSERT INTO incidents (incident_id, group_key, actor, title, tier, auto_tier, status, severity,"
        " first_seen, last_seen, discovered_at, updated_at, alert_count, affected_count, max_record_count,"
        " sensitive, band, rules, categories, timeline_seq, timeline_head)"
        " VALUES (?, 'E1001', 'E1001', 't', ?, ?, ?, 'high', ?, ?, ?, ?, 1, 1, 1, 0, NULL, '[]', '[]', 0, '')",
        (incident_id, tier, tier, status, at, at, at, at),
    )
