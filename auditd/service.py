"""The daemon: sources → pipeline, with signals, reload and a clean drain on SIGTERM.

This module and the CLI are the only places where the stages meet.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

from apscheduler.schedulers.background import BackgroundScheduler

from auditd import __version__
from auditd.detect.kinds import KINDS, RuleKind
from auditd.directory import DirectoryWatcher, load_directory
from auditd.directory.packed import load_apart
from auditd.directory.reuse import reusing
from auditd.config.located import Problems
from auditd.errors import ConfigError, ConfigProblem, Location
from auditd.jobs import JobContext, JobRunner, job_specs
from auditd.jobs.apart import NICE
from auditd.jobs.deliver_supervisor import DeliverProcess
from auditd.ops.memory import keep_buffers_in_heap
from auditd.ops.metrics import Metrics
from auditd.ops.runstate import RunState, path_for
from auditd.ops.privacy import make_private, store_files, tighten
from auditd.ops.sdnotify import Notifier
from auditd.ops.sentry import init_sentry
from auditd.ops.status import file_lags, record_reload
from auditd.ops.watchdog import Watchdog
from auditd.opening import DamageRelay, open_store
from auditd.pipeline import Pipeline, Prepared
from auditd.runtime import Runtime, load_runtime
from auditd.sources.base import Batch
from auditd.sources.tail import FileTailer
from auditd.workers import WorkerPool, fingerprint, resolve_workers
from auditd.store.quarantine_file import QuarantineFile
from auditd.store import health
from auditd.store.health import CheckReport
from auditd.store.pressure import MirrorBehind, StorageUnavailable, hold_reason
from auditd.store.sqlite import Store

LAG_EVERY_S = 5.0
RUNSTATE_EVERY_S = 30.0
HOLD_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # between tries while storage refuses writes
IDLE_WAKE_S = 1.0  # an idle daemon still wakes this often: directory changes, watchdog pings
EXIT_STOP_TIMEOUT = 75  # EX_TEMPFAIL: stopped mid-batch after the stop timeout; the batch is read again
DELIVER_STOP_MARGIN_S = 5.0  # the deliver process is killed this long before the stop timeout
SLOW_RELOAD_S = 60.0  # a SIGHUP's load still reading after this long is said, and again as often

if TYPE_CHECKING:
    from auditd.elastic.daemon import Cluster

log = logging.getLogger("neo_auditd.service")


class Daemon:
    """`neo-auditd run`: tail every configured source until SIGTERM."""

    def __init__(self, config_path: Path, runtime: Runtime, store: Store, quarantine: QuarantineFile,
                 *, notifier: Notifier | None = None, metrics: Metrics | None = None,
                 on_batch: Callable[[Pipeline], None] | None = None, cluster: "Cluster | None" = None,
                 kinds: Mapping[str, RuleKind] = KINDS, stop_timeout_s: float | None = None,
                 exit_now: Callable[[int], None] = os._exit, runstate: RunState | None = None,
                 workers: int = 1, state_dir: Path | None = None):
        self.config_path = config_path
        self.state_dir = state_dir  # `run --state-dir`: every reload keeps it
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
        self._exit_now = exit_now
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._loading: ConfigLoad | None = None  # a SIGHUP's load, on its thread
        self._tick = threading.Event()
        self._wake = threading.Event()
        self.jobs: JobRunner | None = None  # reschedules its jobs when a reload changes an interval
        self.deliver: DeliverProcess | None = None  # the deliver job's process: handed every accepted reload
        self.tailers: dict[str, FileTailer] = {}
        self.last_reload_ok: bool | None = None
        self.last_reload_error: str | None = None
        # pinged only on proof of life (a chunk done, nothing to read), never by a timer; a
        # loop that waits on purpose (storage back pressure) calls watchdog.holding_back(why)
        self.watchdog = Watchdog(notifier)
        self.pipeline.on_progress = self.watchdog.progressed
        self.stop_timeout_s = stop_timeout_s if stop_timeout_s is not None else \
            runtime.settings.pipeline.stop_timeout_s
        self._stopped = threading.Event()
        # storage back pressure: batches read but not committed, kept until a write works
        self.runstate = runstate or RunState(path_for(store.path))
        self.holding_back: str | None = None  # why, while storage cannot be written
        self._held: list[tuple[Batch, Prepared | None]] = []  # (batch, what a worker made of it or None)
        self._mirror_behind = False
        self._hold_started = 0.0
        self._hold_attempts = 0
        self._retry_at = 0.0
        self._last_runstate = 0.0
        # with workers (`workers` > 1): worker processes prepare the batches, this process
        # commits them in the order read (auditd.workers); started by run()
        self.pool = WorkerPool(config_path, workers, ruleset=runtime.ruleset, expected=fingerprint(runtime),
                               strict=False, split=True) if workers > 1 else None
        self._queued: deque[Batch] = deque()  # read, not yet handed to a worker (at most one poll's)
        self._workers_ready = False  # said once, when every worker has loaded
        # sources whose reloaded settings wait for their held batches to be committed
        self._restart_after_hold: set[str] = set()

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

    def arm_stop_timeout(self) -> None:
        """From now on, a stop that takes longer than `stop_timeout_s` ends the process
        (the owner of the process calls this; `finished` disarms it)."""
        threading.Thread(target=self._enforce_stop_timeout, name="stop-timeout", daemon=True).start()

    def _enforce_stop_timeout(self) -> None:
        """Once a stop is asked for, end the process after `stop_timeout_s` even if a
        stage is wedged mid-batch (an assignment server that never answers, a stuck
        lookup). Safe: the batch in flight is not committed, so its lines are read again
        at the next start, as after kill -9; systemd would SIGKILL it a little later."""
        self._stop.wait()
        if self._stopped.wait(self.stop_timeout_s):
            return
        log.error("stop timed out: a stage is stuck mid-batch; exiting without it (its lines are read "
                  "again at the next start)", extra={"stop_timeout_s": self.stop_timeout_s})
        if self.notifier:
            self.notifier.stopping()
        logging.shutdown()
        self._exit_now(EXIT_STOP_TIMEOUT)

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()  # an idle loop starts the load now
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
        )

    def start_deliver(self, deliver: DeliverProcess) -> None:
        """The deliver job runs in a process of its own (jobs/deliver_supervisor.py): started
        with the settings in force, told to stop as soon as the daemon is."""
        self.deliver = deliver
        deliver.apply(self.pipeline.runtime.settings, fleet=self._delivers_as_fleet())

        def stop_with_daemon() -> None:
            self._stop.wait()
            deliver.stop(self.deliver_stop_timeout_s())

        threading.Thread(target=stop_with_daemon, name="deliver-stop", daemon=True).start()

    def _delivers_as_fleet(self) -> bool:
        return self.cluster is not None and self.cluster.delivers_as_fleet()

    def deliver_stop_timeout_s(self) -> float:
        # killed before the daemon's own stop timeout would end the process under it
        return max(1.0, self.stop_timeout_s - DELIVER_STOP_MARGIN_S)

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> int:
        first_start = not self.store.has_any_checkpoint()
        if self.pool is not None:
            self.pool.start()  # they load while the tailers start; until then this process does the batches
        self._start_tailers(self.pipeline.runtime, first_start)
        if self.notifier:
            self.notifier.ready()
        self.runstate.set(state="running", since=_now_text(), reason=None)
        log.info("started", extra={"sources": list(self.tailers)})
        try:
            while not self._stop.is_set():
                if self._reload.is_set() and self._loading is None:
                    self._start_reload()
                if self._loading is not None and self._loading.done:
                    loading, self._loading = self._loading, None
                    self._apply_reload(loading.take())
                if self._tick.is_set() and self.holding_back is None:
                    self._time_hooks()
                if not self._pump():
                    self._idle()
                self._keepalive()
            if self.holding_back is None:
                self._pump()  # drain what is already readable, then stop with it checkpointed
                self._settle(queued=True)
        finally:
            if self.pool is not None:
                self.pool.close()  # what is still in flight was not committed: read again at the next start
            for tailer in self.tailers.values():
                tailer.stop()
            if self.notifier:
                self.notifier.stopping()
            self.runstate.set(state="stopped", since=_now_text(), reason=self.holding_back)
        log.info("stopped", extra={"events": self.pipeline.totals.events, "exit_code": self.exit_code,
                                   **({"workers": self.pool.counts()} if self.pool is not None else {})})
        return self.exit_code

    def _time_hooks(self) -> None:
        """The rules' time hooks, after every batch read before them (as in one process)."""
        self._settle()
        if self.holding_back is not None:
            return
        self._tick.clear()
        try:
            self.pipeline.tick(dt.datetime.now(dt.timezone.utc))
        except StorageUnavailable as exc:
            self._tick.set()  # the time hooks run again once storage takes writes
            self._hold(exc.reason)

    def finished(self) -> None:
        """Everything is closed: the stop timeout has nothing left to cut short."""
        self._stopped.set()

    def _pump(self) -> bool:
        """Process one round of every source; True if anything was read.

        While storage cannot be written, no source is read: the batches already read are
        kept and tried again with backoff, so nothing is lost and nothing is read ahead."""
        if self.holding_back is not None and not self._retry_held():
            return False
        if self.pool is not None:
            return self._pump_workers()
        batch_records = self.pipeline.runtime.settings.pipeline.batch_records
        worked = False
        for tailer in list(self.tailers.values()):
            batches = tailer.poll(batch_records)
            for i, batch in enumerate(batches):
                if not self._handle(batch, None, lambda: [(b, None) for b in batches[i + 1:]]):
                    return worked
                worked = worked or bool(batch.records)
                self._keepalive()
        return worked

    def _pump_workers(self) -> bool:
        """`_pump` with workers: read while a worker is free and hand the batches out;
        commit what has come back, in the order read. It waits for the oldest batch only
        when nothing new was read or no worker is free, so a live line waits for no
        other (a batch is whatever a poll returned, cut between the idle workers); before
        committing it reads again, so that the workers prepare the next lines while this
        process commits. Nothing is read beyond what the workers hold and one poll."""
        pool = self.pool
        read = self._read_ahead()
        worked = read
        for _ in range(pool.workers):  # then back to the loop: a stop, a reload or a tick may be due
            if not pool.pending() or self.holding_back is not None:
                break
            taken = pool.take(block=not read or not pool.has_room())
            if taken is None:
                break
            worked = True
            read = self._read_ahead()
            if not self._handle(*taken, self._later):
                break
            self._keepalive()
        return worked

    def _read_ahead(self) -> bool:
        """Hand out what was read; while a worker is free, read a round of every source
        first. True if anything was read."""
        pool = self.pool
        read = False
        if not self._queued and pool.has_room():
            batch_records = self.pipeline.runtime.settings.pipeline.batch_records
            for tailer in list(self.tailers.values()):
                self._queued.extend(tailer.poll(batch_records))
            read = bool(self._queued)
        while self._queued and pool.has_room():
            pool.submit(self._queued.popleft())
        return read

    def _later(self) -> list[tuple[Batch, Prepared | None]]:
        """Every batch read and not committed, in order, out of the workers' hands (to hold)."""
        later = []
        while self.pool is not None and self.pool.pending():
            later.append(self.pool.take())
        later += [(batch, None) for batch in self._queued]
        self._queued.clear()
        return later

    def _settle(self, *, queued: bool = False) -> None:
        """Commit what the workers have in flight (and, with `queued`, what is read and not
        yet handed out): a batch boundary for a reload, a tick or a stop."""
        pool = self.pool
        if pool is None:
            return
        while self.holding_back is None and (pool.pending() or (queued and self._queued)):
            while queued and self._queued and pool.has_room():
                pool.submit(self._queued.popleft())
            if not self._handle(*pool.take(), self._later):
                return

    def _handle(self, batch: Batch, prepared: Prepared | None,
                rest: Callable[[], list[tuple[Batch, Prepared | None]]]) -> bool:
        """One batch into the store; False (and holding back, with `rest()`, the batches
        read after it) when storage refused it."""
        try:
            if batch.records or batch.checkpoint:
                self.pipeline.handle(batch, prepared)
                self.watchdog.progressed()
        except StorageUnavailable as exc:  # nothing of it was kept: it is tried again
            self._held = [(batch, prepared), *rest()]
            self._hold(exc.reason)
            return False
        except MirrorBehind as exc:  # committed; the quarantine file catches up
            self._held, self._mirror_behind = rest(), True
            self._hold(exc.reason)
            return False
        if self.on_batch:
            self.on_batch(self.pipeline)
        return True

    def _hold(self, reason: str) -> None:
        now = time.monotonic()
        if self.holding_back is None:
            self._hold_started, self._hold_attempts = now, 0
            log.error("holding back: storage cannot be written; no source is read until it can, nothing is "
                      "lost", extra={"reason": reason, "batches_held": len(self._held)})
            self.runstate.set(state="holding_back", since=_now_text(), reason=reason)
        elif reason != self.holding_back:
            self.runstate.set(state="holding_back", reason=reason)
        self.holding_back = reason
        self._hold_attempts += 1
        self._retry_at = now + HOLD_BACKOFF_S[min(self._hold_attempts, len(HOLD_BACKOFF_S)) - 1]
        self.watchdog.holding_back(reason)
        if self.metrics is not None:
            self.metrics.holding_back(True, retried=self._hold_attempts > 1)

    def _retry_held(self) -> bool:
        """Try the held batches again when their time has come; True once all are in."""
        if time.monotonic() < self._retry_at:
            self.watchdog.holding_back(self.holding_back or "")
            return False
        if self._mirror_behind:
            try:
                self.pipeline.quarantine_file.catch_up()
            except OSError as exc:
                self._hold(f"the quarantine file cannot be written: {hold_reason(exc) or exc}")
                return False
            self._mirror_behind = False
        while self._held:
            (batch, prepared), rest = self._held[0], self._held[1:]
            if not self._handle(batch, prepared, lambda: rest):
                return False
            self._held = rest
        log.warning("storage takes writes again: reading resumes", extra={
            "held_for_s": round(time.monotonic() - self._hold_started, 1), "retries": self._hold_attempts})
        self.holding_back = None
        if self._restart_after_hold:
            for name in self._restart_after_hold:
                tailer = self.tailers.pop(name, None)
                if tailer is not None:
                    tailer.stop()
            self._restart_after_hold.clear()
            self._start_tailers(self.pipeline.runtime, first_start=False)
        self.runstate.set(state="running", since=_now_text(), reason=None)
        self.watchdog.resumed()
        if self.metrics is not None:
            self.metrics.holding_back(False)
        return True

    def _idle(self) -> None:
        if self.holding_back is not None:  # waiting on purpose: alive, and says why
            self.watchdog.holding_back(self.holding_back)
        else:
            self.watchdog.idle()  # nothing to read: waiting, not stuck
        sources = _all_sources(self.pipeline.runtime).values()
        timeout = min((s.poll_interval_s for s in sources), default=1.0)
        self._wake.wait(min(timeout, IDLE_WAKE_S, self.watchdog.every or IDLE_WAKE_S))
        self._wake.clear()

    @staticmethod
    def _watch_directory(runtime: Runtime) -> DirectoryWatcher | None:
        """A changed directory is loaded in a child process, below the pipeline's priority,
        and taken in on a thread of its own; the workers are handed it packed
        (`directory.packed`), so that they take this one as it is."""
        settings = runtime.settings
        if runtime.directory is None or settings.directory is None:
            return None
        return DirectoryWatcher(
            runtime.directory, settings.directory.path, min_interval_s=settings.directory.reload_check_s,
            loader=partial(load_directory, categories=frozenset(settings.categories)), background=True,
            load_apart=partial(load_apart, categories=frozenset(settings.categories), nice=NICE),
        )

    def _check_directory(self) -> None:
        """The HR directory changes often; reload it alone when its file changes."""
        if self.directory_watcher is None:
            return
        outcome = self.directory_watcher.poll()
        if outcome is None:
            return
        if outcome.changed:
            self._settle()  # the batches read before the change are committed as prepared
            self.pipeline.runtime.enricher.set_directory(self.directory_watcher.directory)
            self._reload_workers("directory", self.directory_watcher.packed)
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

            try:
                with self.store.transaction() as conn:
                    if alerts:
                        runtime = self.pipeline.runtime
                        runtime.correlator.apply(conn, runtime.scrubbed(alerts))
                    if position:
                        write_meta(conn, POSITION_KEY, position)
            except Exception as exc:
                if hold_reason(exc) is None:
                    raise
                self.cluster.follower.give_back(alerts, position)  # applied once storage takes writes

    def _keepalive(self) -> None:
        if self.pool is not None:
            ready = self.pool.ready()  # reads the answers of workers starting or reloading
            if not self._workers_ready and ready == self.pool.workers:
                self._workers_ready = True  # until now this process did the batches itself
                log.info("workers ready", extra={"workers": self.pool.workers})
        self._check_directory()
        if self._loading is not None and self._loading.overdue(SLOW_RELOAD_S):
            log.warning("a reload is still being read; the previous configuration keeps running",
                        extra={"seconds": round(self._loading.elapsed)})
        if self.holding_back is None:
            self._correlate_cluster_alerts()
        now = time.monotonic()
        if self.metrics is not None and now - self._last_lag >= LAG_EVERY_S:
            self._last_lag = now
            self.metrics.set_lags(file_lags(self.store.conn, self.pipeline.runtime.settings.sources))
        if now - self._last_runstate >= RUNSTATE_EVERY_S:  # renewed, so status can tell a stale one
            self._last_runstate = now
            self.runstate.set()

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
                    reader = ElasticEventSource(source, self.cluster.es, self.store.load_checkpoints(source.name),
                                                wake=self._wake)
                    reader.start()
                    self.tailers[source.name] = reader

    def _start_reload(self) -> None:
        load = self._loader()
        try:
            self._loading = ConfigLoad(load, self._wake)  # read on a thread; batches go on meanwhile
        except RuntimeError as exc:  # no thread to be had (a process limit): refused, said, retried at the next SIGHUP
            self._apply_reload(Loaded(None, exc, None))

    def _do_reload(self) -> None:
        """Load the configuration and swap it in now, on this thread (the loop loads on
        a thread of its own instead: `ConfigLoad`)."""
        self._apply_reload(self._loader()())

    def _loader(self) -> Callable[[], "Loaded"]:
        """A SIGHUP's load, to run on any thread: everything is read again except a
        directory whose files are unchanged (`directory.reuse`); a changed one is parsed
        in a niced child process, as the directory watcher does, so the load takes little
        of the interpreter from the pipeline's thread."""
        self._reload.clear()  # a SIGHUP from now on is a reason to load again, after this load
        if self.notifier:
            self.notifier.reloading()
        self.runstate.set(reloading_since=_now_text())  # `status` says a reload is being read
        in_force, categories = _current_directory(self), self.pipeline.runtime.settings.categories
        config_path, kinds, state_dir, stopping = self.config_path, self.kinds, self.state_dir, self._stop.is_set
        packed: list[bytes] = []

        def load_changed(path, problems, *, referrer=None, key_path=(), categories=None):
            mine = Problems()
            try:
                fresh, packed_form = load_apart(path, mine, categories=categories, nice=NICE)
            except Exception as exc:  # noqa: BLE001 - the child died (killed for memory?): not parsed here instead
                problems.items.append(ConfigProblem(Location(str(path), 0, 0), "", f"cannot load: {exc}"))
                return None
            if fresh is not None and not mine:
                packed.append(packed_form)
                return fresh
            if stopping():
                problems.extend(mine)
                return None
            # rejected: read again here, for problems located at the config's line
            return load_directory(path, problems, referrer=referrer, key_path=key_path, categories=categories)

        def load() -> Loaded:
            started = time.monotonic()
            try:
                runtime = load_runtime(config_path, kinds=kinds, state_dir=state_dir,
                                       directory_loader=reusing(in_force, categories, load_changed=load_changed))
                _warm_templates(runtime)
                kept = in_force if in_force is not None and runtime.directory is in_force else None
                return Loaded(runtime, None, packed[0] if packed else None, time.monotonic() - started, kept)
            except Exception as exc:  # noqa: BLE001 - a loader bug must not take the daemon down
                return Loaded(None, exc, None, time.monotonic() - started)

        return load

    def _apply_reload(self, loaded: "Loaded") -> None:
        """Between two batches: swap in what a reload loaded, or say why it was refused
        and keep the set in force."""
        if loaded.kept is not None and _current_directory(self) is not loaded.kept:
            # the watcher took in a newer directory while this load kept the one before it
            log.info("reload read again: the directory changed while it was read")
            self._reload.set()
            return
        exc = loaded.error
        self.runstate.set(reloading_since=None)
        self._retry_at = 0.0  # an operator's SIGHUP (a raised cap, space freed) is a reason to try now
        if isinstance(exc, ConfigError):
            self.last_reload_ok, self.last_reload_error = False, str(exc)
            log.error("reload rejected; the previous configuration keeps running",
                      extra={"problems": [str(p) for p in exc.problems]})
        elif exc is not None:
            self.last_reload_ok, self.last_reload_error = False, f"{type(exc).__name__}: {exc}"
            log.error("reload failed; the previous configuration keeps running", exc_info=exc)
        else:
            runtime = loaded.runtime
            started = time.monotonic()
            # the batches read before the swap are committed under the old set: also those
            # read and not yet handed to a worker, or a restarted tailer reads them again
            self._settle(queued=True)
            self._swap(runtime)
            self._reload_workers("config", loaded.packed)
            self.last_reload_ok, self.last_reload_error = True, None
            log.info("reloaded", extra={"rules": len(runtime.ruleset), "read_s": round(loaded.seconds, 3),
                                        "swap_s": round(time.monotonic() - started, 3),
                                        "directory_read": loaded.packed is not None})
            _log_warnings(runtime)
        try:
            record_reload(self.store.conn, self.last_reload_ok, dt.datetime.now(dt.timezone.utc),
                          self.last_reload_error, rules_in_force=len(self.pipeline.runtime.ruleset))
        except Exception as exc:  # a full store: the log and the metric still say how the reload went
            if hold_reason(exc) is None:
                raise
            log.warning("reload not recorded in the store", extra={"reason": hold_reason(exc)})
        if self.metrics is not None:
            self.metrics.reload_result(self.last_reload_ok)
        if self.notifier:
            self.notifier.ready()
            first = (self.last_reload_error or "").split("\n")[0]
            self.notifier.status("running" if self.last_reload_ok else f"reload refused, previous set running: {first}")

    def _reload_workers(self, what: str, directory: bytes | None = None) -> None:
        """The workers load the new set too, between two batches (none is in flight).
        Batches still held were prepared under the old set: this process does them again."""
        if self.pool is None:
            return
        self._held = [(batch, None) for batch, _ in self._held]
        self.pool.reload(what, fingerprint(self.pipeline.runtime, _current_directory(self)), directory=directory)

    def _swap(self, runtime: Runtime) -> None:
        old_sources = _all_sources(self.pipeline.runtime)
        new_sources = _all_sources(runtime)
        for name in list(self.tailers):
            if name in self._restart_after_hold:
                continue
            if name not in new_sources or new_sources[name] != old_sources.get(name):
                if any(batch.source == name for batch, _ in self._held):
                    # A new tailer starts from the committed checkpoints and would read
                    # the held batches' records again: it starts once they are in.
                    self._restart_after_hold.add(name)
                    continue
                self.tailers.pop(name).stop()
        self.store.set_max_bytes(runtime.settings.store.max_bytes)
        self.pipeline.runtime = runtime  # between batches: one batch never mixes two rule sets
        self.directory_watcher = self._watch_directory(runtime)
        self._start_tailers(runtime, first_start=False)
        if self.jobs is not None:
            self.jobs.reschedule(job_specs(runtime.settings))
        if self.deliver is not None:
            self.deliver.apply(runtime.settings, fleet=self._delivers_as_fleet())
        if self.cluster is not None:
            self.cluster.set_rules(runtime.ruleset)


class Loaded(NamedTuple):
    """What a reload loaded: the runtime, or the exception that refused it; and the
    directory packed for the workers when a changed one was parsed apart."""

    runtime: Runtime | None
    error: Exception | None
    packed: bytes | None
    seconds: float = 0.0  # how long the load took, on its thread
    kept: Directory | None = None  # the directory in force when the load began, when the load kept it


class ConfigLoad:
    """A SIGHUP's load on a thread of its own: reading the rules, playbooks and
    templates again takes a fraction of a second, a changed directory of 20,000
    employees seconds, all of which the pipeline's thread spends reading lines instead;
    the daemon's loop swaps the result in between two batches once `done`."""

    def __init__(self, load: Callable[[], Loaded], wake: threading.Event):
        self._loaded: Loaded | None = None
        self._load, self._wake = load, wake
        self._started = self._said = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="neo-auditd-config-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loaded = self._load()  # catches what the load raises: `Loaded.error`
        except BaseException as exc:  # noqa: BLE001 - a bug past that: a refused reload, said, not a dead thread
            self._loaded = Loaded(None, RuntimeError(f"the configuration load ended without a result: {exc!r}"),
                                  None, self.elapsed)
        finally:
            self._wake.set()  # an idle loop swaps it in now, not at its next poll

    @property
    def done(self) -> bool:
        return self._loaded is not None  # set before the loop is woken

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def overdue(self, every_s: float) -> bool:
        """True once per `every_s` while the load goes on (a file on a hung mount, a
        child that cannot get the CPU): the log says so rather than nothing."""
        now = time.monotonic()
        if self.done or now - self._said < every_s:
            return False
        self._said = now
        return True

    def take(self) -> Loaded:
        if self._loaded is None:
            raise RuntimeError("take() before the load is done")
        return self._loaded


def _now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _warm_templates(runtime: Runtime) -> None:
    """Compile the playbooks' templates now, not when the first incident's steps fire
    (on the scheduler's thread, taking the interpreter from the pipeline just when an
    alert must get through)."""
    if runtime.responder is None:
        return
    for problem in runtime.responder.templates.warm():
        log.warning("a template does not compile: the steps that use it will fail", extra={"problem": problem})


def _log_warnings(runtime: Runtime) -> None:
    for warning in runtime.warnings:
        log.warning("configuration warning", extra={"warning": str(warning)})


def _all_sources(runtime: Runtime) -> dict[str, object]:
    elastic = runtime.settings.elastic
    named = list(runtime.settings.sources) + list(elastic.sources if elastic else ())
    return {s.name: s for s in named}


def _current_directory(daemon: Daemon):
    """The directory in force: the watcher's (reloaded when the HR files change), else the runtime's."""
    watcher = daemon.directory_watcher
    return watcher.directory if watcher is not None else daemon.pipeline.runtime.directory


def serve(config_path: Path, state_dir: Path | None = None, *, kinds: Mapping[str, RuleKind] = KINDS,
          new_store: bool = False, workers: int | None = None) -> int:
    """`neo-auditd run`: everything a running daemon needs, set up and torn down in order."""
    make_private()  # umask 077, also when started by hand rather than by the unit
    # a stop asked for while starting (opening a large store, connecting to the cluster)
    # is kept and honoured once the daemon runs, instead of killing the process mid-setup
    early_stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: early_stop.set())
    runtime = load_runtime(config_path, kinds=kinds, state_dir=state_dir)  # a ConfigError reaches the CLI: exit 78
    _log_warnings(runtime)
    _warm_templates(runtime)
    ops = runtime.settings.ops
    init_sentry(ops.sentry.dsn, ops.sentry.environment, f"neo-auditd@{__version__}",
                sample_rate=ops.sentry.sample_rate)
    damage = DamageRelay()  # a background store check may finish before the daemon exists
    store, quarantine = open_store(runtime, state_dir, new_store=new_store, on_damage=damage)  # or exit 78
    tighten(store_files(store.path) + [quarantine.path])  # files an earlier start left under umask 022
    metrics = Metrics(store.path)
    metrics.declare_sources(_all_sources(runtime))
    endpoint = None  # what `status` says of the endpoint (the run-state file, below)
    if ops.metrics.enabled:
        endpoint = {"listen": ops.metrics.listen, "port": ops.metrics.port, "error": None}
        try:
            port = metrics.start_http(ops.metrics.listen, ops.metrics.port)
            endpoint["port"] = port
            log.info("metrics endpoint up", extra={"listen": ops.metrics.listen, "port": port})
        except OSError as exc:  # auditing matters more than its metrics: carry on, loudly
            endpoint["error"] = str(exc)
            log.error("metrics endpoint failed to start", extra={"error": str(exc)})
    record_reload(store.conn, True, dt.datetime.now(dt.timezone.utc), rules_in_force=len(runtime.ruleset))
    cluster = None
    if runtime.settings.elastic is not None:
        from auditd.elastic.daemon import Cluster  # the client library is loaded only when configured

        cluster = Cluster(runtime.settings.elastic, store)
    if cluster is not None:
        cluster.start(ruleset=runtime.ruleset)
        if cluster.shipper is not None:
            metrics.watch_shipper(cluster.shipper)
        metrics.watch_cluster_rules(lambda: cluster.detector.costs() if cluster.detector is not None else [])
    runstate = RunState(path_for(store.path)).open()  # before the disk can fill: its blocks are kept
    runstate.set(metrics=endpoint)
    n = resolve_workers(runtime.settings.pipeline.workers if workers is None else workers)
    if n > 1 and kinds is not KINDS:  # a worker loads the built-in kinds only
        log.warning("rule kinds of this process's own: one process, no workers", extra={"workers": n})
        n = 1
    daemon = Daemon(config_path, runtime, store, quarantine, notifier=Notifier(), metrics=metrics,
                    on_batch=cluster.wake if cluster else None, cluster=cluster, kinds=kinds, runstate=runstate,
                    workers=n, state_dir=state_dir)
    metrics.watch_calendar(lambda: daemon.pipeline.runtime.calendar, runtime.settings.zone)
    metrics.watch_rules(lambda: daemon.pipeline.runtime.ruleset.stats)
    daemon.install_signal_handlers()
    if early_stop.is_set():
        daemon.request_stop()
    damage.connect(daemon.store_damaged)
    daemon.arm_stop_timeout()
    gc.freeze()  # the loaded rules, directory and formats never die: keep the collector off them
    keep_buffers_in_heap()
    scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
    daemon.jobs = JobRunner(scheduler, daemon.job_context())
    daemon.jobs.start(job_specs(runtime.settings))
    scheduler.start()
    daemon.start_deliver(DeliverProcess(store.path, config_path,
                                        on_change=lambda record: runstate.set(deliver=record)))
    metrics.watch_deliver_process(lambda: daemon.deliver.record if daemon.deliver is not None else None)
    try:
        return daemon.run()
    finally:
        scheduler.shutdown(wait=False)
        daemon.deliver.stop(daemon.deliver_stop_timeout_s())  # at once if it stopped with the daemon
        if cluster is not None:
            cluster.stop()
        metrics.stop()
        store.close()
        runstate.close()
        daemon.finished()
