"""The store's schema: numbered migrations, applied at open.

Each migration is one file here, ``NNNN_what.sql`` (statements) or ``NNNN_what.py`` (a
module with ``migrate(conn)``, for changes SQL alone cannot make). The number of the
last one applied is the database's ``PRAGMA user_version``. ``migrate`` applies the
pending ones in order, all in one transaction, after a copy of the file is taken
(``<db>.v<N>.bak``, SQLite's online backup): a failure leaves the store as it was,
and the copy is there if the operator wants the old version back. A store whose
version is above the newest migration here was written by a newer neo-auditd and is
refused: reading it could misread what that version wrote.

Migration 0001 is the schema of 0.1.0, which had no version; its statements say
``IF NOT EXISTS``, so an unversioned store of that release is adopted as it is.

Migrations are never edited once released: a change is a new file.
"""

from __future__ import annotations

import importlib
import logging
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from auditd.errors import StoreFormatError

log = logging.getLogger("neo_auditd.store")

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.(sql|py)\Z")


class StoreTooNew(StoreFormatError):
    """The store's schema version is newer than this code knows."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def _discover() -> tuple[Migration, ...]:
    found: list[Migration] = []
    for entry in resources.files(__name__).iterdir():
        m = _NAME.match(entry.name)
        if m is None:
            continue
        version, name, kind = int(m[1]), m[2], m[3]
        if kind == "sql":
            found.append(Migration(version, name, _sql_step(entry.read_text(encoding="utf-8"))))
        else:
            module = importlib.import_module(f"{__name__}.{entry.name[:-3]}")
            found.append(Migration(version, name, module.migrate))
    found.sort(key=lambda m: m.version)
    numbers = [m.version for m in found]
    if numbers != list(range(1, len(found) + 1)):  # a gap or a duplicate is a packaging bug
        raise RuntimeError(f"store migrations must be numbered 1..n without gaps: {numbers}")
    return tuple(found)


def _sql_step(script: str) -> Callable[[sqlite3.Connection], None]:
    statements = split_statements(script)

    def apply(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return apply


def split_statements(script: str) -> list[str]:
    """Split SQL text into statements (``executescript`` would commit the transaction);
    trigger bodies keep their inner semicolons."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if _has_sql(pending):
                out.append(pending.strip())
            pending = ""
    if _has_sql(pending):
        out.append(pending.strip())
    return out


def _has_sql(text: str) -> bool:
    return any(line.split("--", 1)[0].strip(" ;\t\r\n") for line in text.splitlines())


MIGRATIONS = _discover()
LATEST = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone() is not None


def check_version(conn: sqlite3.Connection, path: Path | str) -> int:
    """The store's version; StoreTooNew if this code cannot read it."""
    version = schema_version(conn)
    if version > LATEST:
        raise StoreTooNew(
            f"{path}: the store's schema is version {version}, newer than this neo-auditd knows "
            f"(up to {LATEST}); it was written by a newer release. Run that release, or restore "
            f"a backup taken before the upgrade (see README, 'Backups and restore').")
    return version


def migrate(conn: sqlite3.Connection, path: Path | str | None = None, *, backup: bool = True) -> list[int]:
    """Bring the store to LATEST; returns the versions applied (empty when current).

    `conn` is in autocommit mode (the store's own). With `path` and `backup`, a store
    that holds tables is first copied beside itself.
    """
    version = check_version(conn, path or "<store>")
    pending = [m for m in MIGRATIONS if m.version > version]
    if not pending:
        return []
    if backup and path is not None and _has_tables(conn):
        _backup(conn, Path(path), version)
    conn.execute("BEGIN IMMEDIATE")
    try:
        # another process may have migrated it while this one waited for the lock
        pending = [m for m in pending if m.version > schema_version(conn)]
        for migration in pending:
            migration.apply(conn)
            conn.execute(f"PRAGMA user_version = {migration.version}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    applied = [m.version for m in pending]
    if applied:
        log.info("store migrated", extra={"file.path": str(path), "from_version": version, "to_version": LATEST})
    return applied


def _backup(conn: sqlite3.Connection, path: Path, version: int) -> Path:
    target = path.with_name(f"{path.name}.v{version}.bak")
    if target.exists():  # an earlier attempt's copy of the same version: the same content
        return target
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    copy = sqlite3.connect(partial)
    try:
        conn.backup(copy)
    finally:
        copy.close()
    partial.replace(target)
    log.info("store copied before migrating", extra={"file.path": str(target), "from_version": version})
    return target
