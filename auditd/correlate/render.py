"""Plain-text views of incidents for the CLI; every time shown in the company's zone."""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from typing import Sequence

from auditd.config.typed import DEFAULT_ZONE
from auditd.correlate.model import EvidenceEvent, IncidentDetail, IncidentSummary

_TABLE_COLUMNS = ("ID", "TIER", "STATUS", "SEVERITY", "ACTOR", "ALERTS", "AFFECTED", "LAST SEEN", "TITLE")
_NUMERIC = {"ALERTS", "AFFECTED"}
_EVIDENCE_COLUMNS = ("TIME", "ACTOR", "ACTION", "RESOURCE", "COUNT", "CATEGORIES", "DESTINATION", "ENTITLED",
                     "EVENT")
SHOWN_ROWS = 50  # alerts and evidence events shown in text; --json has them all


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
    why = [s.dismissal_reason.replace("_", "-")] if s.dismissal_reason else []
    why += [f"merged into {s.merged_into}"] if s.merged_into else []
    fields = [
        ("Incident", s.incident_id),
        ("Title", s.title),
        ("Tier", s.tier + (f" (criminal band '{s.band}' reached)" if s.band else "")),
        ("Status", s.status + (f" ({', '.join(why)})" if why else "")),
        ("Severity", s.severity),
        ("Actor", s.actor or "-"),
        ("Assignee", s.assignee or "-"),
        ("Discovered", f"{_local(s.discovered_at, zone)} ({zone})"),
        ("First seen", _local(s.first_seen, zone)),
        ("Last seen", _local(s.last_seen, zone)),
        ("Alerts", str(s.alert_count)),
        ("Affected", f"{s.affected_count:,} customer{'' if s.affected_count == 1 else 's'}" + (", sensitive data" if s.sensitive else "")),
        *([("Loss", f"¥{s.economic_loss:,.0f}")] if s.economic_loss is not None else []),
        *([("CII", "critical information infrastructure hit")] if s.cii else []),
        ("Categories", ", ".join(s.categories) or "-"),
        ("Rules", ", ".join(detail.rules) or "-"),
        ("Pseudonyms", ", ".join(detail.affected_subjects[:SHOWN_ROWS])
         + ("+" if detail.affected_subjects_truncated or len(detail.affected_subjects) > SHOWN_ROWS else "") or "-"),
    ]
    label_width = max(len(label) for label, _ in fields)
    lines = [f"{label:<{label_width}}  {value}" for label, value in fields]
    lines += ["", f"Alerts ({len(detail.alerts)}{'+' if detail.evidence_truncated else ''})"]
    for alert in detail.alerts[:SHOWN_ROWS]:
        lines.append(f"  {_local(alert.timestamp, zone)}  {alert.severity:<8}  {alert.rule_id}: {alert.title}")
    lines += _more(len(detail.alerts))
    lines += ["", f"Evidence ({len(detail.evidence_event_ids)} events"
              + ("+" if detail.evidence_truncated else "") + ")"]
    if detail.evidence:
        lines += _evidence_table(detail.evidence[:SHOWN_ROWS], zone)
        lines += _more(len(detail.evidence))
    elif detail.evidence_event_ids:
        lines.append("  " + ", ".join(detail.evidence_event_ids[:SHOWN_ROWS]))
    verdict = ("hash chain verified" if detail.timeline_verified
               else f"HASH CHAIN BROKEN at entry {detail.timeline_first_bad_seq}")
    lines += ["", f"Timeline ({verdict})"]
    for entry in detail.timeline:
        data = json.dumps(_localised(entry.data, zone), ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
        lines.append(f"  {entry.seq:>3}  {_local(entry.at, zone)}  {entry.kind:<14} {entry.who:<12} {data}")
    return "\n".join(lines) + "\n"


def _more(count: int) -> list[str]:
    return [f"  … and {count - SHOWN_ROWS} more (--json has them all)"] if count > SHOWN_ROWS else []


def _evidence_table(events: Sequence[EvidenceEvent], zone: dt.tzinfo) -> list[str]:
    rows = [
        (_local(e.timestamp, zone), e.actor or "-", e.action + ("" if e.outcome in (None, "success") else f" ({e.outcome})"),
         e.resource or "-", "-" if e.record_count is None else f"{e.record_count:,}", ",".join(e.categories) or "-",
         e.destination or "-", {True: "yes", False: f"no: {e.reason}", None: "-"}[e.entitled], e.event_id)
        for e in events
    ]
    widths = [max(_width(c) for c in column) for column in zip(_EVIDENCE_COLUMNS, *rows)]
    return ["  " + "  ".join(_pad(cell, w, right=name == "COUNT") for cell, w, name
                             in zip(row, widths, _EVIDENCE_COLUMNS)).rstrip()
            for row in (_EVIDENCE_COLUMNS, *rows)]


def _localised(data, zone: dt.tzinfo):
    """Timeline data with its instants in the zone every other time here is shown in, also
    those nested in it (a playbook's planned steps and their due times)."""
    if isinstance(data, dict):
        return {key: _localised(value, zone) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_localised(value, zone) for value in data]
    if isinstance(data, str) and len(data) >= 20 and data[4:5] == "-" and data[10:11] == "T":
        try:
            moment = dt.datetime.fromisoformat(data.replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment.astimezone(zone).isoformat(timespec="seconds")
    return data
