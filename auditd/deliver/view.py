"""`neo-auditd outbox list|show`: the outbox as a person reads it (pseudonyms and audience
names only: the addresses are in the rendered files, never in the store)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from typing import Any

from auditd.store.times import from_db

_FIELDS = ("id", "notice_seq", "state", "channel", "route", "audience", "recipient", "kind", "incident_id", "wire_key",
           "attempts", "next_attempt_at", "created_at", "delivered_at", "receipt", "message_sha256", "last_error",
           "possible_repeat", "escalated_at", "covered_by", "body_deleted_at")
_TIMES = ("next_attempt_at", "created_at", "delivered_at", "escalated_at", "body_deleted_at")


class UnknownMessage(Exception):
    pass


def _row(values: tuple) -> dict[str, Any]:
    out = dict(zip(_FIELDS, values))
    for name in _TIMES:
        out[name] = from_db(out[name]) if out[name] else None
    out["receipt"] = json.loads(out["receipt"]) if out["receipt"] else None
    out["possible_repeat"] = bool(out["possible_repeat"])
    return out


def list_messages(conn: sqlite3.Connection, *, state: str | None = None, incident: str | None = None,
                  limit: int = 50) -> list[dict[str, Any]]:
    where, params = [], []
    if state == "retrying":
        where.append("state = 'pending' AND attempts > 0")
    elif state:
        where.append("state = ?")
        params.append(state)
    if incident:
        where.append("incident_id = ?")
        params.append(incident)
    sql = f"SELECT {', '.join(_FIELDS)} FROM outbox" + (f" WHERE {' AND '.join(where)}" if where else "")
    return [_row(r) for r in conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))]


def show_message(conn: sqlite3.Connection, outbox_id: int) -> dict[str, Any]:
    row = conn.execute(f"SELECT {', '.join(_FIELDS)} FROM outbox WHERE id = ?", (outbox_id,)).fetchone()
    if row is None:
        raise UnknownMessage(f"no message {outbox_id} in the outbox")
    out = _row(row)
    out["attempts_made"] = [
        {"attempt": a, "claimed_at": from_db(c), "finished_at": from_db(f), "outcome": o,
         "receipt": json.loads(r) if r else None, "error": e}
        for a, c, f, o, r, e in conn.execute(
            "SELECT attempt, claimed_at, finished_at, outcome, receipt, error FROM delivery_attempts"
            " WHERE outbox_id = ? ORDER BY seq", (outbox_id,))]
    return out


def shown_state(row: dict[str, Any]) -> str:
    if row["state"] == "pending" and row["attempts"]:
        return "retrying"
    return row["state"] + (" (repeat?)" if row["possible_repeat"] else "")


def _when(value: dt.datetime | None, zone: dt.tzinfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def receipt_text(receipt: dict[str, Any] | None) -> str:
    if not receipt:
        return "-"
    for key in ("queue_id", "response_id", "path", "digest", "apprise", "fleet"):
        if receipt.get(key):
            return f"{key} {receipt[key]}"
    return json.dumps(receipt, ensure_ascii=False)[:60]


def render_list(rows: list[dict[str, Any]], zone: dt.tzinfo) -> str:
    if not rows:
        return "the outbox has no such messages\n"
    lines = [f"{'ID':>6}  {'STATE':<18} {'ROUTE':<24} {'AUDIENCE':<10} {'RECIPIENT':<16} {'TRIES':>5}  "
             f"{'WHEN':<19}  RECEIPT OR ERROR"]
    for r in rows:
        when = r["delivered_at"] if r["delivered_at"] else r["next_attempt_at"]
        detail = receipt_text(r["receipt"]) if r["state"] in ("delivered", "fleet") else (
            f"covered by {r['covered_by']}" if r["covered_by"] else (r["last_error"] or "-"))
        lines.append(f"{r['id']:>6}  {shown_state(r):<18} {r['route'][:24]:<24} {r['audience'][:10]:<10} "
                     f"{r['recipient'][:16]:<16} {r['attempts']:>5}  {_when(when, zone):<19}  {detail[:80]}")
    lines.append(f"times {zone}")
    return "\n".join(lines) + "\n"


def render_show(row: dict[str, Any], zone: dt.tzinfo) -> str:
    lines = [f"message {row['id']}: {shown_state(row)}; times {zone}",
             f"  key:        {row['wire_key']}",
             f"  incident:   {row['incident_id'] or '-'} (neo-auditd incidents show {row['incident_id']})"
             if row["incident_id"] else "  incident:   -",
             f"  to:         {row['audience']} / {row['recipient']} via {row['route']} ({row['channel']})",
             f"  kind:       {row['kind']}",
             f"  queued:     {_when(row['created_at'], zone)}",
             f"  delivered:  {_when(row['delivered_at'], zone)}",
             f"  receipt:    {json.dumps(row['receipt'], ensure_ascii=False) if row['receipt'] else '-'}",
             f"  sent bytes: sha256 {row['message_sha256'] or '-'}"]
    if row["last_error"]:
        lines.append(f"  last error: {row['last_error']}")
    if row["covered_by"]:
        lines.append(f"  covered by: {row['covered_by']}")
    if row["body_deleted_at"]:
        lines.append(f"  the rendered file (the customer's address) was deleted {_when(row['body_deleted_at'], zone)}")
    lines.append("  attempts:")
    for a in row["attempts_made"]:
        lines.append(f"    #{a['attempt']} {_when(a['claimed_at'], zone)} -> {_when(a['finished_at'], zone)} "
                     f"{a['outcome']}: {receipt_text(a['receipt']) if a['receipt'] else (a['error'] or '')}")
    return "\n".join(lines) + "\n"
