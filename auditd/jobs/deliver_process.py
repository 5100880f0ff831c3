"""The deliver process: the ``deliver`` job in a process of its own, so that sending never
takes the interpreter lock from the daemon's pipeline.

    python -m auditd.jobs.deliver_process --store PATH [--log-level INFO]

The daemon starts it (``deliver_supervisor.DeliverProcess``) and speaks to it over its
standard input, one pickle per message, never the other way:

- ``{"op": "settings", "settings": DeliverConfig, "fleet": bool}``: the configuration
  in force (the sections of it this process reads). The first message starts the work; later ones are reloads. The daemon sends
  only settings it has loaded and accepted, so a rejected reload never reaches this
  process, and a restarted one runs what the daemon runs, whatever the file now says.
  ``fleet``: the daemon reads the fleet's cluster alerts back, so only the holder of the
  fleet's deliver lease sends (``elastic/deliveries.py``).
- ``{"op": "stop"}``, or the end of the input (the daemon is gone, kill -9 included):
  stop between two chunks of a run and exit 0. SIGTERM and SIGINT do the same.

It runs the job on its own APScheduler scheduler through the same ``JobRunner`` (its
runs recorded in the store's ``jobs`` table), with its own SQLite connection, and holds
``deliver.lock`` beside the store for its whole life (``deliver/lock.py``). Exit 78: the
settings could not be turned into channels (a secret file unreadable since the daemon
read it); the daemon logs it and starts it again with backoff.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import pickle
import signal
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditd.config.located import Doc, Problems
from auditd.deliver import Deliverer, build_deliverer
from auditd.deliver.lock import DeliverLock
from auditd.errors import EX_CONFIG, ConfigError, Location
from auditd.jobs import JobContext, JobRunner, job_specs
from auditd.jobs.apart import NICE

log = logging.getLogger("neo_auditd.deliver")

JOBS = ("deliver",)
_LENGTH = struct.Struct(">I")


def encode_message(message: dict[str, Any]) -> bytes:
    """One message on the control pipe: its length, then its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def read_message(fd: int) -> dict[str, Any] | None:
    """The next message from the control pipe, or None at its end. Raw reads of the
    descriptor, no buffered file: a thread blocked here must not hold a lock that the
    interpreter's exit would wait for."""
    head = _read_exactly(fd, _LENGTH.size)
    if head is None:
        return None
    body = _read_exactly(fd, _LENGTH.unpack(head)[0])
    if body is None:
        return None
    message = pickle.loads(body)  # from the daemon that started this process, over a private pipe
    return message if isinstance(message, dict) else None


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class DeliverConfig:
    """The sections of the settings the deliver process reads: what the daemon hands it
    (plain frozen data, so it crosses the pipe as a pickle)."""

    config_path: Path  # where relative secret files are found, and what problems name
    state_dir: Path
    zone: Any
    deliver: Any  # DeliverSettings
    respond: Any  # RespondSettings: the audiences, for routes and escalation
    store: Any  # StoreSettings: the durability of its transactions
    elastic: Any  # ElasticSettings | None: the fleet's deliver lease
    ops: Any  # OpsSettings: Sentry

    @classmethod
    def of(cls, settings: Any, config_path: Path) -> "DeliverConfig":
        return cls(config_path=Path(config_path), state_dir=settings.state_dir, zone=settings.zone, deliver=settings.deliver,
                   respond=settings.respond, store=settings.store, elastic=settings.elastic, ops=settings.ops)


@dataclass(frozen=True, slots=True)
class DeliverRuntime:
    """What the deliver job reads of a runtime: the settings and the channels built from them."""

    settings: DeliverConfig
    deliverer: Deliverer


def build(settings: DeliverConfig) -> DeliverRuntime:
    """The channels of these settings (secrets read now); ConfigError names what failed."""
    problems = Problems()
    referrer = Doc(file=str(settings.config_path), data={}, marks={(): Location(str(settings.config_path), 0, 0)})
    deliverer = build_deliverer(settings.deliver, settings.respond, problems, state_dir=settings.state_dir,
                                zone=settings.zone, referrer=referrer)
    problems.raise_if_any()
    return DeliverRuntime(settings, deliverer)


class _Fleet:
    """The fleet's deliver lease and delivery records, built when first needed (no I/O before)."""

    def __init__(self) -> None:
        self.on = False
        self.elastic: Any = None
        self._deliveries: Any = None

    def set(self, on: bool, elastic: Any) -> None:
        if elastic != self.elastic:
            self.release()
            self.elastic = elastic
        self.on = on and elastic is not None

    def __call__(self) -> Any:
        if not self.on:
            return None
        if self._deliveries is None:
            from auditd.elastic.client import build_client, node_name
            from auditd.elastic.deliveries import FleetDeliveries

            self._deliveries = FleetDeliveries(build_client(self.elastic), self.elastic, node_name(self.elastic))
        return self._deliveries

    def release(self) -> None:
        if self._deliveries is not None:
            try:
                self._deliveries.release()
            except Exception as exc:  # noqa: BLE001 - the lease expires by itself
                log.warning("deliver lease not released", extra={"error": f"{type(exc).__name__}"})
            self._deliveries = None


class DeliverService:
    """The process's life: wait for settings, run the job, apply reloads, stop."""

    def __init__(self, store_path: Path, control: int):
        self.store_path = Path(store_path)
        self.control = control
        self.stop = threading.Event()
        self._changed = threading.Event()
        self._pending: dict | None = None
        self._lock = threading.Lock()
        self.runtime: DeliverRuntime | None = None
        self.fleet = _Fleet()

    # -- the daemon's messages, read on a thread of their own ----------------------------
    def read_control(self) -> None:
        while True:
            try:
                message = read_message(self.control)
            except (OSError, pickle.UnpicklingError, EOFError, ValueError):
                message = None
            if message is None or message.get("op") == "stop":
                break  # the daemon is gone, or said stop
            if message.get("op") == "settings":
                with self._lock:
                    self._pending = message
                self._changed.set()
        self.request_stop()

    def request_stop(self) -> None:
        self.stop.set()
        self._changed.set()

    def _take(self) -> dict | None:
        with self._lock:
            message, self._pending = self._pending, None
        return message

    # -- the work -------------------------------------------------------------------------
    def run(self) -> int:
        threading.Thread(target=self.read_control, name="deliver-control", daemon=True).start()
        lock = DeliverLock(self.store_path)
        if not lock.acquire(self.stop.is_set, on_wait=lambda holder: log.warning(
                "another deliver process still holds the outbox; waiting for it", extra={"holder_pid": holder})):
            return 0
        try:
            return self._serve()
        finally:
            self.fleet.release()
            lock.release()

    def _serve(self) -> int:
        first = self._wait_for_settings()
        if first is None:
            return 0
        try:
            self.runtime = build(first["settings"])
        except ConfigError as exc:
            log.error("deliver process cannot start: its channels cannot be built",
                      extra={"problems": [str(p) for p in exc.problems]})
            return EX_CONFIG
        self.fleet.set(bool(first.get("fleet")), first["settings"].elastic)
        _init_sentry(first["settings"])
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
        runner = JobRunner(scheduler, self.context())
        runner.start(job_specs(self.runtime.settings, JOBS))
        for job_id in JOBS:  # started (or restarted) to send: it sends now, not after a start delay
            runner.run_soon(job_id)
        scheduler.start()
        log.info("deliver process started", extra={"fleet": self.fleet.on})
        try:
            while not self.stop.is_set():
                self._changed.wait()
                self._changed.clear()
                message = self._take()
                if message is not None and not self.stop.is_set():
                    self._reload(message, runner)
        finally:
            scheduler.shutdown(wait=True)  # the run in progress stops between two chunks
        log.info("deliver process stopped")
        return 0

    def _wait_for_settings(self) -> dict | None:
        while not self.stop.is_set():
            self._changed.wait()
            self._changed.clear()
            message = self._take()
            if message is not None:
                return message
        return None

    def _reload(self, message: dict, runner: JobRunner) -> None:
        try:
            runtime = build(message["settings"])
        except ConfigError as exc:  # a secret file gone since the daemon read it: keep what runs
            log.error("deliver reload rejected; the previous channels keep running",
                      extra={"problems": [str(p) for p in exc.problems]})
            return
        self.runtime = runtime  # the next run takes it; the one in progress ends with the old
        self.fleet.set(bool(message.get("fleet")), runtime.settings.elastic)
        runner.reschedule(job_specs(runtime.settings, JOBS))
        log.info("deliver process reloaded", extra={"fleet": self.fleet.on})

    def context(self) -> JobContext:
        return JobContext(store_path=self.store_path, runtime=lambda: self.runtime, directory=lambda: None,
                          should_stop=self.stop.is_set, fleet=self.fleet)


def _init_sentry(settings: Any) -> None:
    from auditd import __version__
    from auditd.ops.sentry import init_sentry

    sentry = settings.ops.sentry
    init_sentry(sentry.dsn, sentry.environment, f"neo-auditd@{__version__}", sample_rate=sentry.sample_rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auditd.jobs.deliver_process",
                                     description="The daemon's deliver process (started by `neo-auditd run`).")
    parser.add_argument("--store", type=Path, required=True, help="the daemon's SQLite store")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    from auditd.logs import setup_logging
    from auditd.ops.privacy import make_private

    make_private()
    setup_logging(args.log_level)
    try:
        os.nice(NICE)  # its SMTP conversation's child inherits it
    except OSError as exc:
        log.warning("deliver process keeps the daemon's priority", extra={"error": str(exc)})
    service = DeliverService(args.store, sys.stdin.fileno())
    signal.signal(signal.SIGTERM, lambda *_: service.request_stop())
    signal.signal(signal.SIGINT, lambda *_: service.request_stop())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the daemon, with settings it accepted
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
