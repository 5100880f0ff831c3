"""The shipped pgaudit format on a real PostgreSQL csvlog (pgaudit's own test log).

The expected AUDIT records are counted independently with Python's csv module; the
daemon's path is the source's CsvFramer, then the pgaudit format.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.decode import Normaliser, load_format
from auditd.sources.base import Batch, Checkpoint
from auditd.sources.framing import CsvFramer

pytestmark = pytest.mark.realdata

PGAUDIT_DATA = Path(__file__).resolve().parents[2] / "shared/data/pgaudit"
CSVLOG = PGAUDIT_DATA / "postgresql-2015-08-12_161343.csv"
MESSAGE = 13  # the message column of csvlog, in every PostgreSQL version


@pytest.fixture(scope="module")
def csvlog() -> bytes:
    if not CSVLOG.is_file():
        pytest.skip(f"the real pgaudit csvlog is not at {CSVLOG} (../shared/data sits beside the checkout in CI)")
    return CSVLOG.read_bytes()


def expected_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def audit_fields(message: str) -> list[str]:
    return next(csv.reader([message[len("AUDIT: ") :]]))


def normalise(data: bytes):
    records, offsets, used = CsvFramer().split(data, 0)
    assert used == len(data)
    problems = Problems()
    fmt = load_format("pgaudit", problems)
    assert not problems.items
    batch = Batch("pg", str(CSVLOG), "c5v1og" * 4, records, offsets, Checkpoint("pg", "c5v1og" * 4, str(CSVLOG), used))
    return records, Normaliser(fmt).process(batch, "pg")


def test_one_event_per_audit_record_and_nothing_quarantined(csvlog):
    rows = expected_rows(csvlog)
    audits = [r for r in rows if r[MESSAGE].startswith("AUDIT: ")]
    assert len(audits) > 100 and any("\n" in r[MESSAGE] for r in audits)  # the file has multi-line statements

    records, (events, quarantined, skipped) = normalise(csvlog)
    assert quarantined == []
    assert len(events) == len(audits)
    assert skipped == len(rows) - len(audits)  # connections, checkpoints, errors: not accesses

    expected = [(r[1], *audit_fields(r[MESSAGE])[:5]) for r in audits]
    found = [
        (
            e.user_id,
            e.labels["audit_type"],
            e.labels["statement_id"],
            e.labels["substatement_id"],
            e.labels["class"],
            e.labels["command"],
        )
        for e in events
    ]
    assert found == expected


def test_multi_line_statements_are_one_event_each(csvlog):
    rows = expected_rows(csvlog)
    multi_line = [r for r in rows if r[MESSAGE].startswith("AUDIT: ") and "\n" in r[MESSAGE]]
    records, (events, _, _) = normalise(csvlog)
    by_offset = dict(zip(_offsets(csvlog), records))
    assert sum(b"\n" in by_offset[e.log_offset] for e in events) == len(multi_line)


def _offsets(data: bytes) -> list[int]:
    return CsvFramer().split(data, 0)[1]


def test_times_objects_and_actions(csvlog):
    rows = [r for r in expected_rows(csvlog) if r[MESSAGE].startswith("AUDIT: ")]
    _, (events, _, _) = normalise(csvlog)
    for row, event in zip(rows, events):
        when = dt.datetime.strptime(row[0], "%Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=dt.timezone.utc)
        assert event.timestamp == when
        fields = audit_fields(row[MESSAGE])
        assert event.resource_id == (fields[6] or None)
        assert event.resource_type == (fields[5].lower() or None)
    actions = {(e.labels["class"], e.labels["command"]): e.action for e in events}
    assert actions[("READ", "SELECT")] == "read"
    assert actions[("WRITE", "INSERT")] == actions[("WRITE", "UPDATE")] == "update"
    assert actions[("WRITE", "DELETE")] == "delete"
    assert actions[("ROLE", "GRANT")] == "grant" and actions[("ROLE", "REVOKE ROLE")] == "revoke"
    assert actions[("DDL", "CREATE TABLE")] == "update"


def test_the_same_log_with_postgresql_14_columns(csvlog):
    """PostgreSQL 13 adds backend_type, 14 leader_pid and query_id at the end of each row."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    for row in expected_rows(csvlog):
        writer.writerow(row + ["client backend", "", "-123456789"])
    newer = out.getvalue().encode("utf-8")
    _, (old_events, _, old_skipped) = normalise(csvlog)
    _, (events, quarantined, skipped) = normalise(newer)
    assert quarantined == [] and skipped == old_skipped
    assert [(e.timestamp, e.action, e.user_id, e.resource_id, e.labels) for e in events] == [
        (e.timestamp, e.action, e.user_id, e.resource_id, e.labels) for e in old_events
    ]
