"""Regulator reports, rendered from the incident: Markdown and HTML in zh-CN and en, plus JSON.

The content items are those of the CAC incident-reporting measures (in force
2025-11-01, ``../shared/DESIGN.md``): the organisation and affected system; time and
place of discovery, type, grade, impact, measures taken and their effect; how the
incident is developing; preliminary cause; leads (attacker, path, vulnerability);
planned measures and support requested; preservation of evidence; anything else. An
initial report is rendered at its step even when the cause is unknown: it says so, and
the rest follows in follow-ups. The closing report (within 30 days after the incident
is resolved) gives cause, measures, harm, accountability, remediation and lessons.

Everything here is for the security team and the regulator: pseudonyms and counts,
never a raw customer identifier (the store has none to give).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from auditd.correlate import get_incident
from auditd.correlate.model import IncidentDetail
from auditd.respond import steps as steps_table
from auditd.respond.render import Immediate, Output, Templates, safe_name
from auditd.respond.settings import LANGUAGES, Organisation
from auditd.respond.vocabulary import incident_type, vocabulary
from auditd.store.encoding import decode_event
from auditd.store.times import to_db

KINDS = ("initial", "followup", "closing", "notice-draft")
# the items each kind must carry, in order (keys of the JSON "items" and of HEADINGS)
ITEMS = {
    "initial": ("organisation", "discovery", "type", "grade", "impact", "measures", "development", "cause", "leads",
                "planned", "evidence", "other"),
    "followup": ("organisation", "discovery", "type", "grade", "impact", "measures", "development", "cause", "leads",
                 "planned", "evidence", "other"),
    "closing": ("organisation", "grade", "cause", "measures", "harm", "accountability", "remediation", "lessons"),
    "notice-draft": ("pi_types", "cause", "harm", "measures", "advice", "contact"),
}
HEADINGS = {
    "zh-CN": {"organisation": "单位名称及受影响系统", "discovery": "发现时间和地点", "type": "事件类型", "grade": "事件级别",
              "impact": "影响范围", "measures": "已采取的处置措施及效果", "development": "事态发展情况",
              "cause": "初步原因", "leads": "线索（攻击者、路径、漏洞）", "planned": "拟采取的措施及需要的支持",
              "evidence": "证据保全情况", "other": "其他情况", "harm": "造成的危害", "accountability": "责任认定",
              "remediation": "整改措施", "lessons": "经验教训", "pi_types": "涉及的个人信息种类",
              "advice": "您可以采取的措施", "contact": "联系我们"},
    "en": {"organisation": "Organisation and affected system", "discovery": "Time and place of discovery",
           "type": "Type of incident", "grade": "Grade", "impact": "Impact", "measures": "Measures taken and their effect",
           "development": "How the incident is developing", "cause": "Preliminary cause",
           "leads": "Leads (attacker, path, vulnerability)", "planned": "Planned measures and support requested",
           "evidence": "Preservation of evidence", "other": "Anything else", "harm": "Harm caused",
           "accountability": "Accountability", "remediation": "Remediation", "lessons": "Lessons learned",
           "pi_types": "Personal information concerned", "advice": "What you can do", "contact": "How to reach us"},
}
FINDINGS = ("cause", "leads", "planned", "support", "other", "harm", "accountability", "remediation", "lessons",
            "advice")
_json = msgspec.json.Encoder()  # items in the order the measures list them


class ReportError(Exception):
    """A report cannot be rendered as asked (unknown kind, closing before resolution)."""


@dataclass(frozen=True, slots=True)
class RenderedReport:
    incident_id: str
    kind: str
    revision: int
    cause_known: bool
    paths: dict[str, str]  # "zh-CN.md", "en.html", "json", ...
    sha256: str


def findings(conn: sqlite3.Connection, incident_id: str) -> dict[str, str]:
    return dict(conn.execute("SELECT field, text FROM report_findings WHERE incident_id = ?", (incident_id,)))


def set_finding(conn: sqlite3.Connection, incident_id: str, name: str, text: str, who: str, at: dt.datetime) -> None:
    if name not in FINDINGS:
        from auditd.config.typed import did_you_mean

        raise ReportError(f"unknown finding {name!r}{did_you_mean(name, FINDINGS)} (valid: {', '.join(FINDINGS)})")
    conn.execute("INSERT INTO report_findings (incident_id, field, text, who, at) VALUES (?, ?, ?, ?, ?)"
                 " ON CONFLICT (incident_id, field) DO UPDATE SET text = excluded.text, who = excluded.who,"
                 " at = excluded.at", (incident_id, name, text.strip(), who, to_db(at)))


def _evidence_places(conn: sqlite3.Connection, event_ids: tuple[str, ...]) -> dict[str, list[str]]:
    """Where the access came from, for leads: hosts, services, source addresses."""
    hosts: set[str] = set()
    services: set[str] = set()
    addresses: set[str] = set()
    ids = list(event_ids[:500])
    if ids:
        rows = conn.execute(f"SELECT doc FROM evidence WHERE event_id IN ({','.join('?' * len(ids))})", ids)
        for (doc,) in rows:
            try:
                event = decode_event(doc)
            except Exception:  # an unreadable evidence row is shown as missing, not fatal
                continue
            if event.host_name:
                hosts.add(event.host_name)
            if event.service_name:
                services.add(event.service_name)
            if event.source_ip:
                addresses.add(str(event.source_ip))
    return {"hosts": sorted(hosts), "services": sorted(services), "source_ips": sorted(addresses)}


def context(conn: sqlite3.Connection, incident_id: str, organisation: Organisation, zone: dt.tzinfo,
            now: dt.datetime, *, people: int | None = None) -> dict[str, Any]:
    """The facts of an incident that every report and notice draws on (language-neutral)."""
    detail: IncidentDetail = get_incident(conn, incident_id, limit=500)
    s = detail.summary
    found = dict.fromkeys(FINDINGS) | findings(conn, incident_id)
    steps = steps_table.of_incident(conn, incident_id)

    def local(value: dt.datetime | None) -> str | None:
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z") if value else None

    measures = [{"step": r.step_id, "title": r.title, "kind": r.kind, "state": r.state,
                 "at": local(r.closed_at or r.fired_at), "by": r.closed_by,
                 "effect": _effect(r.result)} for r in steps
                if r.kind in ("contain", "task", "notify", "announce") and r.state in ("done", "approved", "failed")]
    planned = [{"step": r.step_id, "title": r.title, "due": local(r.due_at), "owner": r.owner}
               for r in steps if r.open]
    places = _evidence_places(conn, detail.evidence_event_ids)
    resolved = next((e.at for e in reversed(detail.timeline)
                     if e.kind == "status_changed" and e.data.get("to") == "resolved"), None)
    return {
        "organisation": {"name": organisation.name, "system": organisation.system, "location": organisation.location,
                         "security_contact": organisation.security_contact, "contact": organisation.contact},
        "incident": {
            "id": s.incident_id, "title": s.title, "tier": s.tier, "status": s.status, "actor": s.actor,
            "type": incident_type(s.tier), "discovered_at": local(s.discovered_at), "first_seen": local(s.first_seen),
            "last_seen": local(s.last_seen), "resolved_at": local(resolved), "alert_count": s.alert_count,
            "affected_count": s.affected_count, "people": people if people is not None else s.affected_count,
            "records": max(s.affected_count, _max_records(conn, incident_id)),
            "categories": list(s.categories), "sensitive": s.sensitive, "band": s.band,
            "economic_loss": s.economic_loss, "cii": s.cii, "rules": list(detail.rules),
        },
        "places": places,
        "measures": measures,
        "planned": planned,
        "findings": found,
        "cause_known": bool(found.get("cause")),
        "evidence": {"events": len(detail.evidence_event_ids), "events_truncated": detail.evidence_truncated,
                     "alerts": s.alert_count, "timeline_entries": len(detail.timeline),
                     "timeline_head": detail.timeline[-1].hash if detail.timeline else None,
                     "timeline_verified": detail.timeline_verified},
        "generated_at": local(now),
    }


def _max_records(conn: sqlite3.Connection, incident_id: str) -> int:
    row = conn.execute("SELECT max_record_count FROM incidents WHERE incident_id = ?", (incident_id,)).fetchone()
    return int(row[0]) if row else 0


def _effect(result: dict[str, Any]) -> str | None:
    if not result:
        return None
    if "exit_status" in result or "timed_out" in result:
        return "timed out" if result.get("timed_out") else f"exit status {result.get('exit_status')}"
    if "http_status" in result:
        return f"HTTP {result['http_status']}"
    if "recipients" in result:
        return f"{result['recipients']} rendered, {result.get('unresolved', 0)} unresolved"
    return None


def items_json(kind: str, ctx: dict[str, Any]) -> dict[str, Any]:
    """The report's items as data: the JSON twin of the Markdown and HTML."""
    inc, found = ctx["incident"], ctx["findings"]
    every = {
        "organisation": ctx["organisation"] | {"affected_system": ctx["organisation"]["system"]},
        "discovery": {"discovered_at": inc["discovered_at"], "place": {"system": ctx["organisation"]["system"],
                      "location": ctx["organisation"]["location"], **ctx["places"]},
                      "first_seen": inc["first_seen"]},
        "type": {"type": inc["type"], "rules": inc["rules"]},
        "grade": {"tier": inc["tier"], "band": inc["band"], "cii": inc["cii"]},
        "impact": {"people": inc["people"], "records": inc["records"], "categories": inc["categories"],
                   "sensitive": inc["sensitive"], "economic_loss": inc["economic_loss"]},
        "measures": ctx["measures"],
        "development": {"status": inc["status"], "last_seen": inc["last_seen"], "alerts": inc["alert_count"]},
        "cause": {"known": ctx["cause_known"], "text": found.get("cause")},
        "leads": {"actor": inc["actor"], "path": ctx["places"], "vulnerability": found.get("leads")},
        "planned": {"steps": ctx["planned"], "measures": found.get("planned"), "support": found.get("support")},
        "evidence": ctx["evidence"],
        "other": {"text": found.get("other")},
        "harm": {"text": found.get("harm"), "categories": inc["categories"]},
        "accountability": {"text": found.get("accountability")},
        "remediation": {"text": found.get("remediation")},
        "lessons": {"text": found.get("lessons")},
        "pi_types": {"categories": inc["categories"]},
        "advice": {"text": found.get("advice")},
        "contact": ctx["organisation"]["contact"],
    }
    return {key: every[key] for key in ITEMS[kind]}


def next_revision(conn: sqlite3.Connection, incident_id: str, kind: str) -> int:
    row = conn.execute("SELECT MAX(revision) FROM reports WHERE incident_id = ? AND kind = ?",
                       (incident_id, kind)).fetchone()
    return int(row[0] or 0) + 1


def latest(conn: sqlite3.Connection, incident_id: str, kind: str) -> tuple[int, str] | None:
    """(revision, json path) of the latest report of a kind."""
    row = conn.execute("SELECT revision, json_path FROM reports WHERE incident_id = ? AND kind = ?"
                       " ORDER BY revision DESC LIMIT 1", (incident_id, kind)).fetchone()
    return (row[0], row[1]) if row else None


def render_report(conn: sqlite3.Connection, incident_id: str, kind: str, *, templates: Templates,
                  organisation: Organisation, zone: dt.tzinfo, out_dir: Path, now: dt.datetime, who: str,
                  people: int | None = None, out: Output | None = None) -> RenderedReport:
    """Render a report of `kind` as a new revision, and record it in `out` (default: at
    once, in `conn`'s transaction)."""
    out = out or Immediate(conn)
    if kind not in KINDS:
        raise ReportError(f"unknown report kind {kind!r} (valid: {', '.join(KINDS)})")
    ctx = context(conn, incident_id, organisation, zone, now, people=people)
    if kind == "closing" and ctx["incident"]["resolved_at"] is None:
        raise ReportError(f"{incident_id} is not resolved yet: the closing report follows the end of handling")
    revision = next_revision(conn, incident_id, kind)
    items = items_json(kind, ctx)
    document = {"schema": "neo-auditd/regulator-report/1", "incident_id": incident_id, "kind": kind,
                "revision": revision, "cause_known": ctx["cause_known"], "generated_at": ctx["generated_at"],
                "items": items}
    folder = out_dir / "reports" / safe_name(incident_id)
    base = f"{safe_name(kind)}-r{revision}"
    paths: dict[str, str] = {}
    template = "notice-draft" if kind == "notice-draft" else "regulator-report"
    for language in LANGUAGES:
        view = {"ctx": ctx, "items": items, "item_keys": ITEMS[kind], "h": HEADINGS[language], "kind": kind,
                "revision": revision, "t": vocabulary(language), "language": language}
        md = folder / f"{base}.{language}.md"
        out.file(md, templates.render_markdown(template, language, view).encode("utf-8"))
        html = folder / f"{base}.{language}.html"
        out.file(html, templates.render_html(template, language, view).encode("utf-8"))
        paths[f"{language}.md"], paths[f"{language}.html"] = str(md), str(html)
    json_path = folder / f"{base}.json"
    digest = out.file(json_path, msgspec.json.format(_json.encode(document), indent=2) + b"\n")
    paths["json"] = str(json_path)
    out.row("INSERT INTO reports (incident_id, kind, revision, cause_known, markdown_path, html_path, json_path,"
            " sha256, rendered_at, rendered_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (incident_id, kind, revision, int(ctx["cause_known"]), paths["zh-CN.md"], paths["zh-CN.html"],
             str(json_path), digest, to_db(now), who))
    return RenderedReport(incident_id, kind, revision, ctx["cause_known"], paths, digest)
