"""Ship the store's events, alerts and incidents to Elasticsearch, without loss.

The store's ``event_segments`` table is the disk-backed buffer: the pipeline commits events
there as it always does, and this shipper follows behind on a thread of its own,
with its own SQLite connection (WAL lets it read, and record its position in short
transactions of its own, while the pipeline writes). An outage of the cluster only
makes the lag grow; nothing waits on the cluster but the shipper, and nothing is
dropped: the position moves past a row only once Elasticsearch has answered for it
with "written", "already there" (409 on the row's deterministic id) or a refusal of
the document itself, which goes to the ``elastic_dead_letters`` table and is counted.

Ordering guarantee in Elasticsearch: none needed -- every document carries its own
time and id. Duplicate guarantee: none in one index (create with a deterministic id).
Limit: a data stream's rollover starts a new backing index, and an id is unique per
index only; an attempt whose answer was lost *and* whose retry lands after a rollover
would write a second copy. Retries follow within seconds and rollovers happen about
monthly, and the Elasticsearch source dedupes by ``event.id`` anyway.

Retention must not delete events this shipper has not shipped yet: see
``unshipped_guard_sql``.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from elasticsearch import ApiError, Elasticsearch, TransportError

from auditd.elastic import templates
from auditd.elastic.bulk import BulkSender, GaveUp, Item, Outcome
from auditd.elastic.client import Backoff, is_transient
from auditd.elastic.feeds import (
    ALERTS_KEY,
    EVENTS_KEY,
    AlertFeed,
    EventFeed,
    IncidentFeed,
    Page,
    Position,
    parse_position,
    write_meta,
)
from auditd.elastic.settings import ElasticSettings
from auditd.ops.shipping import (
    ShipperHealth,
    dead_letter_count,
    read_shipper_record,
    write_shipper_record,
)
from auditd.store.sqlite import immediate
from auditd.store.times import to_db

log = logging.getLogger("neo_auditd.elastic")

SIDE_TABLES_EVERY_S = 2.0  # alerts and incidents are few; no need to look at every pass
_KEYS = {"events": EVENTS_KEY, "alerts": ALERTS_KEY}


def unshipped_guard_sql() -> str:
    """A condition retention adds to its event_segments DELETE while shipping is on.

    It keeps every segment from the one being shipped on: they are not shipped yet,
    and keeping that one also keeps ``seq`` numbers from being reused.
    """
    return ("seq < COALESCE((SELECT CAST(substr(value, 1, instr(value, ':') - 1) AS INTEGER)"
            f" FROM main.meta WHERE key = '{EVENTS_KEY}'), 0)")


@dataclass(frozen=True, slots=True)
class ShipperStats:
    """A snapshot for metrics and tests (`status` reads the store: see ops.shipping)."""

    running: bool
    state: str  # ops.shipping.STATES
    lag: int  # events not shipped yet
    events_written: int
    already_present: int  # 409s: sent before, answer lost (or an older incident snapshot)
    dead_letters: int
    requests: int
    bytes_sent: int
    retries: int
    failures: int  # bulk requests that failed whole, and passes that failed before one (templates)
    written_by_target: dict[str, int]
    last_error: str | None
    last_error_at: dt.datetime | None
    last_shipped_at: dt.datetime | None


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class EventShipper:
    """Follows the store and ships it. Constructing it does no I/O; start() does."""

    def __init__(self, es: Elasticsearch, store_path: Path, settings: ElasticSettings, *,
                 agent: str, clock: Callable[[], dt.datetime] = _utc_now,
                 installer: templates.Installer | None = None):
        self.es = es
        self.installer = installer or templates.Installer(es, settings)
        self.store_path = Path(store_path)
        self.settings = settings
        self.ship = settings.ship
        self.agent = agent
        self.clock = clock
        self.events = EventFeed(settings.events_data_stream, agent, clock)
        self.side_feeds: list[AlertFeed | IncidentFeed] = []
        if self.ship.alerts:
            self.side_feeds.append(AlertFeed(settings.alerts_index, agent))
        if self.ship.incidents:
            self.side_feeds.append(IncidentFeed(settings.incidents_index, agent))
        self._abort = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._deadline: float | None = None
        self.health = ShipperHealth(clock)
        self._sender = BulkSender(es, Backoff(self.ship.retry_backoff_initial_s, self.ship.retry_backoff_max_s),
                                  abort=self._abort, give_up=self._give_up, on_failure=self._failed)
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._prefetched: Future[Page | None] | None = None
        self._db_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next_side_at = 0.0
        self._last_lag = 0
        self._pass_failures = 0  # passes that failed outside a bulk request (templates, the store)

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> "EventShipper":
        """Connect to the store (never creating it) and load the positions."""
        if self._conn is None:
            conn = _connect(self.store_path)
            for feed in (self.events, *self.side_feeds):
                feed.load(conn)
            self.health.carry_over(read_shipper_record(conn))
            self._conn = conn
            # Events are read and encoded on a worker thread with a connection of its
            # own, one page ahead, while the previous page is in flight.
            self._reader = _connect(self.store_path)
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="elastic-encode")
        return self

    def start(self) -> None:
        self.open()
        self._abort.clear()
        self._stopping.clear()
        self._deadline = None
        self.health.started()
        self._record_health()
        self._thread = threading.Thread(target=self._run, name="elastic-shipper", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout: float | None = None) -> bool:
        """Ship what is pending for up to drain_timeout seconds, then stop.

        True if nothing was left behind; what is left is shipped after the next start.
        """
        timeout = self.ship.drain_timeout_s if drain_timeout is None else drain_timeout
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            # an in-flight bulk request cannot be interrupted: allow for its timeout
            self._thread.join(timeout + self.settings.request_timeout_s + 5)
            if self._thread.is_alive():
                self._abort.set()
                self._thread.join(5)
            self._thread = None
        drained = self.lag() == 0
        self.health.stopped()
        self._record_health()
        self.close()
        return drained

    def close(self) -> None:
        with self._db_lock:
            if self._worker is not None:
                self._worker.shutdown(wait=True, cancel_futures=True)
                self._worker = None
                self._prefetched = None
            for conn in (self._conn, self._reader):
                if conn is not None:
                    conn.close()
            self._conn = self._reader = None

    def wake(self) -> None:
        """New rows are committed: ship them now rather than at the next poll."""
        self._wake.set()

    # -- figures ---------------------------------------------------------------------------
    def lag(self) -> int:
        """Events in the store not shipped yet (when closed: as last seen)."""
        with self._db_lock:
            if self._conn is not None:
                self._last_lag = self.events.lag(self._conn)
            return self._last_lag

    def stats(self) -> ShipperStats:
        c = self._sender.snapshot()
        health = self.health
        return ShipperStats(
            running=self._thread is not None and self._thread.is_alive(), state=health.state, lag=self.lag(),
            events_written=c.by_target.get(self.events.target, 0), already_present=c.present,
            dead_letters=c.dead, requests=c.requests, bytes_sent=c.bytes_sent, retries=c.retries,
            failures=c.failures + self._pass_failures, written_by_target=dict(c.by_target),
            last_error=health.last_error, last_error_at=health.last_error_at,
            last_shipped_at=health.last_shipped_at,
        )

    # -- the work --------------------------------------------------------------------------
    def ship_pending(self) -> int:
        """Ship until caught up, on the caller's thread (tests, benchmarks, one-shot use)."""
        self.open()
        self.installer.ensure()
        rows = 0
        while True:
            done = self._ship_events_page()
            rows += done
            if not done:
                break
        for feed in self.side_feeds:
            while self._ship_side_page(feed):
                pass
        return rows

    def _run(self) -> None:
        while not self._abort.is_set():
            try:
                worked = self._pass()
            except GaveUp:
                break
            except templates.TemplateRefused as exc:
                # Waiting will not cure it; retry slowly (someone may fix the other
                # template), say so once per reason, and never hold up a drain for it.
                if exc.reason != self.health.last_error:
                    log.error("elastic shipper: %s; events wait in the store", exc)
                self._pass_failed(exc.reason, refused=True)
                if not self._sender.backoff.wait(self._abort, self._give_up):
                    break
                continue
            except (ApiError, TransportError) as exc:  # installing the templates, while the cluster is away
                log.warning("elastic shipper: cluster not ready (%s); retrying", exc)
                self._pass_failed(f"{type(exc).__name__}: {str(exc)[:300]}", refused=not is_transient(exc))
                if not self._sender.backoff.wait(self._abort, self._give_up):
                    break
                continue
            except Exception as exc:  # noqa: BLE001 - a bug or a store error must not end shipping silently
                log.exception("elastic shipper pass failed; retrying")
                self._pass_failed(f"{type(exc).__name__}: {str(exc)[:300]}", refused=False)
                if not self._sender.backoff.wait(self._abort, self._give_up):
                    break
                continue
            self.health.succeeded()
            self._record_health()
            if self._stopping.is_set() and (not worked or self._past_deadline()):
                break
            if not worked:
                self._wake.wait(self.ship.idle_poll_s)
                self._wake.clear()

    def _pass(self) -> bool:
        self.installer.ensure()  # a no-op once done; raises while the cluster is away
        worked = self._ship_events_page() > 0
        now = time.monotonic()
        if now >= self._next_side_at or self._stopping.is_set():
            self._next_side_at = now + SIDE_TABLES_EVERY_S
            for feed in self.side_feeds:
                worked = self._ship_side_page(feed) > 0 or worked
        return worked

    def _ship_events_page(self) -> int:
        page = self._next_events_page()
        if page is None:
            return 0
        self._prefetched = self._submit_read(parse_position(page.position))
        try:
            self._send(self.events, page)
            self._record(self.events, page)
        except BaseException:
            self._prefetched = None  # read past a page that was not recorded
            raise
        return page.rows

    def _next_events_page(self) -> Page | None:
        future, self._prefetched = self._prefetched, None
        page = future.result() if future is not None else None
        if page is None or page.after != self.events.position:
            page = self._submit_read(self.events.position).result()
        return page

    def _submit_read(self, after: Position) -> Future[Page | None]:
        if self._worker is None or self._reader is None:
            raise GaveUp()
        reader, ship = self._reader, self.ship
        return self._worker.submit(self.events.read, reader, ship.bulk_max_docs, ship.bulk_max_bytes, after)

    def _ship_side_page(self, feed: AlertFeed | IncidentFeed) -> int:
        with self._db_lock:
            if self._conn is None:
                raise GaveUp()
            page = feed.read(self._conn, self.ship.bulk_max_docs, self.ship.bulk_max_bytes)
        if page is None:
            return 0
        self._send(feed, page)
        self._record(feed, page)
        return page.rows

    def _send(self, feed: EventFeed | AlertFeed | IncidentFeed, page: Page) -> None:
        if page.items:
            self._sender.send(feed.target, page.items)
            self.health.succeeded(shipped=True)

    def _record(self, feed: EventFeed | AlertFeed | IncidentFeed, page: Page) -> None:
        dead = page.dead + [item for item in page.items if item.outcome is Outcome.DEAD]
        at = to_db(self.clock())
        with self._db_lock:
            conn = self._conn
            if conn is None:
                raise GaveUp()
            with immediate(conn):
                if dead:
                    self._insert_dead(conn, feed, dead, at)
                if isinstance(feed, IncidentFeed):
                    feed.save(conn, page)
                else:
                    write_meta(conn, _KEYS[feed.name], page.position)
                write_shipper_record(conn, self.health.due(force=True))
        feed.recorded(page)
        for item in dead:
            log.error("dead letter: %s %s to %s: %s %s", feed.name, item.doc_id, feed.target,
                      item.status, item.reason[:300])

    @staticmethod
    def _insert_dead(conn: sqlite3.Connection, feed, dead: list[Item], at: str) -> None:
        conn.executemany(
            "INSERT INTO elastic_dead_letters (feed, row_key, doc_id, target, status, reason, document, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(feed.name, item.key, item.doc_id, feed.target, item.status, item.reason, item.source, at)
             for item in dead])

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _give_up(self) -> bool:
        """Past the drain deadline, or draining while the cluster refuses us: no wait will help."""
        return self._past_deadline() or (self._stopping.is_set() and self.health.refused)

    # -- health, where `status` reads it ---------------------------------------------------
    def _failed(self, error: str, refused: bool) -> None:
        self.health.failed(error, refused=refused)
        self._record_health()

    def _pass_failed(self, error: str, *, refused: bool) -> None:
        self._pass_failures += 1
        self._prefetched = None
        self._failed(error, refused)

    def _record_health(self) -> None:
        """Write the state to the store if it changed or the last record is getting old.

        Best effort: status then shows an older record, and nothing else depends on it.
        """
        record = self.health.due()
        if record is None:
            return
        try:
            with self._db_lock:
                if self._conn is None:
                    return
                with immediate(self._conn):
                    write_shipper_record(self._conn, record)
        except sqlite3.Error as exc:
            log.warning("cannot record the shipper's state in the store: %s", exc)


def _connect(path: Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + "?mode=rw"
    return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)


__all__ = ["EventShipper", "ShipperStats", "dead_letter_count", "unshipped_guard_sql"]
