"""Is the store the one the daemon kept, and is it whole?

A damaged or missing store is never papered over. Starting afresh on an empty file
where a store used to be would raise every old alert again and, later, send notices
twice; writing on into a damaged file makes it worse. So:

- the state directory keeps a small marker (``.<db name>.id``) with the store's id
  (also in the store's ``meta``) from the first start on; a missing or zero-byte store
  beside a marker is refused unless the operator says ``run --new-store``;
- a file that is not an SQLite database, or that SQLite finds damaged, is refused
  with what to do, and exit code 65 (EX_DATAERR), which the systemd unit lists in
  ``RestartPreventExitStatus`` so it is not restarted in a loop;
- ``PRAGMA quick_check`` runs at start; on a store larger than a configured bound it
  runs in the background, table by table, its progress and result in ``meta`` (so
  ``status`` shows them), and a damage found there stops the daemon the same way.

``store check`` and ``store backup`` (SQLite's online backup: consistent while the
daemon writes) are the command-line side; the README says how to restore.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from auditd.errors import NeoError
from auditd.store.times import now_db

log = logging.getLogger("neo_auditd.store")

EX_DATAERR = 65  # sysexits.h: the input data was incorrect -- here, the store
HEADER = b"SQLite format 3\x00"
STORE_ID_KEY = "store_id"
CHECK_KEY = "store_check"  # meta row: the last or running check, JSON
MAX_PROBLEMS = 20

RESTORE_HINT = ("restore the latest backup (README, 'Backups and restore'), or start an empty store with "
                "`neo-auditd run --new-store` (every alert in the logs still on disk is raised again)")


class StoreDamaged(NeoError):
    """The store file is not a whole SQLite database of this daemon (exit 65)."""

    exit_code = EX_DATAERR


class StoreMissing(StoreDamaged):
    """The daemon ran here before, and its store is gone or empty (exit 65)."""


def marker_path(db_path: Path) -> Path:
    return db_path.with_name(f".{db_path.name}.id")


def preflight(db_path: Path, *, new_store: bool = False) -> None:
    """Before opening: refuse a store that vanished or is not SQLite at all."""
    db_path = Path(db_path)
    if db_path.is_dir():
        raise StoreDamaged(f"{db_path} is a folder, not a store: state_dir names the folder the daemon keeps "
                           "neo-auditd.db in; move the folder away, or point state_dir elsewhere")
    marker = marker_path(db_path)
    size = db_path.stat().st_size if db_path.exists() else None
    if marker.exists() and (size is None or size == 0):
        if new_store:
            log.warning("starting a new, empty store where one was before (--new-store)",
                        extra={"file.path": str(db_path)})
            _set_aside(db_path)
            marker.unlink()
            return
        what = "is missing" if size is None else "is empty (0 bytes)"
        raise StoreMissing(f"{db_path} {what}, but neo-auditd ran here before ({marker} exists): {RESTORE_HINT}")
    if size:
        with open(db_path, "rb") as fh:
            head = fh.read(len(HEADER))
        if head != HEADER:
            if new_store:
                _set_aside(db_path)
                marker.unlink(missing_ok=True)
                return
            raise StoreDamaged(f"{db_path} is not an SQLite database (its first bytes are {head[:16]!r}): "
                               f"{RESTORE_HINT}")


def _set_aside(db_path: Path) -> None:
    """Keep a damaged or empty file for the post-mortem instead of writing over it."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db_path}{suffix}")
        if path.exists():
            path.replace(Path(f"{db_path}{suffix}.set-aside-{stamp}"))


def stamp(conn: sqlite3.Connection, db_path: Path, *, new_store: bool = False) -> str:
    """After opening: the store's id in meta and in the marker, checked to agree."""
    db_path = Path(db_path)
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (STORE_ID_KEY,)).fetchone()
    store_id = row[0] if row else None
    if store_id is None:
        store_id = uuid.uuid4().hex
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (STORE_ID_KEY, store_id))
    marker = marker_path(db_path)
    if marker.exists() and not new_store:
        recorded = _read_marker(marker)
        if recorded is not None and recorded != store_id:
            raise StoreDamaged(f"{db_path} is not the store neo-auditd kept here (its id {store_id}, the state "
                               f"directory's {recorded} in {marker}): if you restored a backup of another "
                               f"store on purpose, remove {marker}; otherwise {RESTORE_HINT}")
    if not marker.exists() or new_store:
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(json.dumps({STORE_ID_KEY: store_id, "created_at": now_db()}) + "\n")
        os.chmod(tmp, 0o600)
        tmp.replace(marker)
    return store_id


def _read_marker(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get(STORE_ID_KEY)
    except (OSError, ValueError, AttributeError):
        return None  # a damaged marker proves nothing either way; the store's own id stands


_DAMAGE_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB


def is_damage(exc: sqlite3.Error) -> bool:
    """A damaged file, as opposed to a lock, a full disk or a permission."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in _DAMAGE_CODES) or "malformed" in str(exc)


def damaged(exc: sqlite3.DatabaseError, db_path: Path) -> StoreDamaged:
    return StoreDamaged(f"{db_path}: SQLite cannot read the store ({exc}): {RESTORE_HINT}")


@dataclass(slots=True)
class CheckReport:
    state: str = "running"  # running, ok, damaged
    started_at: str = field(default_factory=now_db)
    finished_at: str | None = None
    tables_done: int = 0
    tables_total: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def check(conn: sqlite3.Connection, *, full: bool = False, per_table: bool = False,
          on_progress: Callable[[CheckReport], None] | None = None) -> CheckReport:
    """quick_check (integrity_check with `full`) of the whole file, or table by table."""
    started = time.monotonic()
    pragma = "integrity_check" if full else "quick_check"
    report = CheckReport()
    try:
        names = tables(conn) if per_table else [None]
        report.tables_total = len(names)
        for name in names:
            sql = f"PRAGMA {pragma}" if name is None else f"PRAGMA {pragma}(\"{name}\")"
            found = [r[0] for r in conn.execute(sql).fetchall()]
            report.problems += [p for p in found if p != "ok"][:MAX_PROBLEMS - len(report.problems)]
            report.tables_done += 1
            if on_progress is not None:
                on_progress(report)
    except sqlite3.DatabaseError as exc:
        report.problems.append(str(exc))
    report.state = "ok" if not report.problems else "damaged"
    report.finished_at = now_db()
    report.seconds = round(time.monotonic() - started, 3)
    return report


def record_check(conn: sqlite3.Connection, report: CheckReport) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (CHECK_KEY, report.to_json()))


def read_check(conn: sqlite3.Connection) -> CheckReport | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (CHECK_KEY,)).fetchone()
    if row is None:
        return None
    try:
        return CheckReport(**json.loads(row[0]))
    except (ValueError, TypeError):
        return None


class BackgroundCheck:
    """The start-up check of a large store, on a read-only connection of its own;
    progress goes to meta through a second, short-lived connection per update."""

    def __init__(self, db_path: Path, *, on_damage: Callable[[CheckReport], None]):
        self.db_path = Path(db_path)
        self.on_damage = on_damage
        self.report: CheckReport | None = None
        self._thread = threading.Thread(target=self._run, name="neo-auditd-store-check", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _save(self, report: CheckReport) -> None:
        try:
            with sqlite3.connect(self.db_path, timeout=30, isolation_level=None) as conn:
                record_check(conn, report)
        except sqlite3.Error as exc:  # the disk may be full: the log still says how it went
            log.warning("store check progress not recorded", extra={"error": str(exc)})

    def _run(self) -> None:
        uri = self.db_path.resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30)
        except sqlite3.Error as exc:
            report = CheckReport(state="damaged", problems=[str(exc)], finished_at=now_db())
        else:
            try:
                report = check(conn, per_table=True, on_progress=self._save)
            finally:
                conn.close()
        self.report = report
        self._save(report)
        if report.ok:
            log.info("store check passed", extra={"file.path": str(self.db_path), "seconds": report.seconds,
                                                  "tables": report.tables_total})
        else:
            log.critical("store damaged", extra={"file.path": str(self.db_path), "problems": report.problems})
            self.on_damage(report)


class BackupFailed(Exception):
    """The backup could not be written (permissions, a full disk); nothing was left."""


def backup(db_path: Path, target: Path) -> tuple[int, float]:
    """An online copy of the store (consistent while the daemon writes), checked whole;
    returns (bytes, seconds). The copy is private (0600) and never overwrites a file."""
    started = time.monotonic()
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} exists; choose a new name (a backup never overwrites)")
    partial = target.with_name(target.name + ".partial")
    try:
        partial.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)  # as keygen does; private under the umask
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        source = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
        try:
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy, pages=1024)
                copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                verdict = check(copy)
            finally:
                copy.close()
        finally:
            source.close()
    except (OSError, sqlite3.Error) as exc:  # not writable, disk full: no half copy left behind
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BackupFailed(f"cannot back up {db_path} to {target}: {reason}") from None
    if not verdict.ok:
        partial.unlink(missing_ok=True)
        raise StoreDamaged(f"the backup of {db_path} does not check out: {'; '.join(verdict.problems[:3])}")
    partial.replace(target)
    return target.stat().st_size, round(time.monotonic() - started, 3)
