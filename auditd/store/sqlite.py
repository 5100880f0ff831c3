"""The embedded store: one SQLite file (WAL) under the state directory.

Events are kept as segments, one row per committed batch holding the batch's events as
one msgpack array: a row per event costs more than the rest of the pipeline together.
Events that alerts cite are also kept one by one in `evidence`, for incidents.

Every batch from a source is committed in one transaction: its events, quarantined
records, alerts, incident changes and the file checkpoint just past its last record.
A crash (kill -9 included) therefore leaves either all of a batch or none of it, and
the source resumes from the last committed checkpoint: nothing lost, nothing twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from auditd.decode.quarantine import Quarantined
from auditd.event import AccessEvent
from auditd.sources.base import Checkpoint

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    source TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    tail_hash TEXT NOT NULL DEFAULT '',
    cursor TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (source, fingerprint)
);
CREATE TABLE IF NOT EXISTS event_segments (
    seq INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    first_ts_us INTEGER NOT NULL,
    last_ts_us INTEGER NOT NULL,
    count INTEGER NOT NULL,
    doc BLOB NOT NULL  -- msgpack array of AccessEvent
);
CREATE INDEX IF NOT EXISTS event_segments_last_ts ON event_segments (last_ts_us);
CREATE TABLE IF NOT EXISTS evidence (
    event_id TEXT PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    doc BLOB NOT NULL  -- msgpack AccessEvent
);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    reason TEXT NOT NULL,
    length INTEGER NOT NULL,
    record BLOB NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS source_stats (
    source TEXT PRIMARY KEY,
    events INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    last_event_at TEXT,
    updated_at TEXT
);
"""

PAGE_SIZE = 65536  # SQLite's largest
WAL_CHECKPOINT_BYTES = 1000 * 4096
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_encode = msgspec.msgpack.Encoder().encode
_decode_event = msgspec.msgpack.Decoder(AccessEvent).decode
_decode_segment = msgspec.msgpack.Decoder(list[AccessEvent]).decode


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _micros(ts: dt.datetime) -> int:
    delta = ts - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


class Store:
    """The SQLite state of one daemon. Constructing it opens nothing; call open()."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL", keep_events: bool = True):
        self.path = Path(path)
        self.synchronous = synchronous
        self.keep_events = keep_events
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def open(self, extra_schemas: Iterable[str] = ()) -> "Store":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        # A segment is a batch's events in one blob (megabytes): large pages store it in
        # 16x fewer overflow pages and WAL frames. Only a new file takes it (an existing
        # store keeps its page size), and it must come before WAL mode.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        # checkpoint after as many WAL bytes as SQLite's default (1000 pages of 4 KiB) would
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA wal_autocheckpoint={max(1, WAL_CHECKPOINT_BYTES // page_size)}")
        # NORMAL in WAL mode survives a process crash (kill -9); FULL also survives power loss.
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(SCHEMA)
        for schema in extra_schemas:
            conn.executescript(schema)
        self._conn = conn
        return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- writes (inside a transaction) ------------------------------------------------------
    def insert_events(self, conn: sqlite3.Connection, source: str, events: list[AccessEvent]) -> None:
        if not events or not self.keep_events:
            return
        stamps = [e.timestamp for e in events]
        conn.execute(
            "INSERT INTO event_segments (source, first_ts_us, last_ts_us, count, doc) VALUES (?,?,?,?,?)",
            (source, _micros(min(stamps)), _micros(max(stamps)), len(events), _encode(events)),
        )

    def insert_evidence(self, conn: sqlite3.Connection, events: Iterable[AccessEvent]) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO evidence (event_id, ts_us, doc) VALUES (?,?,?)",
            [(e.event_id, _micros(e.timestamp), _encode(e)) for e in events],
        )

    def insert_quarantine(self, conn: sqlite3.Connection, items: list[Quarantined]) -> None:
        if not items:
            return
        now = utc_now_iso()
        conn.executemany(
            "INSERT INTO quarantine (source, path, offset, reason, length, record, at) VALUES (?,?,?,?,?,?,?)",
            [(q.source, q.path, q.offset, q.reason, q.length, q.record, now) for q in items],
        )

    def save_checkpoints(self, conn: sqlite3.Connection, checkpoints: Iterable[Checkpoint]) -> None:
        now = utc_now_iso()
        conn.executemany(
            "INSERT INTO checkpoints (source, fingerprint, path, offset, tail_hash, cursor, updated_at) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT (source, fingerprint) DO UPDATE SET path=excluded.path, "
            "offset=excluded.offset, tail_hash=excluded.tail_hash, cursor=excluded.cursor, "
            "updated_at=excluded.updated_at",
            [(c.source, c.fingerprint, c.path, c.offset, c.tail_hash, c.cursor, now) for c in checkpoints],
        )

    def forget_checkpoints(self, conn: sqlite3.Connection, source: str, fingerprints: Iterable[str]) -> None:
        conn.executemany("DELETE FROM checkpoints WHERE source = ? AND fingerprint = ?",
                         [(source, fp) for fp in fingerprints])

    def bump_stats(self, conn: sqlite3.Connection, source: str, *, events: int, quarantined: int,
                   skipped: int, last_event_at: dt.datetime | None) -> None:
        conn.execute(
            "INSERT INTO source_stats (source, events, quarantined, skipped, last_event_at, updated_at) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT (source) DO UPDATE SET events=events+excluded.events, "
            "quarantined=quarantined+excluded.quarantined, skipped=skipped+excluded.skipped, "
            "last_event_at=COALESCE(MAX(last_event_at, excluded.last_event_at), last_event_at, "
            "excluded.last_event_at), updated_at=excluded.updated_at",
            (source, events, quarantined, skipped,
             last_event_at.isoformat() if last_event_at else None, utc_now_iso()),
        )

    # -- reads -----------------------------------------------------------------------------
    def load_checkpoints(self, source: str) -> dict[str, Checkpoint]:
        rows = self.conn.execute(
            "SELECT fingerprint, path, offset, tail_hash, cursor FROM checkpoints WHERE source = ?", (source,)
        ).fetchall()
        return {
            fp: Checkpoint(source=source, fingerprint=fp, path=path, offset=offset, tail_hash=tail_hash, cursor=cursor)
            for fp, path, offset, tail_hash, cursor in rows
        }

    def has_any_checkpoint(self) -> bool:
        return self.conn.execute("SELECT 1 FROM checkpoints LIMIT 1").fetchone() is not None

    def count_events(self) -> int:
        return self.conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_segments").fetchone()[0]

    def iter_events(self, since: dt.datetime | None = None) -> Iterator[AccessEvent]:
        """Stored events in commit order, those at or after `since` if given."""
        sql, args = "SELECT doc FROM event_segments", ()
        if since is not None:
            sql, args = sql + " WHERE last_ts_us >= ?", (_micros(since),)
        for (doc,) in self.conn.execute(sql + " ORDER BY seq", args):
            for event in _decode_segment(doc):
                if since is None or event.timestamp >= since:
                    yield event

    def evidence(self, event_ids: Iterable[str]) -> list[AccessEvent]:
        ids = list(event_ids)
        rows = self.conn.execute(
            f"SELECT doc FROM evidence WHERE event_id IN ({','.join('?' * len(ids))})", ids
        ).fetchall() if ids else []
        return [_decode_event(doc) for (doc,) in rows]

    def source_stats(self) -> list[dict]:
        cur = self.conn.execute(
            "SELECT source, events, quarantined, skipped, last_event_at, updated_at FROM source_stats ORDER BY source"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def quarantine_rows(self, limit: int = 100) -> list[dict]:
        cur = self.conn.execute(
            "SELECT source, path, offset, reason, length, at FROM quarantine ORDER BY seq DESC LIMIT ?", (limit,)
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
