"""The store's own commands: `store check`, `store backup`."""

from __future__ import annotations

import sys
from pathlib import Path

from auditd.cli.common import config_arg, json_out, settings_and_store_path, state_arg


def cmd_store_check(args) -> int:
    import sqlite3

    from auditd.store import health
    from auditd.store.migrations import LATEST, check_version

    _, path = settings_and_store_path(args)
    result: dict = {"store": str(path), "ok": False}
    try:
        health.preflight(path)
        if not path.exists():
            raise health.StoreMissing(f"{path}: no store there (has the daemon run with this config?)")
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
        try:
            result["schema_version"] = check_version(conn, path)
            result["schema_latest"] = LATEST
            report = health.check(conn, full=args.full)
        except sqlite3.DatabaseError as exc:
            raise health.damaged(exc, path) from exc
        finally:
            conn.close()
    except health.StoreDamaged as exc:
        result["error"] = str(exc)
        _store_result(result, args.json)
        return health.EX_DATAERR
    result.update(ok=report.ok, check="integrity_check" if args.full else "quick_check",
                  seconds=report.seconds, problems=report.problems)
    _store_result(result, args.json)
    return 0 if report.ok else health.EX_DATAERR


def cmd_store_backup(args) -> int:
    from auditd.store import health

    _, path = settings_and_store_path(args)
    try:
        size, seconds = health.backup(path, args.target)
    except (FileExistsError, health.StoreDamaged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, FileExistsError) else health.EX_DATAERR
    except (health.BackupFailed, OSError) as exc:  # a name too long, a folder that cannot be made
        print(f"error: {exc}", file=sys.stderr)
        return 74  # EX_IOERR: the target, not the store, is the problem
    result = {"store": str(path), "backup": str(args.target), "bytes": size, "seconds": seconds, "ok": True}
    _store_result(result, args.json)
    return 0


def _store_result(result: dict, as_json: bool) -> None:
    if as_json:
        json_out(result)
    elif result.get("error"):
        print(f"neo-auditd: {result['error']}", file=sys.stderr)
    elif "backup" in result:
        print(f"backed up {result['store']} to {result['backup']} ({result['bytes']:,} bytes, "
              f"{result['seconds']} s, checked)")
    else:
        verdict = "ok" if result["ok"] else "DAMAGED: " + "; ".join(result["problems"][:5])
        print(f"{result['store']}: schema {result['schema_version']} of {result['schema_latest']}, "
              f"{result['check']} {verdict} ({result['seconds']} s)")


def add_parsers(sub) -> None:
    """The store commands."""
    p = sub.add_parser("store", help="check the store's integrity, or back it up while the daemon runs")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    q = ssub.add_parser("check", help="check the store's header, schema version and PRAGMA quick_check; "
                                      "exit 0, or 65 if damaged")
    config_arg(q)
    state_arg(q)
    q.add_argument("--full", action="store_true", help="PRAGMA integrity_check: slower, checks every index entry")
    q.add_argument("--json", action="store_true", help="print the verdict, schema version and problems as JSON")
    q.set_defaults(func=cmd_store_check)
    q = ssub.add_parser("backup", help="a consistent copy of the store (SQLite online backup), checked; "
                                       "safe while the daemon runs")
    config_arg(q)
    state_arg(q)
    q.add_argument("target", type=Path, metavar="PATH", help="the new file (never overwritten)")
    q.add_argument("--json", action="store_true", help="print the backup's path, size and time taken as JSON")
    q.set_defaults(func=cmd_store_backup)
