"""Tables of the correlate stage, in the daemon's one SQLite file.

Times are UTC ISO 8601 strings of one fixed width (``iso_utc``), so that text order is
time order and range queries can use the indexes.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from contextlib import contextmanager
from typing import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    incident_id      TEXT PRIMARY KEY,        -- INC-YYYYMMDD-NNNN, date in Asia/Shanghai
    group_key        TEXT NOT NULL,           -- the actor, or the rule for actor-less alerts
    actor            TEXT,
    title            TEXT NOT NULL,
    tier             TEXT NOT NULL,           -- in force (a person may have set it)
    auto_tier        TEXT NOT NULL,           -- the highest the correlator has graded
    status           TEXT NOT NULL,
    assignee         TEXT,
    severity         TEXT NOT NULL,           -- the highest of its alerts
    first_seen       TEXT NOT NULL,           -- event time of the earliest alert
    last_seen        TEXT NOT NULL,           -- event time of the latest alert
    discovered_at    TEXT NOT NULL,           -- wall clock at opening: starts the legal clocks
    updated_at       TEXT NOT NULL,
    alert_count      INTEGER NOT NULL,
    affected_count   INTEGER NOT NULL,        -- rows of incident_subjects
    max_record_count INTEGER NOT NULL,
    sensitive        INTEGER NOT NULL,
    band             TEXT,                    -- criminal band family reached, if any
    rules            TEXT NOT NULL,           -- JSON array of rule ids, sorted
    categories       TEXT NOT NULL,           -- JSON array, sorted
    timeline_seq     INTEGER NOT NULL,        -- seq and hash of the last timeline entry
    timeline_head    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_by_group ON incidents (group_key, last_seen);
CREATE INDEX IF NOT EXISTS incidents_by_last_seen ON incidents (last_seen);
CREATE INDEX IF NOT EXISTS incidents_by_status ON incidents (status, last_seen);

CREATE TABLE IF NOT EXISTS incident_counters (
    day  TEXT PRIMARY KEY,                    -- YYYYMMDD in Asia/Shanghai
    last INTEGER NOT NULL
);

-- pseudonyms only: the enrich stage replaced raw customer ids before detection
CREATE TABLE IF NOT EXISTS incident_subjects (
    incident_id TEXT NOT NULL REFERENCES incidents (incident_id) DEFERRABLE INITIALLY DEFERRED,
    subject_id  TEXT NOT NULL,
    PRIMARY KEY (incident_id, subject_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS alerts (
    alert_id    TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL REFERENCES incidents (incident_id) DEFERRABLE INITIALLY DEFERRED,
    rule_id     TEXT NOT NULL,
    severity    TEXT NOT NULL,
    timestamp   TEXT NOT NULL,
    doc         TEXT NOT NULL                 -- the Alert as JSON
);
CREATE INDEX IF NOT EXISTS alerts_by_incident ON alerts (incident_id, timestamp);

CREATE TABLE IF NOT EXISTS incident_timeline (
    incident_id TEXT NOT NULL REFERENCES incidents (incident_id) DEFERRABLE INITIALLY DEFERRED,
    seq         INTEGER NOT NULL,             -- 1, 2, 3, ... per incident
    at          TEXT NOT NULL,                -- wall clock
    kind        TEXT NOT NULL,
    who         TEXT NOT NULL,
    data        TEXT NOT NULL,                -- canonical JSON
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,                -- sha256(prev_hash + canonical JSON of the entry)
    PRIMARY KEY (incident_id, seq)
) WITHOUT ROWID;

-- The hash chain shows tampering; these stop the accidental kind.
CREATE TRIGGER IF NOT EXISTS incident_timeline_no_update
BEFORE UPDATE ON incident_timeline
BEGIN
    SELECT RAISE(ABORT, 'incident_timeline is append-only');
END;
CREATE TRIGGER IF NOT EXISTS incident_timeline_no_delete
BEFORE DELETE ON incident_timeline
BEGIN
    SELECT RAISE(ABORT, 'incident_timeline is append-only');
END;
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if missing, without committing an outer transaction.

    ``executescript`` would COMMIT first, so the statements run one by one inside a
    savepoint: alone it commits, inside the caller's transaction it does not.
    """
    with savepoint(conn, "correlate_schema"):
        for statement in split_statements(SCHEMA):
            conn.execute(statement)


def split_statements(script: str) -> list[str]:
    """Split SQL text into statements; trigger bodies keep their inner semicolons."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    if pending.strip():
        out.append(pending.strip())
    return out


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


def iso_utc(value: dt.datetime) -> str:
    """A fixed-width UTC ISO string; naive datetimes are a bug upstream, never guessed."""
    if value.tzinfo is not dt.timezone.utc:  # the common case needs no conversion
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: every time must carry its zone")
        value = value.astimezone(dt.timezone.utc)
    return value.isoformat(timespec="microseconds")


def from_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)
