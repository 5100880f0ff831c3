"""What the `scope: cluster` rules cost, as `status` reads it from the store.

The daemon that holds a cluster rule's lease evaluates it (``elastic/cluster_rules.py``)
and, after every round, writes each rule's figures here (``meta`` key below, JSON):
query time, round time, rounds longer than ``evaluate_every``, the position's event
time, the lag behind the newest event of the fleet's stream, and the late events
(they reached the cluster after the rule had passed their time: only `replay`
evaluates them). `status` shows them with the settle horizon; the metrics endpoint
reads the running evaluator itself. Plain dicts only: ops may not import elastic.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

from auditd.store.sqlite import immediate

COSTS_KEY = "elastic.cluster_rules"


def write_costs(store_path: Path, costs: list[dict[str, Any]], evaluate_every_s: float, settle_s: float) -> None:
    record = {"recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "evaluate_every_s": evaluate_every_s, "settle_s": settle_s, "rules": costs}
    conn = sqlite3.connect(store_path, timeout=5.0, isolation_level=None)
    try:
        with immediate(conn):
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET"
                         " value = excluded.value", (COSTS_KEY, json.dumps(record)))
    finally:
        conn.close()


def read_costs(conn: sqlite3.Connection) -> dict[str, Any] | None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (COSTS_KEY,)).fetchone()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    try:
        record = json.loads(row[0])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def render_lines(record: dict[str, Any]) -> list[str]:
    """The `status` block: one row per cluster rule, then what needs attention."""
    every, settle = record.get("evaluate_every_s", 0), record.get("settle_s", 0)
    lines = [f"cluster rules (every {every:g} s; events are evaluated once {settle:g} s old, the settle horizon; "
             f"recorded {record.get('recorded_at', '?')}):"]
    rows = []
    notes = []
    for cost in record.get("rules", []):
        rule = cost.get("rule_id", "?")
        if not cost.get("held"):
            rows.append((rule, "another daemon", "", "", "", "", ""))
            continue
        lag = cost.get("lag_seconds")
        rows.append((rule, "this daemon", f"{cost.get('query_seconds', 0):.3f} s", f"{cost.get('round_seconds', 0):.3f} s",
                     "-" if lag is None else f"{lag:,.0f} s", f"{cost.get('events', 0):,}",
                     cost.get("cursor_time") or "-"))
        if cost.get("overruns"):
            notes.append(f"{rule}: {cost['overruns']} rounds took longer than {every:g} s (last "
                         f"{cost.get('round_seconds', 0):.1f} s): it falls behind; give it a narrower condition "
                         "or raise evaluate_every")
        if cost.get("behind"):
            notes.append(f"{rule}: the last round stopped at max_events_per_round; it is catching up")
        if cost.get("late_events"):
            notes.append(f"{rule}: {cost['late_events']:,} events reached the cluster after the rule had passed "
                         f"their time (older than the settle horizon): not evaluated; `neo-auditd replay` over "
                         "those logs evaluates their windows")
        if cost.get("last_error"):
            notes.append(f"{rule}: last round failed: {cost['last_error']}")
    header = ("RULE", "EVALUATED BY", "QUERY", "ROUND", "LAG", "EVENTS", "POSITION")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    lines += ["  " + note for note in notes]
    return lines
