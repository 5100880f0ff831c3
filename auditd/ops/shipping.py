"""How far the shipper has got and how it fares, as any process can read it from the store.

`neo-auditd status` is a process of its own: it sees the daemon's shipper only through
the store. Everything it shows is derived from there:

- the backlog: the segments after the shipping cursor (``meta``), counted in events and
  stored bytes, with the event time of the oldest one (at or before the oldest
  unshipped event: a half-shipped segment counts from its first event);
- the dead letters: rows of ``elastic_dead_letters``;
- the shipper's state and last error: a record the running shipper writes to ``meta``
  with every cursor move, when its state or error changes, and every
  ``RECORD_EVERY_S`` besides, so a record older than ``STALE_AFTER_S`` means the
  shipper is not running (or is hung).

The metrics endpoint reads the backlog with the same functions, so `status` and the
Prometheus page never disagree. The record's format and the cursor's meta key live
here, in ops, because status and metrics may not import `elastic` (it sits below them
on the map in docs/architecture.md); the shipper imports them from here. Nothing here
imports the Elasticsearch client, so `status` starts quickly.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
from collections.abc import Callable

import msgspec

from auditd.store.times import from_db

log = logging.getLogger("neo_auditd.status")

EVENTS_KEY = "elastic.shipped_seq"  # the events cursor: "<segment seq>:<events of it shipped>"
SHIPPER_KEY = "elastic.shipper"  # the running shipper's ShipperRecord, JSON
DEAD_LETTER_TABLE = "elastic_dead_letters"
RECORD_EVERY_S = 30.0
# A bulk request may hang for request_timeout_s (30 s by default) and a retry wait for up
# to retry_backoff_max_s (60 s): a record older than both plus the heartbeat is stale.
STALE_AFTER_S = 180.0
MAX_ERROR_CHARS = 500

# running: shipping or caught up; retrying: the cluster is away or busy (a wait cures
# it); refused: the cluster refuses what the config asks (an index-template conflict,
# a missing privilege) and will go on refusing until someone acts; stopped: shut down.
RUNNING, RETRYING, REFUSED, STOPPED = "running", "retrying", "refused", "stopped"
STATES = (RUNNING, RETRYING, REFUSED, STOPPED)

Position = tuple[int, int]  # (event segment seq, events of it shipped)


def parse_position(text: str | None) -> Position:
    if not text:
        return (0, 0)
    seq, _, done = text.partition(":")
    return (int(seq), int(done or 0))


def format_position(position: Position) -> str:
    return f"{position[0]}:{position[1]}"


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    if not _table_exists(conn, "meta"):
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


# -- the backlog -----------------------------------------------------------------------------
class Backlog(msgspec.Struct, frozen=True, kw_only=True):
    events: int  # events in the store not shipped yet
    bytes: int  # their stored size (msgpack, as kept in event_segments)
    oldest_event_at: dt.datetime | None  # event time, UTC; None when nothing is pending


def read_backlog(conn: sqlite3.Connection) -> Backlog:
    """What the recorded cursor has not passed yet (an empty store: nothing)."""
    if not _table_exists(conn, "event_segments"):
        return Backlog(events=0, bytes=0, oldest_event_at=None)
    seq, done = parse_position(_meta(conn, EVENTS_KEY))
    # the cursor's own segment counts for its unshipped share; later ones whole
    events, size, oldest = conn.execute(
        "SELECT COALESCE(SUM(CASE WHEN seq = :seq THEN count - :done ELSE count END), 0),"
        " COALESCE(SUM(CASE WHEN seq = :seq THEN length(doc) * (count - :done) / count ELSE length(doc) END), 0),"
        " MIN(first_ts)"
        " FROM event_segments WHERE seq > :seq OR (seq = :seq AND count > :done)",
        {"seq": seq, "done": done}).fetchone()
    return Backlog(events=int(events), bytes=int(size), oldest_event_at=from_db(oldest) if oldest else None)


def dead_letter_count(conn: sqlite3.Connection) -> int:
    """Rows in the dead-letter table (0 before the shipper first ran)."""
    if not _table_exists(conn, DEAD_LETTER_TABLE):
        return 0
    return int(conn.execute(f"SELECT COUNT(*) FROM {DEAD_LETTER_TABLE}").fetchone()[0])


# -- the shipper's record ----------------------------------------------------------------------
class ShipperRecord(msgspec.Struct, frozen=True, kw_only=True):
    state: str  # one of STATES
    since: dt.datetime  # when it entered this state
    recorded_at: dt.datetime
    last_error: str | None = None
    last_error_at: dt.datetime | None = None
    last_shipped_at: dt.datetime | None = None  # the last bulk request that Elasticsearch answered in full


def write_shipper_record(conn: sqlite3.Connection, record: ShipperRecord) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (SHIPPER_KEY, msgspec.json.encode(record).decode()))


def read_shipper_record(conn: sqlite3.Connection) -> ShipperRecord | None:
    text = _meta(conn, SHIPPER_KEY)
    if text is None:
        return None
    try:
        return msgspec.json.decode(text, type=ShipperRecord)
    except msgspec.ValidationError as exc:
        log.warning("ignoring a malformed shipper record", extra={"error": str(exc)})
        return None


class ShipperHealth:
    """The shipper's state and last error, kept as it works (any thread), and when the
    store should hear of it: at every change, and every RECORD_EVERY_S besides."""

    def __init__(self, clock: Callable[[], dt.datetime]):
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self.state = STOPPED
        self.since = now
        self.last_error: str | None = None
        self.last_error_at: dt.datetime | None = None
        self.last_shipped_at: dt.datetime | None = None
        self._dirty = True
        self._recorded_at: dt.datetime | None = None

    def carry_over(self, previous: ShipperRecord | None) -> None:
        """Keep what the last run recorded (its last error, its last shipment) for `status`."""
        if previous is None:
            return
        with self._lock:
            self.last_error, self.last_error_at = previous.last_error, previous.last_error_at
            self.last_shipped_at = previous.last_shipped_at

    def _enter(self, state: str) -> None:
        if state != self.state:
            self.state, self.since, self._dirty = state, self._clock(), True

    def started(self) -> None:
        with self._lock:
            self._enter(RUNNING)

    def stopped(self) -> None:
        with self._lock:
            self._enter(STOPPED)

    def succeeded(self, *, shipped: bool = False) -> None:
        with self._lock:
            if shipped:
                self.last_shipped_at = self._clock()
            self._enter(RUNNING)

    def failed(self, error: str, *, refused: bool) -> None:
        with self._lock:
            error = error[:MAX_ERROR_CHARS]
            if error != self.last_error:
                self._dirty = True
            self.last_error, self.last_error_at = error, self._clock()
            self._enter(REFUSED if refused else RETRYING)

    @property
    def refused(self) -> bool:
        return self.state == REFUSED

    def due(self, *, force: bool = False) -> ShipperRecord | None:
        """The record to write now, or None if the stored one is recent and still true.

        `force`: write it anyway (it rides along with a cursor move, at no extra cost).
        """
        with self._lock:
            now = self._clock()
            stale = self._recorded_at is None or (now - self._recorded_at).total_seconds() >= RECORD_EVERY_S
            if not (self._dirty or stale or force):
                return None
            self._dirty, self._recorded_at = False, now
            return ShipperRecord(state=self.state, since=self.since, recorded_at=now, last_error=self.last_error,
                                 last_error_at=self.last_error_at, last_shipped_at=self.last_shipped_at)


# -- what `status` shows ---------------------------------------------------------------------
class ElasticStatus(msgspec.Struct, frozen=True, kw_only=True):
    data_stream: str | None  # where events go (None: not in the config given)
    shipping: bool  # the config ships events
    state: str  # a STATES value, "not started" (no record yet) or "unknown" (record stale)
    backlog: Backlog
    dead_letters: int
    record: ShipperRecord | None  # what the shipper last wrote


def collect_elastic_status(conn: sqlite3.Connection, now: dt.datetime, *, data_stream: str | None,
                           shipping: bool) -> ElasticStatus | None:
    """None when shipping is neither configured nor ever recorded in this store."""
    record = read_shipper_record(conn)
    if not shipping and record is None and _meta(conn, EVENTS_KEY) is None:
        return None
    if record is None:
        state = "not started"
    elif record.state != STOPPED and (now - record.recorded_at).total_seconds() > STALE_AFTER_S:
        state = "unknown"  # the daemon was killed, or its shipper hangs
    else:
        state = record.state
    return ElasticStatus(data_stream=data_stream, shipping=shipping, state=state, backlog=read_backlog(conn),
                         dead_letters=dead_letter_count(conn), record=record)
