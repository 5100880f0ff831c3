"""The daemon's side of the deliver process: start it, hand it the settings, restart it
with backoff when it dies, stop it with the daemon.

    deliver = DeliverProcess(store.path, config_path, on_change=lambda record: runstate.set(deliver=record))
    deliver.apply(runtime.settings, fleet=False)   # at start, and after every accepted reload
    deliver.stop(timeout_s)                        # when the daemon stops

Why a process: the deliver job on a thread of the daemon took the interpreter lock from
the pipeline thread whenever it composed a message or woke for a reply (the pipeline
kept ~78 % of its idle rate while 960 messages/s drained). In its own process it shares
nothing with the pipeline but the store's write lock.

What the daemon sees: ``record`` (the pid, ``running`` / ``restarting`` / ``stopped``,
restarts, the last exit and when), given to ``on_change`` at every change; the daemon
keeps it in its run-state file, where ``neo-auditd status`` reads it. Every restart is
logged as an error. A process that dies is started again after 1, 2, 5, 10, 30, then
every 60 s; one that ran ``STEADY_S`` starts the count again. Messages it had in flight
are sent again by its successor and marked possible repeats (``outbox.recover``), after
the successor holds the deliver lock its predecessor held until it died.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from auditd.jobs.deliver_process import DeliverConfig, encode_message

log = logging.getLogger("neo_auditd.deliver")

BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
STEADY_S = 60.0  # a process that ran this long before it died restarts from the first backoff
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where `auditd` is imported from here


def describe_exit(code: int | None) -> str:
    if code is None:
        return "could not be started"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class DeliverProcess:
    """Supervises one deliver process; constructing it does no I/O and starts nothing."""

    def __init__(self, store_path: Path, config_path: Path, *, log_level: str | None = None,
                 on_change: Callable[[dict[str, Any]], None] = lambda record: None,
                 command: Sequence[str] | None = None, backoff_s: Sequence[float] = BACKOFF_S):
        self.store_path = Path(store_path)
        self.config_path = Path(config_path)
        self.log_level = log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self.on_change = on_change
        self.command = list(command) if command is not None else [
            sys.executable, "-m", "auditd.jobs.deliver_process", "--store", str(self.store_path),
            "--log-level", self.log_level]
        self.backoff_s = tuple(backoff_s)
        self.record: dict[str, Any] = {"state": "stopped", "pid": None, "restarts": 0}
        self._message: dict[str, Any] | None = None  # the settings in force, for every (re)start
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    # -- the daemon's calls ---------------------------------------------------------------
    def apply(self, settings: Any, *, fleet: bool) -> None:
        """The settings in force (at start, after an accepted reload): started with them
        when deliver is enabled, handed them when running, stopped when disabled."""
        message = {"op": "settings", "settings": DeliverConfig.of(settings, self.config_path), "fleet": bool(fleet)}
        with self._lock:
            self._message = message
            running = self._thread is not None
            proc = self._proc
        if not settings.deliver.enabled:
            if running:
                log.info("deliver disabled: stopping the deliver process")
                self.stop(settings.pipeline.stop_timeout_s)
            return
        if not running:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._supervise, name="deliver-supervisor", daemon=True)
            self._thread.start()
        elif proc is not None:
            self._send(proc, message)

    def stop(self, timeout_s: float) -> None:
        """Ask the process to stop between two chunks; kill it if it has not after `timeout_s`
        (what it had in flight is sent again by the next one, marked a possible repeat)."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            self._send(proc, {"op": "stop"})
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("deliver process did not stop in time; killed (its messages in flight are sent "
                            "again at the next start, marked possible repeats)", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def pid(self) -> int | None:
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    # -- the supervising thread -------------------------------------------------------------
    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            code = self._run_once()
            if self._stopping.is_set():
                break
            if time.monotonic() - started >= STEADY_S:
                failures = 0
            delay = self.backoff_s[min(failures, len(self.backoff_s) - 1)]
            failures += 1
            restarts = self.record["restarts"] + 1
            log.error("deliver process died; starting it again", extra={
                "exit": describe_exit(code), "restart_in_s": delay, "restarts": restarts})
            self._set(state="restarting", pid=None, restarts=restarts, last_exit=describe_exit(code),
                      last_exit_at=_now())
            self._stopping.wait(delay)
        self._set(state="stopped", pid=None)

    def _run_once(self) -> int | None:
        with self._lock:
            if self._stopping.is_set():
                return 0
            try:
                proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, close_fds=True, env=_child_env())
            except OSError as exc:
                log.error("cannot start the deliver process", extra={"error": str(exc)})
                return None
            self._proc = proc
            message = self._message
        self._set(state="running", pid=proc.pid, since=_now())
        if message is not None:
            self._send(proc, message)
        code = proc.wait()
        with self._lock:
            self._proc = None
        return code

    def _send(self, proc: subprocess.Popen, message: dict[str, Any]) -> None:
        try:
            data = encode_message(message)
        except Exception:  # noqa: BLE001 - a settings type that does not pickle is a bug: say so loudly
            log.exception("settings cannot be handed to the deliver process")
            return
        try:
            with self._lock:  # one message at a time on the pipe
                assert proc.stdin is not None
                proc.stdin.write(data)
                proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the process is gone: the supervisor starts the next one with the same settings

    def _set(self, **fields: Any) -> None:
        self.record = {**self.record, **fields}
        try:
            self.on_change(dict(self.record))
        except Exception:  # noqa: BLE001 - a status record must not stop the supervision
            log.warning("deliver process state not recorded", exc_info=True)


def _child_env() -> dict[str, str]:
    """The daemon's environment (channel secrets may come from it), with this package importable."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
    return env


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["BACKOFF_S", "DeliverProcess", "describe_exit"]
