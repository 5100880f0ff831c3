"""Opening the store that `run` and `replay` write: the one kept here and whole, or a
clear refusal (exit 65, `store/health.py`), and the quarantine file beside it.

    store, quarantine = open_store(runtime, state_dir, on_damage=daemon_relay)

A store larger than `store.startup_check_max_bytes` is checked in the background; a
damage found then reaches the daemon through `DamageRelay`, which holds it until the
daemon exists.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from auditd.errors import ConfigError, ConfigProblem, Location
from auditd.runtime import Runtime
from auditd.store import health
from auditd.store.health import CheckReport
from auditd.store.quarantine_file import QuarantineFile
from auditd.store.sqlite import Store

log = logging.getLogger("neo_auditd.service")


def open_store(runtime: Runtime, state_dir: Path | None = None, *, new_store: bool = False,
               on_damage: Callable[[CheckReport], None] | None = None) -> tuple[Store, QuarantineFile]:
    """Open the store after making sure it is the one kept here and whole (see
    store/health.py); raises StoreDamaged (exit 65) when it is not, and a ConfigError
    located at the config's state_dir (exit 78) when the folder is not one a store can
    be opened in (a file, a read-only or full disk: checked by `check`, but the disk may
    have changed since)."""
    try:
        return _open(runtime, state_dir, new_store, on_damage)
    except (OSError, sqlite3.Error) as exc:
        where = state_dir or runtime.settings.state_dir
        raise ConfigError([ConfigProblem(Location(str(runtime.config_path), 0, 0), "state_dir",
                                         f"cannot open the store in {where}: {exc}")]) from None


def _open(runtime: Runtime, state_dir: Path | None, new_store: bool,
          on_damage: Callable[[CheckReport], None] | None) -> tuple[Store, QuarantineFile]:
    settings = runtime.settings
    db_path = (state_dir / "neo-auditd.db") if state_dir else settings.store_path
    q_path = (state_dir / "quarantine.jsonl") if state_dir else settings.quarantine_path
    health.preflight(db_path, new_store=new_store)
    store = Store(db_path, synchronous=settings.store.synchronous, keep_events=settings.store.keep_events,
                  max_bytes=settings.store.max_bytes)
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


class DamageRelay:
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
