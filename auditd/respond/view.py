"""Plain-text view of an incident's playbook steps for the command line."""

from __future__ import annotations

import datetime as dt
from typing import Sequence

from auditd.respond.steps import StepRow


def _local(value: dt.datetime | None, zone: dt.tzinfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M") if value else "-"


def render_steps(incident_id: str, rows: Sequence[StepRow], now: dt.datetime, zone: dt.tzinfo) -> str:
    if not rows:
        return f"{incident_id}: no playbook steps yet (the respond-due job plans them from the change log)\n"
    headers = ("STEP", "KIND", "STATE", "DUE", "DONE", "BY", "")
    table = []
    for r in rows:
        flags = []
        if r.overdue(now):
            flags.append("OVERDUE")
        if r.late:
            flags.append("late")
        if r.escalations:
            flags.append(f"escalated x{r.escalations}")
        if r.reason:
            flags.append(r.reason[:60])
        table.append((r.step_id, r.kind, r.state, _local(r.due_at, zone), _local(r.closed_at, zone),
                      r.closed_by or "-", "; ".join(flags)))
    widths = [max(len(c) for c in column) for column in zip(headers, *table)]
    lines = [f"{incident_id}: playbook {rows[0].playbook}; times {zone}"]
    for cells in (headers, *table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines) + "\n"
