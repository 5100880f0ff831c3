"""The breach register: every incident of tiers T1–T4, with its clocks, its decisions and
what was rendered for whom and when (pseudonyms and audiences only).

Modelled on GDPR art. 33(5)'s record of breaches: facts, effects and remedial action,
kept even for incidents that were never reported, so that a regulator can check.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from typing import Any

from auditd.correlate import get_incident
from auditd.respond import steps as table
from auditd.store.times import from_db

REGISTER_TIERS = ("T1", "T2", "T3", "T4")
DECISION_KINDS = ("status_changed", "tier_changed", "merged", "merged_into", "loss_set", "cii_set", "band_reached",
                  "assigned")


def _ever_registered(conn: sqlite3.Connection) -> list[str]:
    """Incidents at T1–T4 now, or graded so at any time (a tier a person lowered later)."""
    marks = ",".join("?" * len(REGISTER_TIERS))
    now = [r[0] for r in conn.execute(f"SELECT incident_id FROM incidents WHERE tier IN ({marks})"
                                      f" OR auto_tier IN ({marks})", (*REGISTER_TIERS, *REGISTER_TIERS))]
    return sorted(set(now))


def register(conn: sqlite3.Connection, zone: dt.tzinfo) -> list[dict[str, Any]]:
    out = []
    for incident_id in _ever_registered(conn):
        detail = get_incident(conn, incident_id, limit=0)
        s = detail.summary
        steps = table.of_incident(conn, incident_id)
        decisions = [{"at": e.at, "kind": e.kind, "who": e.who, "data": e.data} for e in detail.timeline
                     if e.kind in DECISION_KINDS or (e.kind == "step" and e.data.get("event") in
                                                     ("approved", "skipped", "done", "failed", "escalated"))]
        notices = [{"step": step, "audience": audience, "kind": kind, "channel": channel, "language": language,
                    "count": count, "first_at": from_db(first), "last_at": from_db(last)}
                   for step, audience, kind, channel, language, count, first, last in conn.execute(
                       "SELECT step_id, audience, kind, channel, language, COUNT(*), MIN(rendered_at),"
                       " MAX(rendered_at) FROM notices WHERE incident_id = ?"
                       " GROUP BY step_id, audience, kind, channel, language ORDER BY MIN(rendered_at), step_id",
                       (incident_id,))]
        reports = [{"kind": kind, "revision": revision, "cause_known": bool(known), "rendered_at": from_db(at),
                    "rendered_by": by, "json_path": path}
                   for kind, revision, known, at, by, path in conn.execute(
                       "SELECT kind, revision, cause_known, rendered_at, rendered_by, json_path FROM reports"
                       " WHERE incident_id = ? ORDER BY seq", (incident_id,))]
        deliveries = _deliveries(conn, incident_id)
        for n in notices:
            mine = [d for d in deliveries if d["step"] == n["step"] and d["audience"] == n["audience"]]
            n["delivery"] = {state: sum(1 for d in mine if d["state"] == state)
                             for state in sorted({d["state"] for d in mine})}
        exemptions = [r.result["exemption"] | {"step": r.step_id, "at": r.closed_at} for r in steps
                      if "exemption" in r.result]
        unresolved = sum(int(r.result.get("unresolved", 0)) for r in steps if r.kind == "notify"
                         and r.audience == "customers")
        out.append({
            "incident_id": incident_id, "title": s.title, "tier": s.tier, "status": s.status,
            "dismissal_reason": s.dismissal_reason, "merged_into": s.merged_into, "actor": s.actor,
            "discovered_at": s.discovered_at, "first_seen": s.first_seen, "last_seen": s.last_seen,
            "affected_count": s.affected_count, "categories": list(s.categories), "band": s.band,
            "economic_loss": s.economic_loss, "cii": s.cii, "timeline_verified": detail.timeline_verified,
            "clocks": [{"step": r.step_id, "kind": r.kind, "audience": r.audience, "due_at": r.due_at,
                        "fired_at": r.fired_at, "closed_at": r.closed_at, "state": r.state, "by": r.closed_by,
                        "late": r.late, "reason": r.reason, "escalations": r.escalations} for r in steps],
            "decisions": decisions, "reports": reports, "notices": notices, "exemptions": exemptions,
            "unresolved_customers": unresolved, "deliveries": deliveries,
        })
    return out


def _deliveries(conn: sqlite3.Connection, incident_id: str) -> list[dict[str, Any]]:
    """Every message the deliver stage sent or tried for the incident, with its receipt
    (the deliver stage's `outbox` table, read here; absent in a store from before it)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone() is None:
        return []
    out = []
    for step, audience, recipient, route, key, state, attempts, delivered, receipt, repeat, error in conn.execute(
            "SELECT step_id, audience, recipient, route, wire_key, state, attempts, delivered_at, receipt,"
            " possible_repeat, last_error FROM outbox WHERE incident_id = ? ORDER BY id", (incident_id,)):
        out.append({"step": step, "audience": audience, "recipient": recipient, "route": route, "key": key,
                    "state": state, "attempts": attempts, "delivered_at": from_db(delivered) if delivered else None,
                    "receipt": json.loads(receipt) if receipt else None, "possible_repeat": bool(repeat),
                    "error": error})
    return out


def render_register(entries: list[dict[str, Any]], zone: dt.tzinfo) -> str:
    if not entries:
        return "the breach register is empty (no incident of tiers T1–T4)\n"

    def local(value: dt.datetime | None) -> str:
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M") if value else "-"

    lines = [f"breach register: {len(entries)} incident(s) of tiers T1–T4; times {zone}", ""]
    # the step column as wide as the longest step id (approve-customer-notice, 23)
    width = max((len(c["step"]) for e in entries for c in e["clocks"]), default=0)
    for e in entries:
        lines.append(f"{e['incident_id']}  {e['tier']}  {e['status']}  discovered {local(e['discovered_at'])}  "
                     f"{e['affected_count']} affected  {e['title']}")
        for c in e["clocks"]:
            mark = " LATE" if c["late"] else ""
            lines.append(f"  {c['step']:<{width}} {c['state']:<9} due {local(c['due_at'])}  done {local(c['closed_at'])}"
                         f"{' by ' + c['by'] if c['by'] else ''}{mark}")
        for r in e["reports"]:
            lines.append(f"  report {r['kind']} r{r['revision']} {local(r['rendered_at'])}"
                         f"{'' if r['cause_known'] else ' (cause not yet known)'}")
        for n in e["notices"]:
            delivery = ", ".join(f"{state} {count}" for state, count in n.get("delivery", {}).items())
            lines.append(f"  rendered {n['count']} {n['kind']} for {n['audience']} ({n['channel']}, {n['language']}) "
                         f"{local(n['first_at'])}" + (f"; {delivery}" if delivery else ""))
        for d in e.get("deliveries", []):
            if d["audience"] != "customers" and d["receipt"]:
                lines.append(f"    {d['route']}: {d['state']} {local(d['delivered_at'])} receipt "
                             f"{_receipt(d['receipt'])}")
        customers = [d for d in e.get("deliveries", []) if d["audience"] == "customers" and d["receipt"]]
        if customers:
            lines.append(f"    {len(customers)} customer receipt(s), e.g. {_receipt(customers[0]['receipt'])} "
                         "(all: register --json)")
        for x in e["exemptions"]:
            lines.append(f"  exemption {x['article']}: {x['reason']} ({x['by']})")
        if e["unresolved_customers"]:
            lines.append(f"  {e['unresolved_customers']} affected customers could not be resolved to a contact")
        lines.append("")
    return "\n".join(lines)


def _receipt(receipt: dict[str, Any]) -> str:
    for key in ("queue_id", "response_id", "path", "digest", "apprise", "fleet"):
        if receipt.get(key):
            return f"{key} {receipt[key]}"
    return json.dumps(receipt, ensure_ascii=False)[:60]
