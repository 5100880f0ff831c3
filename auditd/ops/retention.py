"""Retention: delete stored events and quarantined records once they are old enough.

What goes, and what never does:
- events older than `retention.events`, by event time (ts_us);
- quarantine rows older than `retention.quarantine`, by when they were quarantined;
- never incidents, alerts, incident timelines or subjects: they are the breach
  register, and the regulator may ask for them long after the events;
- never an event that an alert cites (its `event_ids`): it is evidence of an incident,
  and "preservation of evidence" is part of every regulator report.

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

from auditd.correlate.schema import iso_utc
from auditd.ops.settings import RetentionSettings
from auditd.ops.status import table_exists

log = logging.getLogger("neo_auditd.retention")

CHUNK_ROWS = 50_000  # measured at ~0.15 s of write lock per chunk on a development machine
PAUSE_S = 0.05  # between chunks: SQLite has no queue, a waiting writer needs a gap to get in

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

_EVIDENCE_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS retention_evidence (event_id TEXT PRIMARY KEY) WITHOUT ROWID
"""
# alerts is a rowid table that is only ever appended to, so rowids past the last seen are new
_ADD_EVIDENCE = """
INSERT OR IGNORE INTO temp.retention_evidence (event_id)
SELECT cited.value FROM main.alerts AS a, json_each(a.doc, '$.event_ids') AS cited
WHERE a.rowid > ? AND a.rowid <= ?
"""
_DELETE_EVENTS = """
DELETE FROM main.events WHERE seq IN (
    SELECT seq FROM main.events
    WHERE ts_us < ? AND event_id NOT IN (SELECT event_id FROM temp.retention_evidence)
    ORDER BY ts_us LIMIT ?)
"""
# `at` is ISO text; julianday() compares it as a time whatever its offset or precision,
# and a value it cannot parse gives NULL, so such a row is kept rather than guessed at.
_DELETE_QUARANTINE = """
DELETE FROM main.quarantine WHERE seq IN (
    SELECT seq FROM main.quarantine WHERE julianday(at) < julianday(?) ORDER BY seq LIMIT ?)
"""


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


def purge_store(store_path: Path, settings: RetentionSettings, *, now: dt.datetime | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> PurgeReport:
    """Open a connection, purge, close: what a scheduled job or a CLI command calls."""
    conn = connect(store_path)
    try:
        return purge(conn, now or dt.datetime.now(dt.timezone.utc), settings, should_stop=should_stop)
    finally:
        conn.close()


def purge(conn: sqlite3.Connection, now: dt.datetime, settings: RetentionSettings, *,
          chunk_rows: int = CHUNK_ROWS, pause_s: float = PAUSE_S,
          should_stop: Callable[[], bool] = lambda: False) -> PurgeReport:
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

    events_deleted, evidence_kept = _purge_events(conn, chunks, _micros(events_cutoff))
    quarantine_deleted = chunks.run(_DELETE_QUARANTINE, (iso_utc(quarantine_cutoff),))
    report = PurgeReport(
        events_cutoff=events_cutoff, quarantine_cutoff=quarantine_cutoff,
        events_deleted=events_deleted, quarantine_deleted=quarantine_deleted,
        evidence_kept=evidence_kept, complete=not chunks.stopped,
        seconds=round(time.monotonic() - started, 3),
    )
    _log(report)
    return report


def _purge_events(conn: sqlite3.Connection, chunks: _Chunks, cutoff_us: int) -> tuple[int, int]:
    conn.execute(_EVIDENCE_TABLE)
    conn.execute("DELETE FROM temp.retention_evidence")
    cites = table_exists(conn, "alerts")
    seen_rowid = 0

    def add_evidence() -> None:
        # The highest rowid first, then everything up to it: an alert committed between
        # the two statements is left for the next call, never skipped.
        nonlocal seen_rowid
        if cites:
            top = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM main.alerts").fetchone()[0]
            conn.execute(_ADD_EVIDENCE, (seen_rowid, top))
            seen_rowid = top

    add_evidence()  # the bulk of it, outside any write transaction: the pipeline is not held up
    # and again inside each chunk's write transaction, where no new alert can commit unseen
    deleted = chunks.run(_DELETE_EVENTS, (cutoff_us,), before=add_evidence)
    kept = conn.execute(
        "SELECT COUNT(*) FROM main.events WHERE ts_us < ?"
        " AND event_id IN (SELECT event_id FROM temp.retention_evidence)", (cutoff_us,)).fetchone()[0]
    conn.execute("DELETE FROM temp.retention_evidence")
    return deleted, kept


class _Chunks:
    """Runs one DELETE ... LIMIT repeatedly, each in its own short write transaction."""

    def __init__(self, conn: sqlite3.Connection, rows: int, pause_s: float,
                 should_stop: Callable[[], bool]) -> None:
        if rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        self.conn, self.rows, self.pause_s, self.should_stop = conn, rows, pause_s, should_stop
        self.stopped = False

    def run(self, sql: str, args: tuple, *, before: Callable[[], None] = lambda: None) -> int:
        total = 0
        while not self.stopped:
            # IMMEDIATE takes the write lock up front (waiting on the busy timeout), so a
            # chunk never fails half-way on a lock upgrade.
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                before()
                deleted = self.conn.execute(sql, (*args, self.rows)).rowcount
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            total += deleted
            if deleted < self.rows:
                break
            if self.should_stop():
                self.stopped = True
                break
            time.sleep(self.pause_s)
        return total


def _micros(ts: dt.datetime) -> int:
    # Same arithmetic as the store's, so the cutoff is exact to the microsecond.
    delta = ts - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


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
