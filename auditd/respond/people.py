"""What people do to playbook steps: mark one done, approve one, skip one with a reason.

Four-eyes: an approval step approves another step's output (a report or a task); the
person who finished that step is its requester, and may not approve it. Skipping a
step that notifies affected customers records a PIPL art. 57(2) exemption with its
reason: the register shows it, and the announcement does not replace the notices.

Each action runs in one transaction with its trace on the incident's timeline.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

from auditd.correlate import Correlator, StepTrace
from auditd.correlate.model import UnknownIncident
from auditd.respond import steps as table
from auditd.store.sqlite import immediate


class StepError(Exception):
    """A person's action on a step that the workflow does not allow."""


def _step(conn: sqlite3.Connection, incident_id: str, step_id: str) -> table.StepRow:
    if conn.execute("SELECT 1 FROM incidents WHERE incident_id = ?", (incident_id,)).fetchone() is None:
        raise UnknownIncident(incident_id)
    row = table.get(conn, incident_id, step_id)
    if row is None:
        known = ", ".join(r.step_id for r in table.of_incident(conn, incident_id)) or "none yet"
        raise StepError(f"{incident_id} has no step {step_id!r} (steps: {known})")
    return row


def _who(who: str) -> str:
    if not who or not who.strip():
        raise StepError("say who you are (--who)")
    return who.strip()


def done(conn: sqlite3.Connection, correlator: Correlator, incident_id: str, step_id: str, who: str,
         now: dt.datetime, note: str | None = None) -> table.StepRow:
    """A person finished a step: a task, a reviewed report (submitted for approval), or a
    failed action handled by hand."""
    who = _who(who)
    with immediate(conn):
        row = _step(conn, incident_id, step_id)
        if not row.open:
            raise StepError(f"{step_id} is already {row.state}")
        if row.kind == "approval":
            raise StepError(f"{step_id} is an approval: use `playbook approve` (by someone other than the requester)")
        if row.state == "running":
            raise StepError(f"{step_id} is running; wait for its outcome")
        if row.state == "pending" and row.spec.automatic and row.kind not in ("report", "contain"):
            raise StepError(f"{step_id} is done by the daemon when it is ready; skip it with a reason instead")
        if row.state == "pending" and row.kind == "report":
            raise StepError(f"{step_id}: its report is not rendered yet (`neo-auditd report` renders one now)")
        for other in row.waits_for:
            waited = table.get(conn, incident_id, other)
            if waited is not None and waited.state not in table.FINISHED:
                raise StepError(f"{step_id} waits for {other}, which is {waited.state}")
        table.update(conn, row, state="done", closed_at=now, closed_by=who, reason=note)
        _trace(conn, correlator, row, "done", who, {"note": note} if note else {})
    return row


def approve(conn: sqlite3.Connection, correlator: Correlator, incident_id: str, step_id: str, who: str,
            now: dt.datetime) -> table.StepRow:
    who = _who(who)
    with immediate(conn):
        row = _step(conn, incident_id, step_id)
        if row.kind != "approval":
            raise StepError(f"{step_id} is a {row.kind} step, not an approval")
        if not row.open:
            raise StepError(f"{step_id} is already {row.state}")
        target_id = row.spec.approves or ""
        target = table.get(conn, incident_id, target_id)
        if target is None or target.state != "done":
            state = target.state if target else "missing"
            raise StepError(f"{step_id} approves {target_id}, which is {state}: it must be done (submitted) first")
        if target.closed_by == who:
            raise StepError(f"four eyes: {who} did {target_id}, so someone else must approve it")
        table.update(conn, row, state="approved", closed_at=now, closed_by=who, result={"requester": target.closed_by})
        _trace(conn, correlator, row, "approved", who, {"approves": target_id, "requester": target.closed_by})
    return row


def skip(conn: sqlite3.Connection, correlator: Correlator, incident_id: str, step_id: str, who: str,
         now: dt.datetime, reason: str) -> table.StepRow:
    who = _who(who)
    if not reason or not reason.strip():
        raise StepError("skipping a step needs a reason (--reason)")
    with immediate(conn):
        row = _step(conn, incident_id, step_id)
        if not row.open:
            raise StepError(f"{step_id} is already {row.state}")
        if row.state == "running":
            raise StepError(f"{step_id} is running; wait for its outcome")
        exemption = row.kind == "notify" and row.audience == "customers"
        result = dict(row.result)
        if exemption:
            result["exemption"] = {"article": "PIPL art. 57(2)", "reason": reason.strip(), "by": who}
        table.update(conn, row, state="skipped", closed_at=now, closed_by=who, reason=reason.strip(), result=result)
        _trace(conn, correlator, row, "skipped", who, {"reason": reason.strip(), "exemption": exemption})
    return row


def _trace(conn: sqlite3.Connection, correlator: Correlator, row: table.StepRow, event: str, who: str,
           detail: dict) -> None:
    correlator.apply(conn, actions=[StepTrace(incident_id=row.incident_id, who=who, step_id=row.step_id,
                                              event=event, detail=detail)])
