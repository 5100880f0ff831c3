"""Job: the respond stage's clocks. Plans steps from the incident change log, fires the
steps that are ready, and escalates the overdue ones (``auditd.respond.engine``).

It runs on the scheduler's thread with an SQLite connection of its own (never the
pipeline's): every write is a short transaction of its own, so the pipeline's batches
wait for it no longer than one step's rendering. The clocks are rows, so a restart
recomputes nothing from memory: steps that fell due while the daemon was down fire on
the first run after the start, marked late, and none fires twice.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

from auditd.jobs.context import JobContext

log = logging.getLogger("neo_auditd.respond")


def connect(store_path: Path) -> sqlite3.Connection:
    uri = Path(store_path).resolve().as_uri() + "?mode=rw"
    conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def run(context: JobContext) -> None:
    responder = context.runtime().responder
    if responder is None:
        return
    with contextlib.closing(connect(context.store_path)) as conn:
        report = responder.run(conn, context.now(), should_stop=context.should_stop)
    if report.fired or report.escalated or report.failed:
        log.info("playbook steps", extra={"fired": report.fired, "late": report.late, "failed": report.failed,
                                          "escalated": report.escalated, "changes": report.changes})
