"""The daemon: sources → pipeline, with signals, reload and a clean drain on SIGTERM.

This module and the CLI are the only places where the stages meet.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import signal
import threading
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from auditd import __version__
from auditd.detect.kinds import KINDS, RuleKind
from auditd.directory import DirectoryWatcher, load_directory
from auditd.errors import ConfigError
from auditd.jobs import JobContext, JobRunner, job_specs
from auditd.ops.memory import keep_buffers_in_heap
from auditd.ops.metrics import Metrics
from auditd.ops.sdnotify import Notifier
from auditd.ops.sentry import init_sentry
from auditd.ops.status import file_lags, record_reload
from auditd.pipeline import Pipeline
from auditd.runtime import Runtime, load_runtime
from auditd.sources.tail import FileTailer, ReplaySource
from auditd.store.quarantine_file import QuarantineFile
from auditd.store import health
from auditd.store.health import CheckReport
from auditd.store.sqlite import Store

LAG_EVERY_S = 5.0
REPLAY_DRAIN_S = 3600.0  # a replay waits for its events to reach the cluster

log = logging.getLogger("neo_auditd.service")


def open_store(runtime: Runtime, state_dir: Path | None = None, *, new_store: bool = False,
               on_damage: Callable[[CheckReport], None] | None = None) -> tuple[Store, QuarantineFile]:
    """Open the store after making sure it is the one kept here and whole (see
    store/health.py); raises StoreDamaged (exit 65) when it is not."""
    settings = runtime.settings
    db_path = (state_dir / "neo-auditd.db") if state_dir else settings.store_path
    q_path = (state_dir / "quarantine.jsonl") if state_dir else settings.quarantine_path
    health.preflight(db_path, new_store=new_store)
    store = Store(db_path, synchronous=settings.store.synchronous, keep_events=settings.store.keep_events)
    store.open(background_checkpoints=True)
    try:
        health.stamp(store.conn, db_path, new_store=new_store)
        _check_store(store, settings.store.startup_check_max_bytes, on_damage)
    except BaseException:
        store.close()
        raise
    quarantine = QuarantineFile(q_path, store)
    quarantine.catch_up()
    return store, quarantine


class _DamageRelay:
    """Hands a background check's finding of damage to the daemon, once it exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: Callable[[CheckReport], None] | None = None
        self._pending: CheckReport | None = None

    def __call__(self, report: CheckReport) -> None:
        with self._lock:
            if self._target is None:
                self._pending = report
                return
            target = self._target
        target(report)

    def connect(self, target: Callable[[CheckReport], None]) -> None:
        with self._lock:
            self._target, pending = target, self._pending
        if pending is not None:
            target(pending)


def _check_store(store: Store, inline_max_bytes: int, on_damage: Callable[[CheckReport], None] | None) -> None:
    size = store.path.stat().st_size
    if size <= inline_max_bytes or on_damage is None:
        report = health.check(store.conn)
        health.record_check(store.conn, report)
        if not report.ok:
            raise health.StoreDamaged(f"{store.path} is damaged ({'; '.join(report.problems[:3])}): "
                                      f"{health.RESTORE_HINT}")
        return
    log.info("store checked in the background", extra={"file.path": str(store.path), "bytes": size})
    health.BackgroundCheck(store.path, on_damage=on_damage).start()


class Daemon:
    """`neo-auditd run`: tail every configured source until SIGTERM."""

    def __init__(self, config_path: Path, runtime: Runtime, store: Store, quarantine: QuarantineFile,
                 *, notifier: Notifier | None = None, metrics: Metrics | None = None,
                 on_batch: Callable[[Pipeline], None] | None = None, cluster: "Cluster | None" = None,
                 kinds: Mapping[str, RuleKind] = KINDS):
        self.config_path = config_path
        self.kinds = kinds  # the rule kinds a reload builds with
        self.pipeline = Pipeline(runtime, store, quarantine, metrics)
        self.store = store
        self.notifier = notifier
        self.metrics = metrics
        self.cluster = cluster
        self._last_lag = 0.0
        self.directory_watcher = self._watch_directory(runtime)
        self.on_batch = on_batch
        self.exit_code = 0
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._tick = threading.Event()
        self._wake = threading.Event()
        self.jobs: JobRunner | None = None  # reschedules its jobs when a reload changes an interval
        self.tailers: dict[str, FileTailer] = {}
        self.last_reload_ok: bool | None = None
        self.last_reload_error: str | None = None
        self._last_ping = 0.0
        interval = notifier.watchdog_interval() if notifier else None
        # ping at half the watchdog interval, also while catching up a backlog
        self._ping_every = interval.total_seconds() / 2 if interval else None

    # -- signals -----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def request_stop(self, exit_code: int = 0) -> None:
        self.exit_code = max(self.exit_code, exit_code)
        self._stop.set()
        self._wake.set()

    def store_damaged(self, report: CheckReport) -> None:
        """From the background store check: stop; systemd does not restart on 65."""
        self.request_stop(health.EX_DATAERR)

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def request_tick(self) -> None:
        """From the scheduler's thread: run the rules' time hooks on the pipeline's."""
        self._tick.set()
        self._wake.set()

    def job_context(self) -> JobContext:
        cluster = self.cluster
        return JobContext(
            store_path=self.store.path, runtime=lambda: self.pipeline.runtime,
            directory=lambda: _current_directory(self), should_stop=self._stop.is_set,
            request_tick=self.request_tick,
            retention_guard=cluster.retention_guard if cluster is not None else (lambda: None),
            fleet=cluster.deliver_fleet if cluster is not None else (lambda: None),
        )

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> int:
        first_start = not self.store.has_any_checkpoint()
        self._start_tailers(self.pipeline.runtime, first_start)
        if self.notifier:
            self.notifier.ready()
        log.info("started", extra={"sources": list(self.tailers)})
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._do_reload()
                if self._tick.is_set():
                    self._tick.clear()
                    self.pipeline.tick(dt.datetime.now(dt.timezone.utc))
                if not self._pump():
                    self._idle()
                self._keepalive()
            self._pump()  # drain what is already readable, then stop with it checkpointed
        finally:
            for tailer in self.tailers.values():
                tailer.stop()
            if self.notifier:
                self.notifier.stopping()
        log.info("stopped", extra={"events": self.pipeline.totals.events, "exit_code": self.exit_code})
        return self.exit_code

    def _pump(self) -> bool:
        """Process one round of every source; True if anything was read."""
        batch_records = self.pipeline.runtime.settings.pipeline.batch_records
        worked = False
        for tailer in list(self.tailers.values()):
            for batch in tailer.poll(batch_records):
                if batch.records or batch.checkpoint:
                    self.pipeline.handle(batch)
                    worked = worked or bool(batch.records)
                if self.on_batch:
                    self.on_batch(self.pipeline)
                self._keepalive()
        return worked

    def _idle(self) -> None:
        sources = _all_sources(self.pipeline.runtime).values()
        timeout = min((s.poll_interval_s for s in sources), default=1.0)
        self._wake.wait(timeout)
        self._wake.clear()

    @staticmethod
    def _watch_directory(runtime: Runtime) -> DirectoryWatcher | None:
        settings = runtime.settings
        if runtime.directory is None or settings.directory is None:
            return None
        return DirectoryWatcher(
            runtime.directory, settings.directory.path, min_interval_s=settings.directory.reload_check_s,
            loader=partial(load_directory, categories=frozenset(settings.categories)),
        )

    def _check_directory(self) -> None:
        """The HR directory changes often; reload it alone when its file changes."""
        if self.directory_watcher is None:
            return
        outcome = self.directory_watcher.poll()
        if outcome is None:
            return
        if outcome.changed:
            self.pipeline.runtime.enricher.set_directory(self.directory_watcher.directory)
            log.info("directory reloaded", extra={"employees": len(self.directory_watcher.directory)})
        else:
            log.error("directory file rejected; the previous directory stays",
                      extra={"problems": [str(p) for p in outcome.problems]})

    def _correlate_cluster_alerts(self) -> None:
        """The fleet's cluster alerts, read back from Elasticsearch: through the local
        correlator's seam, with the reading position in the same transaction."""
        if self.cluster is None or self.cluster.follower is None:
            return
        alerts, position = self.cluster.follower.take()
        if alerts or position:
            from auditd.elastic.cluster_alerts import POSITION_KEY
            from auditd.elastic.feeds import write_meta

            with self.store.transaction() as conn:
                if alerts:
                    self.pipeline.runtime.correlator.apply(conn, alerts)
                if position:
                    write_meta(conn, POSITION_KEY, position)

    def _keepalive(self) -> None:
        self._check_directory()
        self._correlate_cluster_alerts()
        now = time.monotonic()
        if self.metrics is not None and now - self._last_lag >= LAG_EVERY_S:
            self._last_lag = now
            self.metrics.set_lags(file_lags(self.store.conn))
        if self._ping_every is not None and now - self._last_ping >= self._ping_every:
            self._last_ping = now
            self.notifier.watchdog()

    def _start_tailers(self, runtime: Runtime, first_start: bool) -> None:
        for source in runtime.settings.sources:
            if source.name in self.tailers:
                continue
            tailer = FileTailer(
                source, runtime.framers[source.name](), self.store.load_checkpoints(source.name),
                first_start=first_start, wake=self._wake,
            )
            tailer.start()
            self.tailers[source.name] = tailer
        if self.cluster is not None:
            from auditd.elastic.source import ElasticEventSource

            for source in runtime.settings.elastic.sources if runtime.settings.elastic else ():
                if source.name not in self.tailers:
                    reader = ElasticEventSource(source, self.cluster.es, self.store.load_checkpoints(source.name))
                    reader.start()
                    self.tailers[source.name] = reader

    def _do_reload(self) -> None:
        self._reload.clear()
        if self.notifier:
            self.notifier.reloading()
        try:
            runtime = load_runtime(self.config_path, kinds=self.kinds)
        except ConfigError as exc:
            self.last_reload_ok, self.last_reload_error = False, str(exc)
            log.error("reload rejected; the previous configuration keeps running",
                      extra={"problems": [str(p) for p in exc.problems]})
        else:
            self._swap(runtime)
            self.last_reload_ok, self.last_reload_error = True, None
            log.info("reloaded", extra={"rules": len(runtime.ruleset)})
        record_reload(self.store.conn, self.last_reload_ok, dt.datetime.now(dt.timezone.utc),
                      self.last_reload_error, rules_in_force=len(self.pipeline.runtime.ruleset))
        if self.metrics is not None:
            self.metrics.reload_result(self.last_reload_ok)
        if self.notifier:
            self.notifier.ready()

    def _swap(self, runtime: Runtime) -> None:
        old_sources = _all_sources(self.pipeline.runtime)
        new_sources = _all_sources(runtime)
        for name in list(self.tailers):
            if name not in new_sources or new_sources[name] != old_sources.get(name):
                self.tailers.pop(name).stop()
        self.pipeline.runtime = runtime  # between batches: one batch never mixes two rule sets
        self.directory_watcher = self._watch_directory(runtime)
        self._start_tailers(runtime, first_start=False)
        if self.jobs is not None:
            self.jobs.reschedule(job_specs(runtime.settings))


def _all_sources(runtime: Runtime) -> dict[str, object]:
    elastic = runtime.settings.elastic
    named = list(runtime.settings.sources) + list(elastic.sources if elastic else ())
    return {s.name: s for s in named}


class Cluster:
    """The Elasticsearch side of one daemon: client, shipper, cluster-wide detector."""

    def __init__(self, runtime: Runtime, store: Store):
        from auditd.elastic.client import build_client, node_name

        self.settings = runtime.settings.elastic
        self.es = build_client(self.settings)
        self.agent = node_name(self.settings)
        self.store = store
        self.shipper = None
        self.detector = None
        self.follower = None  # reads the fleet's cluster alerts back for the local correlator
        self._deliveries = None  # the deliver lease and the fleet's delivery records (scale_out only)

    def start(self, *, detect: bool = True) -> None:
        from auditd.elastic.cluster_alerts import POSITION_KEY, ClusterAlertFollower, ClusterAlertReader
        from auditd.elastic.feeds import read_meta
        from auditd.elastic.partitioned import ClusterDetector
        from auditd.elastic.sink import EventShipper

        if self.settings.ship.enabled:
            self.shipper = EventShipper(self.es, self.store.path, self.settings, agent=self.agent)
            self.shipper.start()
        if detect and self.settings.scale_out is not None:
            self.detector = ClusterDetector(self.es, self.settings, agent=self.agent)
            self.detector.start()
            self.follower = ClusterAlertFollower(
                ClusterAlertReader(self.es, self.settings.alerts_index),
                every_s=self.settings.scale_out.evaluate_every.seconds,
                position=read_meta(self.store.conn, POSITION_KEY))
            self.follower.start()

    def deliver_fleet(self):
        """With scale_out: the deliver lease (one daemon sends at a time) and the fleet's
        delivery records; without it, None (a single daemon needs no lease)."""
        if self.settings.scale_out is None:
            return None
        if self._deliveries is None:
            from auditd.elastic.deliveries import FleetDeliveries

            self._deliveries = FleetDeliveries(self.es, self.settings, self.agent)
        return self._deliveries

    def wake(self, _pipeline=None) -> None:
        if self.shipper is not None:
            self.shipper.wake()

    def retention_guard(self) -> str | None:
        """Segments not yet shipped must outlive their retention until they are."""
        if self.shipper is None:
            return None
        from auditd.elastic.sink import unshipped_guard_sql

        return unshipped_guard_sql()

    def stop(self) -> None:
        if self._deliveries is not None:
            self._deliveries.release()
        if self.follower is not None:
            self.follower.stop()
        if self.detector is not None:
            self.detector.stop()
        if self.shipper is not None:
            self.shipper.stop(self.settings.ship.drain_timeout_s)
            self.shipper.close()


def _current_directory(daemon: Daemon):
    """The directory in force: the watcher's (reloaded when the HR files change), else the runtime's."""
    watcher = daemon.directory_watcher
    return watcher.directory if watcher is not None else daemon.pipeline.runtime.directory


def serve(config_path: Path, state_dir: Path | None = None, *, kinds: Mapping[str, RuleKind] = KINDS,
          new_store: bool = False) -> int:
    """`neo-auditd run`: everything a running daemon needs, set up and torn down in order."""
    runtime = load_runtime(config_path, kinds=kinds)  # a ConfigError reaches the CLI: exit 78
    ops = runtime.settings.ops
    init_sentry(ops.sentry.dsn, ops.sentry.environment, f"neo-auditd@{__version__}",
                sample_rate=ops.sentry.sample_rate)
    damage = _DamageRelay()  # a background store check may finish before the daemon exists
    store, quarantine = open_store(runtime, state_dir, new_store=new_store, on_damage=damage)
    metrics = Metrics(store.path)
    metrics.declare_sources(_all_sources(runtime))
    if ops.metrics.enabled:
        try:
            port = metrics.start_http(ops.metrics.listen, ops.metrics.port)
            log.info("metrics endpoint up", extra={"listen": ops.metrics.listen, "port": port})
        except OSError as exc:  # auditing matters more than its metrics: carry on, loudly
            log.error("metrics endpoint failed to start", extra={"error": str(exc)})
    record_reload(store.conn, True, dt.datetime.now(dt.timezone.utc), rules_in_force=len(runtime.ruleset))
    cluster = Cluster(runtime, store) if runtime.settings.elastic is not None else None
    if cluster is not None:
        cluster.start()
        if cluster.shipper is not None:
            metrics.watch_shipper(cluster.shipper)
    daemon = Daemon(config_path, runtime, store, quarantine, notifier=Notifier(), metrics=metrics,
                    on_batch=cluster.wake if cluster else None, cluster=cluster, kinds=kinds)
    metrics.watch_calendar(lambda: daemon.pipeline.runtime.calendar, runtime.settings.zone)
    daemon.install_signal_handlers()
    damage.connect(daemon.store_damaged)
    gc.freeze()  # the loaded rules, directory and formats never die: keep the collector off them
    keep_buffers_in_heap()
    scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
    daemon.jobs = JobRunner(scheduler, daemon.job_context())
    daemon.jobs.start(job_specs(runtime.settings))
    scheduler.start()
    try:
        return daemon.run()
    finally:
        scheduler.shutdown(wait=False)
        if cluster is not None:
            cluster.stop()
        metrics.stop()
        store.close()


def replay(runtime: Runtime, store: Store, quarantine: QuarantineFile, paths: list[Path], source_name: str,
           *, progress: Callable[[int, int], None] | None = None, cluster: Cluster | None = None) -> Pipeline:
    """Run the pipeline over files from their start (or past what an earlier replay already did).

    With a cluster, its shipper runs alongside and is drained before this returns.
    """
    pipeline = Pipeline(runtime, store, quarantine)
    gc.freeze()  # the loaded rules, directory and formats never die: keep the collector off them
    keep_buffers_in_heap()
    framer = runtime.framers[source_name]()
    reader = ReplaySource(source_name, [Path(p) for p in paths], framer, store.load_checkpoints(source_name))
    batch_records = runtime.settings.pipeline.batch_records
    total = reader.total_bytes()
    started = time.monotonic()
    for batch in reader.batches(batch_records):
        pipeline.handle(batch)
        if cluster is not None:
            cluster.wake()
        if progress:
            progress(reader.bytes_done(), total)
    if progress:
        progress(total, total)  # every byte read: the bar ends at 100 %, whatever the last batch was
    pipeline.totals.seconds = time.monotonic() - started
    if cluster is not None and cluster.shipper is not None:
        cluster.shipper.stop(drain_timeout=REPLAY_DRAIN_S)
        pipeline.totals.shipped_lag = cluster.shipper.lag()
        pipeline.totals.seconds_with_shipping = time.monotonic() - started
    return pipeline
