"""The correlate stage's SQL helpers. Its tables (incidents, alerts, incident_timeline,
incident_subjects, incident_counters, incident_changes, change_cursors) are created by
the store's migrations (``auditd/store/migrations``) and written only by this stage;
times in them use the store's one codec (``auditd.store.times``)."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Iterator

# every table this stage owns: no other package writes them (tests/test_architecture.py)
TABLES = ("incidents", "alerts", "incident_timeline", "incident_subjects", "incident_counters",
          "incident_changes", "change_cursors")


@contextmanager
def savepoint(conn: sqlite3.Connection, name: str) -> Iterator[sqlite3.Connection]:
    """A nested transaction: committed on its own, merged into an outer one if any."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield conn
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")
