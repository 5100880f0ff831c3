"""The ``playbook_steps`` table: every step's clock and state is a row.

States: ``pending`` (waiting for its time, its waits, or a person), ``running`` (a
contain action claimed by the job: the claim commits before the action starts, so a
crash mid-action can never start it twice), ``review`` (a report rendered, waiting for
a person to check and submit it), ``done``, ``approved``, ``skipped`` (with a reason),
``failed`` (an action failed; the step stays open and escalates), ``cancelled`` (the
incident was dismissed or merged away). A step is open while ``closed_at`` is NULL,
and overdue while open past ``due_at`` (``ops.status`` and the metrics count those).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from dataclasses import dataclass
from typing import Any

import msgspec

from auditd.respond.due import Due
from auditd.respond.playbook import Step
from auditd.store.times import from_db, to_db

OPEN_STATES = ("pending", "running", "review", "requested", "failed")
FINISHED = ("done", "approved", "skipped")  # what a waiting step accepts as finished

_COLUMNS = ("incident_id, step_id, playbook, kind, title, audience, owner, spec, anchor, due_at, waits_for, state,"
            " added_at, started_at, fired_at, late, closed_at, closed_by, reason, escalations, next_escalation_at,"
            " result")
_json = msgspec.json.Encoder(order="sorted")
_decode = msgspec.json.Decoder()


def step_json(step: Step) -> str:
    data = dataclasses.asdict(step)
    return _json.encode(data).decode()


def step_from_json(text: str) -> Step:
    data = _decode.decode(text)
    for name in ("due", "due_cii"):
        if data.get(name) is not None:
            data[name] = Due(**data[name])
    for name in ("waits_for", "watch", "checklist"):
        data[name] = tuple(data.get(name) or ())
    return Step(**data)


@dataclass(slots=True)
class StepRow:
    incident_id: str
    step_id: str
    playbook: str
    kind: str
    title: str
    audience: str | None
    owner: str | None
    spec: Step
    anchor: str
    due_at: dt.datetime | None
    waits_for: tuple[str, ...]
    state: str
    added_at: dt.datetime
    started_at: dt.datetime | None
    fired_at: dt.datetime | None
    late: bool
    closed_at: dt.datetime | None
    closed_by: str | None
    reason: str | None
    escalations: int
    next_escalation_at: dt.datetime | None
    result: dict[str, Any]

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def overdue(self, now: dt.datetime) -> bool:
        return self.open and self.due_at is not None and self.due_at < now

    def to_json(self) -> dict[str, Any]:
        """For --json and the register: the stored facts, spec as planned."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["spec"] = dataclasses.asdict(self.spec)
        return out


def _time(text: str | None) -> dt.datetime | None:
    return from_db(text) if text else None


def _row(values: tuple[Any, ...]) -> StepRow:
    (incident_id, step_id, playbook, kind, title, audience, owner, spec, anchor, due_at, waits_for, state,
     added_at, started_at, fired_at, late, closed_at, closed_by, reason, escalations, next_escalation_at,
     result) = values
    return StepRow(incident_id, step_id, playbook, kind, title, audience, owner, step_from_json(spec), anchor,
                   _time(due_at), tuple(_decode.decode(waits_for)), state, from_db(added_at), _time(started_at),
                   _time(fired_at), bool(late), _time(closed_at), closed_by, reason, escalations,
                   _time(next_escalation_at), _decode.decode(result) if result else {})


def insert(conn: sqlite3.Connection, incident_id: str, playbook: str, step: Step, due_at: dt.datetime | None,
           now: dt.datetime) -> None:
    conn.execute(
        "INSERT INTO playbook_steps (incident_id, step_id, playbook, kind, title, audience, owner, spec, anchor,"
        " due_at, waits_for, state, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
        (incident_id, step.id, playbook, step.kind, step.title, step.audience, step.owner, step_json(step),
         step.anchor, to_db(due_at) if due_at else None, _json.encode(list(step.waits_for)).decode(), to_db(now)))


def of_incident(conn: sqlite3.Connection, incident_id: str) -> list[StepRow]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM playbook_steps WHERE incident_id = ?"
                        " ORDER BY due_at IS NULL, due_at, added_at, step_id", (incident_id,))
    return [_row(r) for r in rows]


def get(conn: sqlite3.Connection, incident_id: str, step_id: str) -> StepRow | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM playbook_steps WHERE incident_id = ? AND step_id = ?",
                       (incident_id, step_id)).fetchone()
    return _row(row) if row else None


def open_steps(conn: sqlite3.Connection) -> list[StepRow]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM playbook_steps WHERE closed_at IS NULL"
                        " ORDER BY due_at IS NULL, due_at, incident_id, step_id")
    return [_row(r) for r in rows]


def update(conn: sqlite3.Connection, row: StepRow, **values: Any) -> None:
    """Set columns of one step (names from this module only) and mirror them on `row`."""
    encoded: dict[str, Any] = {}
    for name, value in values.items():
        setattr(row, name, value)
        if isinstance(value, dt.datetime):
            value = to_db(value)
        elif name == "result":
            value = _json.encode(value).decode()
        elif isinstance(value, bool):
            value = int(value)
        encoded[name] = value
    sets = ", ".join(f"{name} = ?" for name in encoded)
    conn.execute(f"UPDATE playbook_steps SET {sets} WHERE incident_id = ? AND step_id = ?",
                 (*encoded.values(), row.incident_id, row.step_id))


def overdue_count(conn: sqlite3.Connection, now: dt.datetime) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM playbook_steps WHERE closed_at IS NULL AND due_at < ?",
                            (to_db(now),)).fetchone()[0])
