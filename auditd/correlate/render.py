"""Plain-text views of incidents for the CLI; times shown in the company's zone."""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from typing import Sequence

from auditd.config.typed import DEFAULT_ZONE
from auditd.correlate.model import IncidentDetail, IncidentSummary

_TABLE_COLUMNS = ("ID", "TIER", "STATUS", "SEVERITY", "ACTOR", "ALERTS", "AFFECTED", "LAST SEEN", "TITLE")
_NUMERIC = {"ALERTS", "AFFECTED"}


def _local(value: dt.datetime, zone: dt.tzinfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _width(text: str) -> int:
    # Chinese names and titles take two terminal columns per character
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, right: bool = False) -> str:
    fill = " " * (width - _width(text))
    return fill + text if right else text + fill


def render_incident_table(incidents: Sequence[IncidentSummary], zone: dt.tzinfo = DEFAULT_ZONE) -> str:
    if not incidents:
        return "no incidents\n"
    rows = [
        (i.incident_id, i.tier, i.status, i.severity, i.actor or "-", str(i.alert_count),
         f"{i.affected_count}{'*' if i.sensitive else ''}", _local(i.last_seen, zone), i.title)
        for i in incidents
    ]
    widths = [max(_width(c) for c in column) for column in zip(_TABLE_COLUMNS, *rows)]
    lines = []
    for row in (_TABLE_COLUMNS, *rows):
        cells = [_pad(cell, w, right=name in _NUMERIC) for cell, w, name in zip(row, widths, _TABLE_COLUMNS)]
        lines.append("  ".join(cells).rstrip())
    lines.append(f"times {zone}; * sensitive data")
    return "\n".join(lines) + "\n"


def render_incident_detail(detail: IncidentDetail, zone: dt.tzinfo = DEFAULT_ZONE) -> str:
    s = detail.summary
    more = "+" if detail.affected_subjects_truncated else ""
    fields = [
        ("Incident", s.incident_id),
        ("Title", s.title),
        ("Tier", s.tier + (f" (criminal band '{s.band}' reached)" if s.band else "")),
        ("Status", s.status),
        ("Severity", s.severity),
        ("Actor", s.actor or "-"),
        ("Assignee", s.assignee or "-"),
        ("Discovered", f"{_local(s.discovered_at, zone)} ({zone})"),
        ("First seen", _local(s.first_seen, zone)),
        ("Last seen", _local(s.last_seen, zone)),
        ("Alerts", str(s.alert_count)),
        ("Affected", f"{s.affected_count} customers" + (", sensitive data" if s.sensitive else "")),
        ("Categories", ", ".join(s.categories) or "-"),
        ("Rules", ", ".join(detail.rules) or "-"),
        ("Pseudonyms", ", ".join(detail.affected_subjects) + more or "-"),
        ("Evidence", ", ".join(detail.evidence_event_ids)
         + ("+" if detail.evidence_truncated else "") or "-"),
    ]
    label_width = max(len(label) for label, _ in fields)
    lines = [f"{label:<{label_width}}  {value}" for label, value in fields]
    verdict = ("hash chain verified" if detail.timeline_verified
               else f"HASH CHAIN BROKEN at entry {detail.timeline_first_bad_seq}")
    lines += ["", f"Timeline ({verdict})"]
    for entry in detail.timeline:
        data = json.dumps(entry.data, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
        lines.append(f"  {entry.seq:>3}  {_local(entry.at, zone)}  {entry.kind:<14} {entry.who:<12} {data}")
    return "\n".join(lines) + "\n"
