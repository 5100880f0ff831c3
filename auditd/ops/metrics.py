"""Prometheus metrics: what the daemon took in, what it found, and what it still owes.

`Metrics` owns its own CollectorRegistry (no prometheus_client globals), so tests and a
replay in the same process never share counters, and constructing it does no I/O.

Three kinds of figures:
- pushed by the daemon as it works (events, quarantined and skipped records, alerts,
  notices, lag, timings, reload results): process-local counters that start at zero
  with the process, as Prometheus counters should;
- read from the store at scrape time (incidents by tier and status): the store is the truth and survives restarts. They are read through a
  separate read-only SQLite connection, so a scrape never waits for the pipeline's
  write transaction and never holds it up (WAL readers do not block the writer);
- read from live objects at scrape time, once the daemon hands them over: the
  Elasticsearch shipper (its state and counters; its backlog from the store, as
  `status` reads it) and the working-day calendar in force (which years ahead it knows).

Labels carry source names, file paths, rule ids, tiers, statuses and channel kinds,
all from the operator's configuration; never anything from an event (no user or
subject ids), which would put personal data on the page and explode cardinality. The
one exception is the name of an operation a format does not map (a CloudTrail API
name): a name of the logging system's vocabulary, never personal data.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from auditd.ops.shipping import STATES, read_backlog
from auditd.deliver import outbox
from auditd.ops.status import FileLag, connect_readonly, incident_counts, overdue_steps, rule_state, table_exists
from auditd.sources.base import SourceReport
from auditd.sources.guard import REASONS
from auditd.workdays import WorkingCalendar, coverage

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo


class Shipper(Protocol):
    """What the metrics read of the Elasticsearch shipper (``elastic.sink.EventShipper``;
    ops sits above elastic and does not import it): its store and its counters."""

    store_path: Path

    def stats(self) -> Any: ...

log = logging.getLogger("neo_auditd.metrics")

PREFIX = "neo_auditd_"
# A batch is up to 20,000 records: from a millisecond when idle to seconds under load.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METRICS_PATH = "/metrics"


class Metrics:
    """Every metric of one daemon. Construct after the first configuration load succeeded."""

    def __init__(self, store_path: Path | None = None, *, clock: Callable[[], float] = time.time,
                 proc: str = "/proc") -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self._lock = threading.Lock()
        self._last_event: dict[str, float] = {}
        self._lag_keys: set[tuple[str, str]] = set()  # what set_lags put there last time
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._define_pushed(self.registry)
        self.reload_result(True)  # the daemon runs only once a configuration has loaded
        self.registry.register(_Guarded(BootTimeProcessCollector(proc=proc, registry=None), "process"))
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        if store_path is not None:
            self.registry.register(StoreCollector(Path(store_path), clock))

    def _define_pushed(self, r: CollectorRegistry) -> None:
        p = PREFIX
        self._events = Counter(p + "events", "Access events committed to the store.", ["source"], registry=r)
        self._quarantined = Counter(p + "quarantined", "Records that could not be decoded, kept in quarantine.",
                                    ["source"], registry=r)
        self._skipped = Counter(p + "skipped", "Records skipped on purpose (e.g. a csv header).",
                                ["source"], registry=r)
        self._lag = Gauge(p + "lag_bytes", "Bytes of a file not yet committed to the store.",
                          ["source", "path"], registry=r)
        self._last_event_ts = Gauge(p + "last_event_timestamp_seconds",
                                    "Event time of the newest event committed, per source.", ["source"], registry=r)
        self._rule_eval = Histogram(p + "rule_evaluation_seconds", "Time to evaluate all rules over one batch.",
                                    buckets=SECONDS_BUCKETS, registry=r)
        self._commit = Histogram(p + "batch_commit_seconds", "Time to commit one batch's store transaction.",
                                 buckets=SECONDS_BUCKETS, registry=r)
        self._alerts = Counter(p + "alerts", "Alerts raised, per rule id.", ["rule"], registry=r)
        self._source_files = Gauge(p + "source_files", "Files a source's globs match and it reads.",
                                   ["source"], registry=r)
        self._globs_unmatched = Gauge(p + "source_globs_unmatched", "Globs of a source that match no file.",
                                      ["source"], registry=r)
        self._files_refused = Gauge(p + "source_files_refused",
                                    "Files a source's globs match but it refuses to read, by reason "
                                    "(fifo, symlink_outside, daemon_file, ...).", ["source", "reason"], registry=r)
        self._unmapped = Counter(p + "unmapped_actions",
                                 "Events whose operation the format does not map, stored as action 'other', "
                                 "by operation name.", ["source", "name"], registry=r)
        self._reload_ok = Gauge(p + "reload_success", "1 if the last configuration load or reload was applied.",
                                registry=r)
        self._reload_ts = Gauge(p + "reload_timestamp_seconds",
                                "When the last configuration load or reload was attempted.", registry=r)
        self._holding_back = Gauge(p + "holding_back", "1 while the daemon does not read because storage cannot "
                                   "be written (full disk, read-only file system, the store's max_bytes).",
                                   registry=r)
        self._holding_back_since = Gauge(p + "holding_back_since_timestamp_seconds",
                                         "When the current holding back began; 0 when reading.", registry=r)
        self._storage_retries = Counter(p + "storage_retries", "Writes retried while holding back.", registry=r)
        self._holding = False

    # -- what the daemon pushes ----------------------------------------------------------
    def declare_sources(self, sources: Iterable[str]) -> None:
        """Show configured sources at 0 before their first batch, so a silent one is visible."""
        for source in sources:
            for counter in (self._events, self._quarantined, self._skipped):
                counter.labels(source)

    def observe_batch(self, source: str, *, events: int, quarantined: int, skipped: int,
                      alerts_by_rule: Mapping[str, int], eval_seconds: float, commit_seconds: float,
                      last_event_ts: dt.datetime | None) -> None:
        """Count one committed batch. Call after its transaction committed, never before."""
        if last_event_ts is not None and last_event_ts.tzinfo is None:
            raise ValueError("last_event_ts must be timezone-aware")  # before counting anything
        self._events.labels(source).inc(events)
        self._quarantined.labels(source).inc(quarantined)
        self._skipped.labels(source).inc(skipped)
        for rule_id, count in alerts_by_rule.items():
            if count:
                self._alerts.labels(rule_id).inc(count)
        self._rule_eval.observe(eval_seconds)
        self._commit.observe(commit_seconds)
        if last_event_ts is not None:
            self._advance_last_event(source, last_event_ts.timestamp())

    def observe_source_report(self, source: str, report: SourceReport) -> None:
        """A source's scan: files read, globs matching nothing, files refused by reason."""
        self._source_files.labels(source).set(report.files)
        self._globs_unmatched.labels(source).set(len(report.unmatched))
        by_reason = {reason: 0 for reason in REASONS}
        for _path, reason, _detail in report.refused:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        for reason, count in by_reason.items():
            self._files_refused.labels(source, reason).set(count)

    def unmapped_actions(self, source: str, counts: Mapping[str, int]) -> None:
        """Events mapped to `other`, per operation name (an API name: never personal data,
        and as many as the operations of the logging system)."""
        for name, count in counts.items():
            self._unmapped.labels(source, name).inc(count)

    def _advance_last_event(self, source: str, ts: float) -> None:
        # Batches can arrive out of event-time order (two files of one source): keep the newest.
        with self._lock:
            if ts > self._last_event.get(source, float("-inf")):
                self._last_event[source] = ts
                self._last_event_ts.labels(source).set(ts)

    def set_lag(self, source: str, path: str, lag_bytes: int) -> None:
        self._lag.labels(source, path).set(lag_bytes)

    def set_lags(self, lags: Iterable[FileLag]) -> None:
        """Replace every lag series with these (e.g. `status.file_lags(conn)`); drop the rest."""
        fresh = {(lag.source, lag.path): lag.lag_bytes for lag in lags}
        with self._lock:
            for key in self._lag_keys - fresh.keys():
                self.forget_lag(*key)
            for (source, path), lag_bytes in fresh.items():
                self.set_lag(source, path, lag_bytes)
            self._lag_keys = set(fresh)

    def forget_lag(self, source: str, path: str) -> None:
        """Drop a file's lag series (the file is gone or no longer tailed)."""
        with contextlib.suppress(KeyError):  # never set, or already dropped
            self._lag.remove(source, path)

    def holding_back(self, holding: bool, *, retried: bool = False) -> None:
        if holding != self._holding:
            self._holding = holding
            self._holding_back_since.set(self._clock() if holding else 0)
        self._holding_back.set(1 if holding else 0)
        if retried:
            self._storage_retries.inc()

    def reload_result(self, ok: bool) -> None:
        self._reload_ok.set(1 if ok else 0)
        self._reload_ts.set(self._clock())

    # -- what is read at scrape time from live objects -------------------------------------
    def watch_shipper(self, shipper: Shipper) -> None:
        """Add the Elasticsearch shipper's state, backlog and counters to every scrape."""
        self.registry.register(_Guarded(ShipperCollector(shipper), "elastic shipper"))

    def watch_cluster_rules(self, costs: Callable[[], list[Any]]) -> None:
        """Add per `scope: cluster` rule its query time, lag, overruns and late events;
        `costs` gives the evaluator's RuleCost records (empty when it is not running)."""
        self.registry.register(_Guarded(ClusterRuleCollector(costs), "cluster rules"))

    def watch_calendar(self, calendar: Callable[[], WorkingCalendar], zone: ZoneInfo) -> None:
        """Add per year ahead whether the working-day calendar knows it; `calendar` gives
        the one in force (a reload may replace it)."""
        self.registry.register(_Guarded(CalendarCollector(calendar, zone, self._clock), "working days"))

    def watch_rules(self, stats: Callable[[], Any]) -> None:
        """Add per rule its matches, its stateful detector's time and its condition's
        estimated time; `stats` gives the rule set in force's `RuleStats` (a reload
        starts them again, which Prometheus reads as a counter reset)."""
        self.registry.register(_Guarded(RuleCostCollector(stats), "rule costs"))

    def watch_deliver_process(self, record: Callable[[], dict[str, Any] | None]) -> None:
        """Add the deliver process's state and restart count; `record` gives its
        supervisor's record, or None when there is no deliver process."""
        self.registry.register(_Guarded(DeliverProcessCollector(record), "deliver process"))

    # -- the HTTP endpoint ---------------------------------------------------------------
    def start_http(self, listen: str, port: int) -> int:
        """Serve /metrics on listen:port from a daemon thread; return the bound port (for port 0)."""
        if self._server is not None:
            raise RuntimeError("the metrics endpoint is already running")
        server = make_server(listen, port, _only_metrics_path(make_wsgi_app(self.registry)),
                             server_class=_server_class(listen), handler_class=_QuietHandler)
        # poll_interval bounds how long stop() waits; four idle wake-ups a second cost nothing
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25},
                                  name="metrics-http", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        log.info("metrics endpoint listening", extra={"listen": listen, "port": server.server_port})
        return server.server_port

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)


# -- collectors ------------------------------------------------------------------------------
class StoreCollector(Collector):
    """Incidents, rule state and overdue playbook steps, read from the store at each scrape."""

    def __init__(self, store_path: Path, clock: Callable[[], float]) -> None:
        self._store_path = store_path
        self._clock = clock
        self._failing = False

    def collect(self) -> Iterator[Metric]:
        now = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)
        success = GaugeMetricFamily(PREFIX + "store_scrape_success",
                                    "1 if the store-backed metrics could be read at this scrape.")
        try:
            counts, states, overdue, delivery = self._read(now)
        except sqlite3.Error as exc:
            # Absent series look like "all clear" to many alerts: say plainly that we could not read.
            if not self._failing:
                log.warning("metrics cannot read the store", extra={"error": str(exc)})
            self._failing = True
            success.add_metric([], 0)
            yield success
            return
        self._failing = False
        incidents = GaugeMetricFamily(PREFIX + "incidents", "Incidents in the store, by tier and status.",
                                      labels=["tier", "status"])
        for tier, status, count in counts:
            incidents.add_metric([tier, status], count)
        yield incidents
        if overdue is not None:  # None: the steps could not be counted (logged)
            yield GaugeMetricFamily(PREFIX + "playbook_steps_overdue",
                                    "Playbook steps open past their due time.", value=overdue)
        keys = GaugeMetricFamily(PREFIX + "rule_state_keys", "Keys a stateful rule holds in its state.",
                                 labels=["rule", "state_version"])
        evicted = CounterMetricFamily(PREFIX + "rule_state_evicted", "Keys a stateful rule evicted over its cap "
                                      "(each a detection silently missed).", labels=["rule", "state_version"])
        unreadable = CounterMetricFamily(PREFIX + "rule_state_unreadable", "Unreadable state rows found and "
                                         "rebuilt.", labels=["rule", "state_version"])
        for state in states:
            labels = [state.rule_id, state.rule_hash]
            keys.add_metric(labels, state.keys)
            evicted.add_metric(labels, state.evicted)
            unreadable.add_metric(labels, state.bad_rows)
        yield keys
        yield evicted
        yield unreadable
        if delivery is not None:
            yield from _delivery_metrics(*delivery)
        success.add_metric([], 1)
        yield success

    def _read(self, now: dt.datetime) -> tuple[list[tuple[str, str, int]], list, int | None, tuple | None]:
        # A fresh connection per scrape: scrapes are rare, and it never pins an old snapshot.
        conn = connect_readonly(self._store_path, timeout_s=1.0)
        try:
            delivery = None
            if table_exists(conn, "outbox"):
                delivery = (outbox.attempt_counts(conn), outbox.counts(conn), outbox.oldest_open(conn))
            return incident_counts(conn), rule_state(conn), overdue_steps(conn, now), delivery
        finally:
            conn.close()


def _delivery_metrics(attempts: dict, counts: dict, oldest: dt.datetime | None) -> Iterator[Metric]:
    """The outbox, from the store: attempts by outcome (a counter that survives restarts,
    as the attempts table does), messages by state, the backlog and the failed."""
    notices = CounterMetricFamily(PREFIX + "notices", "Delivery attempts, per channel kind and outcome (delivered, "
                                  "retry, failed, interrupted: in flight at a crash, suppressed, fleet).",
                                  labels=["channel", "outcome"])
    for (channel, outcome), n in sorted(attempts.items()):
        notices.add_metric([channel, outcome], n)
    yield notices
    messages = GaugeMetricFamily(PREFIX + "outbox_messages", "Outbox messages, per channel kind and state.",
                                 labels=["channel", "state"])
    for (channel, state), n in sorted(counts.items()):
        messages.add_metric([channel, state], n)
    yield messages
    yield GaugeMetricFamily(PREFIX + "outbox_backlog", "Messages not delivered yet (held, pending, sending).",
                            value=sum(n for (_, state), n in counts.items() if state in outbox.OPEN_STATES))
    yield GaugeMetricFamily(PREFIX + "outbox_failed", "Messages that failed after their retry budget (escalated; "
                            "`neo-auditd outbox retry`).",
                            value=sum(n for (_, state), n in counts.items() if state == "failed"))
    if oldest is not None:
        yield GaugeMetricFamily(PREFIX + "outbox_oldest_waiting_timestamp_seconds",
                                "When the oldest message still waiting was queued (absent when none).",
                                value=oldest.timestamp())


class ShipperCollector(Collector):
    """The shipper's state and counters from the object, its backlog from the store.

    The backlog is read exactly as `status` reads it (the recorded cursor against the
    segments), through a read-only connection of its own.
    """

    def __init__(self, shipper: Shipper) -> None:
        self._shipper = shipper

    def collect(self) -> Iterator[Metric]:
        p, stats = PREFIX + "elastic_", self._shipper.stats()
        state = GaugeMetricFamily(p + "shipper_state", "1 for the shipper's current state.", labels=["state"])
        for name in STATES:
            state.add_metric([name], 1 if stats.state == name else 0)
        yield state
        conn = connect_readonly(self._shipper.store_path, timeout_s=1.0)
        try:
            backlog = read_backlog(conn)
        finally:
            conn.close()
        yield GaugeMetricFamily(p + "backlog_events", "Events in the store not shipped yet.", value=backlog.events)
        yield GaugeMetricFamily(p + "backlog_bytes", "Stored bytes of the events not shipped yet.",
                                value=backlog.bytes)
        if backlog.oldest_event_at is not None:
            yield GaugeMetricFamily(p + "oldest_unshipped_event_timestamp_seconds",
                                    "Event time of the oldest event not shipped yet (absent when none).",
                                    value=backlog.oldest_event_at.timestamp())
        for name, help_text, value in (
                ("last_error_timestamp_seconds", "When the shipper last failed (absent if never).",
                 stats.last_error_at),
                ("last_shipped_timestamp_seconds", "When Elasticsearch last took a bulk request in full.",
                 stats.last_shipped_at)):
            if value is not None:
                yield GaugeMetricFamily(p + name, help_text, value=value.timestamp())
        written = CounterMetricFamily(p + "documents_written", "Documents Elasticsearch created, per target.",
                                      labels=["target"])
        for target, count in sorted(stats.written_by_target.items()):
            written.add_metric([target], count)
        yield written
        for name, help_text, value in (
                ("documents_present", "Documents already there (409): an earlier attempt's answer was lost.",
                 stats.already_present),
                ("dead_letters", "Documents Elasticsearch refused for what they are, kept in the store.",
                 stats.dead_letters),
                ("requests", "Bulk requests sent.", stats.requests),
                ("request_failures", "Bulk requests and passes that failed as a whole.", stats.failures),
                ("retries", "Documents sent again.", stats.retries),
                ("sent_bytes", "Bytes of bulk bodies sent.", stats.bytes_sent)):
            yield CounterMetricFamily(p + name, help_text, value=value)


class CalendarCollector(Collector):
    """Per year from today to 12 months on, and per year the fallback has answered:
    1 if the override file or chinese-calendar knows it, 0 if only the fallback does."""

    def __init__(self, calendar: Callable[[], WorkingCalendar], zone: ZoneInfo, clock: Callable[[], float]) -> None:
        self._calendar = calendar
        self._zone = zone
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        calendar = self._calendar()
        today = dt.datetime.fromtimestamp(self._clock(), self._zone).date()
        family = GaugeMetricFamily(PREFIX + "working_days_year_covered",
                                   "1 if a source knows the year's working days; 0: every day counts as one "
                                   "(deadlines early, never late) until the year is added to the override file.",
                                   labels=["year", "source"])
        for year in coverage(calendar, today, extra_years=calendar.fallback_years):
            family.add_metric([str(year.year), year.source or "none"], 1 if year.source else 0)
        yield family


class BootTimeProcessCollector(ProcessCollector):
    """prometheus_client's process metrics, working under systemd's ProcSubset=pid.

    The stock collector reads the boot time from /proc/stat, which ProcSubset=pid hides;
    it then silently reports nothing at all. The boot time is also what CLOCK_BOOTTIME
    counts from, so it is derived from the clocks instead. The per-process files it
    reads at scrape time (/proc/self/stat, limits, fd) stay visible under ProcSubset=pid.
    """

    def _boot_time(self) -> float:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class ClusterRuleCollector(Collector):
    """The cluster rules this daemon evaluates, from the running evaluator."""

    def __init__(self, costs: Callable[[], list[Any]]) -> None:
        self._costs = costs

    def collect(self) -> Iterator[Metric]:
        p = PREFIX + "cluster_rule_"
        families = {
            "held": GaugeMetricFamily(p + "held", "1 if this daemon holds the rule's lease.", labels=["rule"]),
            "query": GaugeMetricFamily(p + "query_seconds", "Seconds the last round's searches took.", labels=["rule"]),
            "round": GaugeMetricFamily(p + "round_seconds", "Seconds the last round took.", labels=["rule"]),
            "lag": GaugeMetricFamily(p + "lag_seconds", "Newest event of the stream minus the last event evaluated.",
                                     labels=["rule"]),
            "late": GaugeMetricFamily(p + "late_events", "Events that reached the cluster after the rule had passed "
                                      "their time: not evaluated (replay them).", labels=["rule"]),
            "overruns": CounterMetricFamily(p + "overruns", "Rounds longer than evaluate_every.", labels=["rule"]),
            "events": CounterMetricFamily(p + "events", "Events evaluated by this daemon.", labels=["rule"]),
            "alerts": CounterMetricFamily(p + "alerts", "Cluster alerts created by this daemon.", labels=["rule"]),
            "suppressed": CounterMetricFamily(p + "suppressed", "Cluster alerts held back by a runtime suppression "
                                              "of this daemon's store.", labels=["rule"]),
        }
        for cost in self._costs():
            labels = [cost.rule_id]
            families["held"].add_metric(labels, 1 if cost.held else 0)
            if not cost.held:
                continue
            families["query"].add_metric(labels, cost.query_seconds)
            families["round"].add_metric(labels, cost.round_seconds)
            if cost.lag_seconds is not None:
                families["lag"].add_metric(labels, cost.lag_seconds)
            families["late"].add_metric(labels, cost.late_events)
            families["overruns"].add_metric(labels, cost.overruns)
            families["events"].add_metric(labels, cost.events)
            families["alerts"].add_metric(labels, cost.alerts)
            families["suppressed"].add_metric(labels, cost.suppressed)
        yield from families.values()


class RuleCostCollector(Collector):
    """What each rule costs, from the live counters of the rule set in force: which rule
    to look at first when the pipeline falls behind."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        p = PREFIX + "rule_"
        matches = CounterMetricFamily(p + "matches", "Events whose rule condition held (before exceptions).",
                                      labels=["rule"])
        detector = CounterMetricFamily(p + "detector_seconds", "Seconds in a stateful rule's detector (its "
                                       "chunk work: state read, windows, profiles), measured whole.", labels=["rule"])
        condition = CounterMetricFamily(p + "condition_seconds", "Seconds in the rule's condition, estimated from "
                                        "one event in 64; in this process only (with workers the conditions run "
                                        "there).", labels=["rule"])
        for rule_id, counters in self._stats().snapshot().items():
            matches.add_metric([rule_id], counters.matches)
            if counters.detector_seconds:
                detector.add_metric([rule_id], counters.detector_seconds)
            if counters.timed:
                condition.add_metric([rule_id], counters.seconds)
        yield matches
        yield detector
        yield condition


class DeliverProcessCollector(Collector):
    """The deliver process's state and restarts, from its supervisor's record (a plain
    dict: ``state`` running / restarting / stopped, ``restarts``); nothing while the
    deliver stage is off."""

    STATES = ("running", "restarting", "stopped")

    def __init__(self, record: Callable[[], dict[str, Any] | None]) -> None:
        self._record = record

    def collect(self) -> Iterator[Metric]:
        record = self._record()
        if not record:
            return
        state = GaugeMetricFamily(PREFIX + "deliver_process_state", "1 for the deliver process's state: running, "
                                  "restarting (it died; started again after a backoff) or stopped.",
                                  labels=["state"])
        for name in self.STATES:
            state.add_metric([name], 1 if record.get("state") == name else 0)
        yield state
        yield CounterMetricFamily(PREFIX + "deliver_process_restarts", "Times the deliver process died and was "
                                  "started again since the daemon started (each logged as an error).",
                                  value=int(record.get("restarts", 0)))


class _Guarded(Collector):
    """A collector whose failure drops its own series, not the whole scrape."""

    def __init__(self, inner: Collector, name: str) -> None:
        self._inner = inner
        self._name = name
        self._warned = False

    def collect(self) -> list[Metric]:
        try:
            return list(self._inner.collect())
        except Exception:  # noqa: BLE001 - any failure here must not turn /metrics into a 500
            if not self._warned:
                self._warned = True
                log.warning("the %s collector failed; its metrics are left out", self._name, exc_info=True)
            return []


# -- HTTP plumbing -------------------------------------------------------------------------
class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would drown the journal."""


def _server_class(listen: str) -> type[WSGIServer]:
    class _ThreadingServer(ThreadingMixIn, WSGIServer):
        address_family = socket.AF_INET6 if ":" in listen else socket.AF_INET
        daemon_threads = True  # a stuck scraper must not keep the daemon from exiting

    return _ThreadingServer


def _only_metrics_path(app: Callable) -> Callable:
    def route(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in (METRICS_PATH, METRICS_PATH + "/"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found; metrics are at {METRICS_PATH}\n".encode()]

    return route
