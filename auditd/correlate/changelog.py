"""The incident change log: the one way from incidents to what reacts to them.

``Correlator.apply`` appends one row per change, in the transaction that made it, so
the log holds every change that committed and nothing that did not. A consumer (the
respond stage, the Elasticsearch replica) reads the rows after its cursor and moves the
cursor in the same transaction as whatever it writes in response: inside the store,
each change is dealt with exactly once, across crashes and restarts.

    with immediate(conn):
        changes = read(conn, "respond", limit=100)
        ... write the consumer's own rows ...
        advance(conn, "respond", changes[-1].seq)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from auditd.correlate.model import CorrelateError, IncidentChange
from auditd.store.times import now_db, to_db

_encode = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.Decoder(IncidentChange).decode


@dataclass(frozen=True, slots=True)
class LoggedChange:
    seq: int
    change: IncidentChange


def append(conn: sqlite3.Connection, changes: Iterable[IncidentChange]) -> None:
    conn.executemany(
        "INSERT INTO incident_changes (incident_id, version, at, cause, change) VALUES (?, ?, ?, ?, ?)",
        [(c.incident_id, c.version, to_db(c.at) if c.at else now_db(), c.cause, _encode(c).decode())
         for c in changes],
    )


def cursor(conn: sqlite3.Connection, consumer: str) -> int:
    row = conn.execute("SELECT seq FROM change_cursors WHERE consumer = ?", (consumer,)).fetchone()
    return int(row[0]) if row else 0


def read(conn: sqlite3.Connection, consumer: str, *, limit: int = 1000) -> list[LoggedChange]:
    """The changes after the consumer's cursor, oldest first."""
    rows = conn.execute(
        "SELECT seq, change FROM incident_changes WHERE seq > ? ORDER BY seq LIMIT ?",
        (cursor(conn, consumer), limit),
    )
    return [LoggedChange(seq, _decode(text)) for seq, text in rows]


def advance(conn: sqlite3.Connection, consumer: str, seq: int) -> None:
    """Move the consumer's cursor to `seq`, inside the caller's transaction; never back."""
    if not conn.in_transaction:
        raise CorrelateError("a change-log cursor moves only inside the consumer's transaction")
    conn.execute(
        "INSERT INTO change_cursors (consumer, seq, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (consumer) DO UPDATE SET seq = MAX(seq, excluded.seq), updated_at = excluded.updated_at",
        (consumer, seq, now_db()),
    )


def pending(conn: sqlite3.Connection, consumer: str) -> int:
    """Changes the consumer has not dealt with yet (for status and metrics)."""
    row = conn.execute("SELECT COUNT(*) FROM incident_changes WHERE seq > ?", (cursor(conn, consumer),)).fetchone()
    return int(row[0])
