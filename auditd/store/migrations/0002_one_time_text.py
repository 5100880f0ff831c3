"""0002: one time representation in every table (``auditd.store.times``).

Event segments and evidence kept times as integer microseconds since the epoch, every
other table as ISO text, some of it of varying width (``isoformat()`` drops zero
microseconds, so text order was not always time order). Now all are fixed-width UTC
ISO text. The hash-chained timeline is not touched: its ``at`` is hashed as stored,
and it was fixed-width already.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

from auditd.store.times import normalise, to_db

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _from_micros(us: int) -> str:
    return to_db(_EPOCH + dt.timedelta(microseconds=us))


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("DROP INDEX IF EXISTS event_segments_last_ts")
    conn.execute("ALTER TABLE event_segments ADD COLUMN first_ts TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE event_segments ADD COLUMN last_ts TEXT NOT NULL DEFAULT ''")
    rows = conn.execute("SELECT seq, first_ts_us, last_ts_us FROM event_segments").fetchall()
    conn.executemany("UPDATE event_segments SET first_ts = ?, last_ts = ? WHERE seq = ?",
                     [(_from_micros(first), _from_micros(last), seq) for seq, first, last in rows])
    conn.execute("ALTER TABLE event_segments DROP COLUMN first_ts_us")
    conn.execute("ALTER TABLE event_segments DROP COLUMN last_ts_us")
    conn.execute("CREATE INDEX event_segments_last_ts ON event_segments (last_ts)")

    conn.execute("ALTER TABLE evidence ADD COLUMN ts TEXT NOT NULL DEFAULT ''")
    rows = conn.execute("SELECT event_id, ts_us FROM evidence").fetchall()
    conn.executemany("UPDATE evidence SET ts = ? WHERE event_id = ?",
                     [(_from_micros(us), event_id) for event_id, us in rows])
    conn.execute("ALTER TABLE evidence DROP COLUMN ts_us")

    for table, key, columns in (
        ("checkpoints", "rowid", ("updated_at",)),
        ("quarantine", "seq", ("at",)),
        ("source_stats", "source", ("last_event_at", "updated_at")),
        ("elastic_dead_letters", "seq", ("at",)),
    ):
        _normalise(conn, table, key, columns)


def _normalise(conn: sqlite3.Connection, table: str, key: str, columns: tuple[str, ...]) -> None:
    names = ", ".join(columns)
    sets = ", ".join(f"{c} = ?" for c in columns)
    updates = []
    for row in conn.execute(f"SELECT {key}, {names} FROM {table}"):
        values = tuple(normalise(v) for v in row[1:])
        if values != tuple(row[1:]):
            updates.append((*values, row[0]))
    conn.executemany(f"UPDATE {table} SET {sets} WHERE {key} = ?", updates)
