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
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from operator import attrgetter
from pathlib import Path

import msgspec

from auditd.decode.quarantine import Quarantined
from auditd.errors import StoreFormatError
from auditd.event import AccessEvent
from auditd.sources.base import Checkpoint, SourceReport
from auditd.store.encoding import EVENT_ENCODING, EVENT_ENCODING_KEY, decode_event, encode, segment_decoder
from auditd.store.health import damaged, is_damage
from auditd.store.migrations import migrate
from auditd.store.times import now_db, to_db

log = logging.getLogger(__name__)

SOURCE_REPORT_KEY = "source_report:"  # + source name: a meta row, what `status` shows of its scan
_encode_json = msgspec.json.Encoder().encode

PAGE_SIZE = 65536  # SQLite's largest
WAL_CHECKPOINT_BYTES = 1000 * 4096
# With checkpoints in the background, the writer checkpoints itself only past this many
# WAL bytes: a safety net for when the checkpointer cannot keep up.
WAL_WRITER_CHECKPOINT_BYTES = 256 * 1024 * 1024
CHECKPOINT_INTERVAL_S = 0.5
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL file is cut back to when it starts over
_decode_segment = segment_decoder()


class Segment:
    """The events of one batch as one msgpack array, encoded a chunk at a time.

    The pipeline adds each chunk as soon as it is detected, while its events are still
    in the CPU's caches; the array is the chunks' encodings without their own array
    headers, behind one header for the whole count (msgpack: fixarray, array 16, 32).
    """

    __slots__ = ("_bodies", "_encode", "count", "first", "last")

    def __init__(self, *, encode: bool = True) -> None:
        """`encode=False` only counts (a store that keeps no events)."""
        self._encode = encode
        self._bodies: list[bytes] = []
        self.count = 0
        self.first: dt.datetime | None = None  # the earliest event time
        self.last: dt.datetime | None = None  # the latest

    def add(self, events: list[AccessEvent]) -> None:
        n = len(events)
        if not n:
            return
        if self._encode:
            self._bodies.append(encode(events)[_array_header_size(n):])
        self.count += n
        stamps = list(map(_timestamp_of, events))
        first, last = min(stamps), max(stamps)
        if self.first is None or first < self.first:
            self.first = first
        if self.last is None or last > self.last:
            self.last = last

    def extend(self, other: "Segment") -> None:
        """Add another segment's chunks after this one's (a batch prepared in parts)."""
        self._bodies += other._bodies
        self.count += other.count
        if other.first is not None and (self.first is None or other.first < self.first):
            self.first = other.first
        if other.last is not None and (self.last is None or other.last > self.last):
            self.last = other.last

    def doc(self) -> bytes:
        return _array_header(self.count) + b"".join(self._bodies)

    def bodies(self) -> list[bytes]:
        """Each added chunk's encoding, without its array header (see `decode_chunk`)."""
        return self._bodies


_decode_events = msgspec.msgpack.Decoder(list[AccessEvent]).decode


def decode_chunk(body: bytes, count: int) -> list[AccessEvent]:
    """The events of one of a Segment's bodies (`count` of them), as they were added."""
    return _decode_events(_array_header(count) + body)


def _check_event_encoding(conn: sqlite3.Connection) -> None:
    """Record the event encoding of a store that has none (new, or from before arrays:
    this version reads its map rows as they are); refuse one written by a newer version."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (EVENT_ENCODING_KEY,)).fetchone()
    if row is None:
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (EVENT_ENCODING_KEY, EVENT_ENCODING))
    elif row[0] != EVENT_ENCODING:
        raise StoreFormatError(f"stored events are encoded as {row[0]!r}, which this neo-auditd cannot "
                               f"read (it writes {EVENT_ENCODING!r}); run the newer version")


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on an autocommit connection: BEGIN IMMEDIATE takes the
    write lock up front (waiting on the busy timeout, so nothing fails half-way on a
    lock upgrade); an exception rolls it back, the end commits."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite rolls a transaction back by itself on some errors (SQLITE_FULL, IOERR):
        # a second ROLLBACK would hide the real error behind "no transaction is active"
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT (a full disk) leaves the transaction open
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction on an autocommit connection: every SELECT inside sees the
    same committed state, and no write lock is taken (in WAL mode writers go on
    meanwhile). Nothing may be written inside; the end lets the snapshot go."""
    conn.execute("BEGIN DEFERRED")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _array_header_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 1 << 16 else 5


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


_timestamp_of = attrgetter("timestamp")


class WalCheckpointer:
    """Copies the WAL into the database file every `interval` seconds, on its own
    connection and thread (PASSIVE: it never blocks the writer, nor waits for it)."""

    def __init__(self, path: Path, synchronous: str, interval: float = CHECKPOINT_INTERVAL_S):
        self._path, self._synchronous, self._interval = path, synchronous, interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neo-auditd-wal-checkpoint", daemon=True)
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute(f"PRAGMA synchronous={self._synchronous}")  # a checkpoint syncs as the writer would
            failing_since = None
            while not self._stopping.wait(self._interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                    if failing_since is not None:
                        log.info("WAL checkpoints work again", extra={"file.path": str(self._path)})
                        failing_since = None
                except sqlite3.Error as exc:  # the writer checkpoints past its own bound meanwhile
                    now = time.monotonic()
                    if failing_since is None or now - failing_since >= 60:  # a full disk: once a minute
                        failing_since = now
                        log.warning("WAL checkpoint failed: %s", exc, extra={"file.path": str(self._path)})
        finally:
            conn.close()


class Store:
    """The SQLite state of one daemon. Constructing it opens nothing; call open()."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL", keep_events: bool = True,
                 max_bytes: int | None = None):
        self.path = Path(path)
        self.synchronous = synchronous
        self.keep_events = keep_events
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: WalCheckpointer | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def open(self, *, background_checkpoints: bool = False) -> "Store":
        """Open (creating) the store. With `background_checkpoints`, a thread copies the
        WAL into the database file, so that the pipeline's commits do not wait for it
        (a checkpoint writes each byte a second time and syncs the disk)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect(background_checkpoints)
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):  # not a database, or damaged past opening
                raise damaged(exc, self.path) from exc
            raise
        self._conn = conn
        self.set_max_bytes(self.max_bytes)
        if background_checkpoints:
            self._checkpointer = WalCheckpointer(self.path, self.synchronous)
            self._checkpointer.start()
        return self

    def _connect(self, background_checkpoints: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        # A segment is a batch's events in one blob (megabytes): large pages store it in
        # 16x fewer overflow pages and WAL frames. Only a new file takes it (an existing
        # store keeps its page size), and it must come before WAL mode.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        # checkpoint after as many WAL bytes as SQLite's default (1000 pages of 4 KiB) would
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        wal_bytes = WAL_WRITER_CHECKPOINT_BYTES if background_checkpoints else WAL_CHECKPOINT_BYTES
        conn.execute(f"PRAGMA wal_autocheckpoint={max(1, wal_bytes // page_size)}")
        # a reader's long snapshot (a job, a person's query) keeps checkpoints from catching
        # up, and the WAL grows meanwhile; without a limit the file keeps its largest size
        # for good. With one, the writer that starts the WAL over cuts it back to this.
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        # NORMAL in WAL mode survives a process crash (kill -9); FULL also survives power loss.
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        try:
            migrate(conn, self.path)
            _check_event_encoding(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def set_max_bytes(self, max_bytes: int | None) -> None:
        """Cap the file's size (a write past it fails with SQLITE_FULL and the daemon holds
        back); None lifts the cap. A cap below the current size holds at the current size."""
        self.max_bytes = max_bytes
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        pages = max_bytes // page_size if max_bytes else 4294967294  # the largest SQLite takes
        self.conn.execute(f"PRAGMA max_page_count = {int(pages)}")

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
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
        with immediate(conn):
            yield conn

    # -- writes (inside a transaction) ------------------------------------------------------
    def insert_events(self, conn: sqlite3.Connection, source: str, events: list[AccessEvent]) -> None:
        segment = Segment()
        segment.add(events)
        self.insert_segment(conn, source, segment)

    def insert_segment(self, conn: sqlite3.Connection, source: str, segment: Segment) -> None:
        if not segment.count or not self.keep_events:
            return
        conn.execute(
            "INSERT INTO event_segments (source, first_ts, last_ts, count, doc) VALUES (?,?,?,?,?)",
            (source, to_db(segment.first), to_db(segment.last), segment.count, segment.doc()),
        )

    def insert_evidence(self, conn: sqlite3.Connection, events: Iterable[AccessEvent]) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO evidence (event_id, ts, doc) VALUES (?,?,?)",
            [(e.event_id, to_db(e.timestamp), encode(e)) for e in events],
        )

    def insert_quarantine(self, conn: sqlite3.Connection, items: list[Quarantined]) -> None:
        if not items:
            return
        now = now_db()
        conn.executemany(
            "INSERT INTO quarantine (source, path, offset, reason, length, record, at) VALUES (?,?,?,?,?,?,?)",
            [(q.source, q.path, q.offset, q.reason, q.length, q.record, now) for q in items],
        )

    def save_checkpoints(self, conn: sqlite3.Connection, checkpoints: Iterable[Checkpoint]) -> None:
        now = now_db()
        conn.executemany(
            "INSERT INTO checkpoints (source, fingerprint, path, offset, tail_hash, cursor, updated_at) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT (source, fingerprint) DO UPDATE SET path=excluded.path, "
            "offset=excluded.offset, tail_hash=excluded.tail_hash, cursor=excluded.cursor, "
            "updated_at=excluded.updated_at",
            [(c.source, c.fingerprint, c.path, c.offset, c.tail_hash, c.cursor, now) for c in checkpoints],
        )

    def save_source_report(self, conn: sqlite3.Connection, source: str, report: SourceReport) -> None:
        """What a source's last scan found (read by `status`); one meta row per source."""
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (SOURCE_REPORT_KEY + source, _encode_json(report).decode()),
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
             to_db(last_event_at) if last_event_at else None, now_db()),
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
            sql, args = sql + " WHERE last_ts >= ?", (to_db(since),)
        for (doc,) in self.conn.execute(sql + " ORDER BY seq", args):
            for event in _decode_segment(doc):
                if since is None or event.timestamp >= since:
                    yield event

    def evidence(self, event_ids: Iterable[str]) -> list[AccessEvent]:
        ids = list(event_ids)
        rows = self.conn.execute(
            f"SELECT doc FROM evidence WHERE event_id IN ({','.join('?' * len(ids))})", ids
        ).fetchall() if ids else []
        return [decode_event(doc) for (doc,) in rows]

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
