"""Retention: delete stored events and quarantined records once they are old enough.

What goes, and what never does:
- event segments whose newest event is older than `retention.events` (a segment is one
  committed batch, so an event can outlive its retention by at most one batch's span);
- quarantine rows older than `retention.quarantine`, by when they were quarantined;
- never incidents, alerts, incident timelines or subjects: they are the breach
  register, and the regulator may ask for them long after the events;
- never the `evidence` table: the events that alerts cite, copied there when the alert
  was committed, are evidence of an incident, and "preservation of evidence" is part of
  every regulator report.

The purge runs while the pipeline writes, in the same process: it uses its own SQLite
connection (WAL lets it read beside the writer) and deletes in chunks, one short write
transaction each, pausing between them so the pipeline's next batch is not held up for
long. The pipeline's connection waits on a busy timeout, and so does this one.

Space freed by a purge is reused by later inserts; the file does not shrink.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from auditd.jobs.context import JobContext
from auditd.ops.settings import RetentionSettings
from auditd.ops.status import table_exists
from auditd.store.sqlite import immediate
from auditd.store.times import to_db

log = logging.getLogger("neo_auditd.retention")

CHUNK_ROWS = 50_000  # measured at ~0.15 s of write lock per chunk on a development machine
PAUSE_S = 0.05  # between chunks: SQLite has no queue, a waiting writer needs a gap to get in

SEGMENT_ROWS = 20  # a segment holds one batch (up to ~20k events): delete a few at a time
_DELETE_SEGMENTS = """
DELETE FROM main.event_segments WHERE seq IN (
    SELECT seq FROM main.event_segments WHERE last_ts < ? ORDER BY seq LIMIT ?)
"""
# `at` is ISO text; julianday() compares it as a time whatever its offset or precision,
# and a value it cannot parse gives NULL, so such a row is kept rather than guessed at.
# No index serves it: a chunk's rows are found by a read, outside the write lock (the
# last chunk's search reads the whole table), and deleted by their range of seq.
_FIND_QUARANTINE = """
SELECT MIN(seq), MAX(seq), COUNT(*) FROM (
    SELECT seq FROM main.quarantine WHERE julianday(at) < julianday(?) ORDER BY seq LIMIT ?)
"""
_DELETE_QUARANTINE = "DELETE FROM main.quarantine WHERE seq BETWEEN ? AND ? AND julianday(at) < julianday(?)"


@dataclass(frozen=True, slots=True)
class PurgeReport:
    events_cutoff: dt.datetime  # events before it were deleted (UTC)
    quarantine_cutoff: dt.datetime
    events_deleted: int
    quarantine_deleted: int
    evidence_kept: int  # events older than the cutoff kept because an alert cites them
    complete: bool  # False when asked to stop between chunks; the next run goes on
    seconds: float


def connect(store_path: Path, *, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """A read-write connection of the purge's own; refuses to create a missing store."""
    uri = Path(store_path).resolve().as_uri() + "?mode=rw"
    return sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None)


def run(context: JobContext) -> None:
    purge_store(context.store_path, context.runtime().settings.ops.retention, now=context.now(),
                should_stop=context.should_stop, keep_sql=context.retention_guard())


def purge_store(store_path: Path, settings: RetentionSettings, *, now: dt.datetime | None = None,
                should_stop: Callable[[], bool] = lambda: False, keep_sql: str | None = None) -> PurgeReport:
    """Open a connection, purge, close: what a scheduled job or a CLI command calls.

    `keep_sql` is an extra condition segments must meet to go (e.g. "already shipped").
    """
    conn = connect(store_path)
    try:
        return purge(conn, now or dt.datetime.now(dt.timezone.utc), settings, should_stop=should_stop,
                     keep_sql=keep_sql)
    finally:
        conn.close()


def purge(conn: sqlite3.Connection, now: dt.datetime, settings: RetentionSettings, *,
          chunk_rows: int = CHUNK_ROWS, segment_rows: int = SEGMENT_ROWS, pause_s: float = PAUSE_S,
          should_stop: Callable[[], bool] = lambda: False, keep_sql: str | None = None) -> PurgeReport:
    """Delete what retention allows, in chunks; `conn` must be in autocommit mode.

    Give it a connection of its own (`connect`) when the pipeline may be writing on
    another thread; the store's own connection is only safe from the pipeline's thread.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if conn.in_transaction or conn.isolation_level is not None:
        raise ValueError("purge needs an autocommit connection (isolation_level=None) outside a transaction")
    started = time.monotonic()
    events_cutoff = (now - settings.events.timedelta).astimezone(dt.timezone.utc)
    quarantine_cutoff = (now - settings.quarantine.timedelta).astimezone(dt.timezone.utc)
    chunks = _Chunks(conn, chunk_rows, pause_s, should_stop)

    events_deleted, evidence_kept = _purge_events(conn, chunks, to_db(events_cutoff), segment_rows, keep_sql)
    quarantine_deleted = chunks.run_found(_FIND_QUARANTINE, _DELETE_QUARANTINE, (to_db(quarantine_cutoff),))
    report = PurgeReport(
        events_cutoff=events_cutoff, quarantine_cutoff=quarantine_cutoff,
        events_deleted=events_deleted, quarantine_deleted=quarantine_deleted,
        evidence_kept=evidence_kept, complete=not chunks.stopped,
        seconds=round(time.monotonic() - started, 3),
    )
    _log(report)
    return report


def _purge_events(conn: sqlite3.Connection, chunks: _Chunks, cutoff: str, rows: int,
                  keep_sql: str | None) -> tuple[int, int]:
    """Delete old segments; return (events deleted, old events kept as evidence)."""
    where = "last_ts < ?" + (f" AND {keep_sql}" if keep_sql else "")
    old_events = conn.execute(
        f"SELECT COALESCE(SUM(count), 0) FROM main.event_segments WHERE {where}", (cutoff,)
    ).fetchone()[0]
    chunks.run(_DELETE_SEGMENTS.replace("last_ts < ?", where), (cutoff,), rows=rows)
    left = conn.execute(
        f"SELECT COALESCE(SUM(count), 0) FROM main.event_segments WHERE {where}", (cutoff,)
    ).fetchone()[0]  # not zero only when asked to stop between chunks
    kept = conn.execute("SELECT COUNT(*) FROM main.evidence WHERE ts < ?", (cutoff,)).fetchone()[0] \
        if table_exists(conn, "evidence") else 0
    return old_events - left, kept


class _Chunks:
    """Runs one DELETE ... LIMIT repeatedly, each in its own short write transaction."""

    def __init__(self, conn: sqlite3.Connection, rows: int, pause_s: float,
                 should_stop: Callable[[], bool]) -> None:
        if rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        self.conn, self.rows, self.pause_s, self.should_stop = conn, rows, pause_s, should_stop
        self.stopped = False

    def run(self, sql: str, args: tuple, *, rows: int | None = None) -> int:
        limit = rows or self.rows

        def chunk() -> tuple[int, bool]:
            with immediate(self.conn):  # a chunk never fails half-way on a lock upgrade
                deleted = self.conn.execute(sql, (*args, limit)).rowcount
            return deleted, deleted == limit

        return self._repeat(chunk)

    def run_found(self, find: str, delete: str, args: tuple) -> int:
        """As `run`, for a DELETE no index serves: each chunk's rows are found first by a
        read (no write lock; `find` gives the lowest and highest seq and how many), then
        deleted by that range of seq in a short write transaction."""

        def chunk() -> tuple[int, bool]:
            low, high, found = self.conn.execute(find, (*args, self.rows)).fetchone()
            if not found:
                return 0, False
            with immediate(self.conn):
                deleted = self.conn.execute(delete, (low, high, *args)).rowcount
            return deleted, found == self.rows

        return self._repeat(chunk)

    def _repeat(self, chunk: Callable[[], tuple[int, bool]]) -> int:
        """Chunks (each: rows deleted, whether more may be left) until none is left or
        the daemon stops, pausing between them."""
        total = 0
        while not self.stopped:
            deleted, more = chunk()
            total += deleted
            if not more:
                break
            if self.should_stop():
                self.stopped = True
                break
            time.sleep(self.pause_s)
        return total


def _log(report: PurgeReport) -> None:
    log.info(
        "retention purge",
        extra={
            "events_deleted": report.events_deleted,
            "quarantine_deleted": report.quarantine_deleted,
            "evidence_kept": report.evidence_kept,
            "events_cutoff": report.events_cutoff.isoformat(),
            "quarantine_cutoff": report.quarantine_cutoff.isoformat(),
            "complete": report.complete,
            "seconds": report.seconds,
        },
    )
