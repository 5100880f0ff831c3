"""The outbox table: intake from ``notices``, claims, outcomes, recovery after a crash.

Every write is a short transaction of its own on the worker's connection, so the
pipeline's batches never wait long for the write lock; what can be read and computed
before ``BEGIN IMMEDIATE`` is, and a write with nothing to write takes no lock. (Reading
first is safe because one sender writes the outbox at a time: ``deliver/lock.py``.)

- **intake** copies new ``notices`` rows (after the highest ``notice_seq`` already in the
  outbox) into one outbox row per route, read first, then written a thousand per
  transaction;
- **claim** marks up to ``claim_batch`` due rows of one route ``sending`` and commits
  *before* any of them goes on the wire;
- **record** writes the outcomes of a slice of a batch (state, receipt, attempt rows)
  in one transaction;
- **recover** finds rows still ``sending`` from a worker that is gone (a crash, a kill):
  their messages may or may not have left, so they are queued again, marked
  ``possible_repeat``, with an ``interrupted`` attempt on record.

States: ``held`` (waiting for its digest), ``pending`` (due at ``next_attempt_at``; a
retry when ``attempts`` > 0), ``sending``, ``delivered``, ``failed`` (retry budget spent
or refused for good: escalated, shown in status, `outbox retry` queues it again),
``suppressed`` (a realert window: an earlier one was delivered), ``digested`` (folded
into a digest that has not been delivered yet), ``fleet`` (delivered by another daemon).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from auditd.deliver.message import wire_key
from auditd.store.sqlite import immediate
from auditd.store.times import from_db, to_db

STATES = ("held", "pending", "sending", "delivered", "failed", "suppressed", "digested", "fleet")
OPEN_STATES = ("held", "pending", "sending", "digested")  # the backlog
DONE_STATES = ("delivered", "suppressed", "fleet")
_COLUMNS = ("id, notice_seq, route, channel, wire_key, incident_id, fleet_key, step_id, kind, audience, recipient,"
            " contact_ref, body_path, state, attempts, next_attempt_at, possible_repeat")


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    notice_seq: int | None
    route: str
    channel: str
    wire_key: str
    incident_id: str | None
    fleet_key: str | None
    step_id: str | None
    kind: str
    audience: str
    recipient: str
    contact_ref: str
    body_path: str
    state: str
    attempts: int
    next_attempt_at: dt.datetime
    possible_repeat: bool

    @classmethod
    def of(cls, row: Sequence[Any]) -> "Row":
        values = list(row)
        values[15] = from_db(values[15])
        values[16] = bool(values[16])
        return cls(*values)


@dataclass(frozen=True, slots=True)
class Notice:
    seq: int
    idempotency_key: str
    incident_id: str
    fleet_key: str | None
    step_id: str
    revision: int
    kind: str
    audience: str
    channel: str
    recipient: str
    contact_ref: str
    body_path: str


@dataclass(frozen=True, slots=True)
class Planned:
    """One outbox row to add for a notice."""

    route: str
    channel: str
    state: str = "pending"
    next_attempt_at: dt.datetime | None = None
    error: str | None = None


# -- intake ------------------------------------------------------------------------------------
def intake(conn: sqlite3.Connection, plan: Callable[[Notice], list[Planned]], now: dt.datetime,
           limit: int = 1000) -> int:
    """Add outbox rows for the notices not seen yet (at most `limit` notices, in one short
    write transaction, none when there is nothing new); returns how many were read."""
    last = conn.execute("SELECT COALESCE(MAX(notice_seq), 0) FROM outbox").fetchone()[0]
    notices = [Notice(*r) for r in conn.execute(
        "SELECT n.seq, n.idempotency_key, n.incident_id, i.fleet_key, n.step_id, n.revision, n.kind, n.audience,"
        " n.channel, n.recipient, n.contact_ref, n.body_path FROM notices n"
        " LEFT JOIN incidents i ON i.incident_id = n.incident_id WHERE n.seq > ? ORDER BY n.seq LIMIT ?",
        (last, limit))]
    if not notices:
        return 0
    rows = []
    for notice in notices:
        key = wire_key(notice.fleet_key, notice.incident_id, notice.step_id, notice.recipient, notice.revision)
        for planned in plan(notice):
            rows.append((notice.seq, planned.route, planned.channel, key, notice.incident_id, notice.fleet_key,
                         notice.step_id, notice.kind, notice.audience, notice.recipient, notice.contact_ref,
                         notice.body_path, planned.state, to_db(planned.next_attempt_at or now), to_db(now),
                         planned.error))
    with immediate(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO outbox (notice_seq, route, channel, wire_key, incident_id, fleet_key, step_id, kind,"
            " audience, recipient, contact_ref, body_path, state, next_attempt_at, created_at, last_error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return len(notices)


def add_own(conn: sqlite3.Connection, *, route: str, channel: str, key: str, kind: str, audience: str,
            recipient: str, contact_ref: str, body_path: str, now: dt.datetime, incident_id: str | None = None,
            fleet_key: str | None = None, state: str = "pending") -> int:
    """A message of the stage's own (a digest, an escalation), in the caller's transaction."""
    cur = conn.execute(
        "INSERT INTO outbox (notice_seq, route, channel, wire_key, incident_id, fleet_key, step_id, kind, audience,"
        " recipient, contact_ref, body_path, state, next_attempt_at, created_at)"
        " VALUES (NULL, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
        (route, channel, key, incident_id, fleet_key, kind, audience, recipient, contact_ref, body_path, state,
         to_db(now), to_db(now)))
    return int(cur.lastrowid)


# -- claims ------------------------------------------------------------------------------------
def recover(conn: sqlite3.Connection, now: dt.datetime) -> int:
    """Rows left `sending` by a worker that is gone: queue them again as possible repeats."""
    if conn.execute("SELECT 1 FROM outbox WHERE state = 'sending' LIMIT 1").fetchone() is None:
        return 0  # the usual case: no write lock taken
    with immediate(conn):
        stale = conn.execute("SELECT id, attempts, claimed_at FROM outbox WHERE state = 'sending'").fetchall()
        if not stale:
            return 0
        conn.executemany(
            "INSERT INTO delivery_attempts (outbox_id, attempt, claimed_at, finished_at, outcome, error)"
            " VALUES (?, ?, ?, ?, 'interrupted', ?)",
            [(i, attempts, claimed or to_db(now), to_db(now),
              "in flight when the daemon stopped: it may have gone out; sent again as a possible repeat")
             for i, attempts, claimed in stale])
        conn.executemany("UPDATE outbox SET state = 'pending', possible_repeat = 1, next_attempt_at = ?,"
                         " claimed_by = NULL WHERE id = ?", [(to_db(now), i) for i, _, _ in stale])
    return len(stale)


def due_routes(conn: sqlite3.Connection, now: dt.datetime) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT route FROM outbox WHERE state = 'pending'"
                                       " AND next_attempt_at <= ? ORDER BY route", (to_db(now),))]


def claim(conn: sqlite3.Connection, route: str, now: dt.datetime, limit: int, worker: str,
          suppress: Callable[[sqlite3.Connection, Row], str | None] = lambda conn, row: None
          ) -> tuple[list[Row], list[tuple[Row, str]]]:
    """Mark up to `limit` due rows of a route `sending` (committed before any is sent).
    Rows an earlier delivered message covers (`suppress` names its key) are marked
    suppressed instead; returns (claimed, suppressed). The rows are chosen before the
    write lock is taken: only this sender moves rows out of `pending` (deliver/lock.py)."""
    rows = [Row.of(r) for r in conn.execute(
        f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' AND route = ? AND next_attempt_at <= ?"
        " ORDER BY next_attempt_at, id LIMIT ?", (route, to_db(now), limit))]
    if not rows:
        return [], []
    claimed, suppressed = [], []
    for row in rows:
        covering = suppress(conn, row)
        if covering is None:
            claimed.append(row)
        else:
            suppressed.append((row, covering))
    stamp = to_db(now)
    with immediate(conn):
        changed = conn.executemany("UPDATE outbox SET state = 'sending', attempts = attempts + 1, claimed_at = ?,"
                                   " claimed_by = ? WHERE id = ? AND state = 'pending'",
                                   [(stamp, worker, row.id) for row in claimed]).rowcount
        if claimed and changed != len(claimed):  # a row moved since it was read: send only what is ours
            ours = {i for (i,) in conn.execute(
                f"SELECT id FROM outbox WHERE state = 'sending' AND claimed_by = ? AND claimed_at = ?"
                f" AND id IN ({','.join('?' * len(claimed))})", (worker, stamp, *[r.id for r in claimed]))}
            claimed = [r for r in claimed if r.id in ours]
        conn.executemany("UPDATE outbox SET state = 'suppressed', covered_by = ?, delivered_at = NULL WHERE id = ?"
                         " AND state = 'pending'", [(covering, row.id) for row, covering in suppressed])
        conn.executemany(
            "INSERT INTO delivery_attempts (outbox_id, attempt, claimed_at, finished_at, outcome, error)"
            " VALUES (?, ?, ?, ?, 'suppressed', ?)",
            [(row.id, row.attempts, stamp, stamp, f"covered by the delivered message {covering}")
             for row, covering in suppressed])
    return [_sent(row) for row in claimed], suppressed


def _sent(row: Row) -> Row:
    return dataclasses.replace(row, state="sending", attempts=row.attempts + 1)


def delivered_within(conn: sqlite3.Connection, row: Row, since: dt.datetime) -> str | None:
    """The key of a message of the same kind, incident, audience and route delivered
    since then. Only `delivered` counts: a failed one never uses up a realert window."""
    found = conn.execute(
        "SELECT wire_key FROM outbox WHERE incident_id IS ? AND audience = ? AND kind = ? AND route = ?"
        " AND state = 'delivered' AND delivered_at >= ? AND id != ? ORDER BY delivered_at DESC LIMIT 1",
        (row.incident_id, row.audience, row.kind, row.route, to_db(since), row.id)).fetchone()
    return found[0] if found else None


# -- outcomes ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outcome:
    row: Row
    state: str  # delivered, pending (retry), failed
    claimed_at: dt.datetime
    finished_at: dt.datetime
    receipt: dict[str, Any] | None = None
    error: str | None = None
    message_sha256: str | None = None
    next_attempt_at: dt.datetime | None = None
    maybe_sent: bool = False  # a retry of a message that may have reached the receiver


@dataclass(frozen=True, slots=True)
class OutcomeRows:
    """The statements' parameters of a slice of outcomes, computed before the write lock."""

    updates: list[tuple[Any, ...]]
    attempts: list[tuple[Any, ...]]


def record(conn: sqlite3.Connection, outcomes: Iterable[Outcome] | OutcomeRows) -> None:
    """The outcomes of a slice of a batch, in the caller's transaction."""
    rows = outcomes if isinstance(outcomes, OutcomeRows) else outcome_rows(outcomes)
    conn.executemany("UPDATE outbox SET state = ?, delivered_at = ?, receipt = COALESCE(?, receipt),"
                     " message_sha256 = COALESCE(?, message_sha256), last_error = ?, next_attempt_at = ?,"
                     " possible_repeat = MAX(possible_repeat, ?), claimed_by = NULL WHERE id = ?", rows.updates)
    conn.executemany("INSERT INTO delivery_attempts (outbox_id, attempt, claimed_at, finished_at, outcome, receipt,"
                     " error) VALUES (?, ?, ?, ?, ?, ?, ?)", rows.attempts)


def outcome_rows(outcomes: Iterable[Outcome]) -> OutcomeRows:
    updates, attempts = [], []
    for o in outcomes:
        receipt = json.dumps(o.receipt, ensure_ascii=False, sort_keys=True) if o.receipt is not None else None
        attempt_outcome = {"pending": "retry"}.get(o.state, o.state)
        updates.append((o.state, to_db(o.finished_at) if o.state in ("delivered", "fleet") else None, receipt,
                        o.message_sha256, o.error, to_db(o.next_attempt_at or o.finished_at), int(o.maybe_sent),
                        o.row.id))
        attempts.append((o.row.id, o.row.attempts, to_db(o.claimed_at), to_db(o.finished_at), attempt_outcome,
                         receipt, o.error))
    return OutcomeRows(updates, attempts)


# -- reading, for status, metrics and the command line ----------------------------------------
def counts(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(channel, state) -> rows."""
    return {(channel, state): n for channel, state, n in conn.execute(
        "SELECT channel, state, COUNT(*) FROM outbox GROUP BY channel, state")}


def oldest_open(conn: sqlite3.Connection) -> dt.datetime | None:
    marks = ",".join("?" * len(OPEN_STATES))
    row = conn.execute(f"SELECT MIN(created_at) FROM outbox WHERE state IN ({marks})", OPEN_STATES).fetchone()
    return from_db(row[0]) if row and row[0] else None


def attempt_counts(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(channel, outcome) -> attempts recorded (delivered, retry, failed, interrupted, suppressed)."""
    return {(channel, outcome): n for channel, outcome, n in conn.execute(
        "SELECT o.channel, a.outcome, COUNT(*) FROM delivery_attempts a JOIN outbox o ON o.id = a.outbox_id"
        " GROUP BY o.channel, a.outcome")}


def retry_failed(conn: sqlite3.Connection, ids: Sequence[int] | None, now: dt.datetime) -> int:
    """Queue failed rows again with a fresh retry budget (`outbox retry`)."""
    with immediate(conn):
        if ids is None:
            cur = conn.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                               " escalated_at = NULL WHERE state = 'failed'", (to_db(now),))
            return cur.rowcount
        total = 0
        for i in ids:
            total += conn.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                                  " escalated_at = NULL WHERE id = ? AND state = 'failed'", (to_db(now), i)).rowcount
        return total
