"""The one seam: every change to incidents goes through Correlator.apply and lands in
the change log in the same transaction; consumers read it once by their cursor; no
other package writes the incident tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from auditd.correlate import Assign, CorrelateSettings, Correlator, Note, SetTier, Transition, changelog
from auditd.correlate.model import CorrelateError
from auditd.correlate.schema import TABLES

from test_correlate_incidents import apply, fixed_clock, make_alert, new_store

PACKAGE = Path(__file__).resolve().parents[1] / "auditd"


def test_alerts_and_actions_append_one_change_each_with_a_rising_version():
    conn, correlator = new_store(), Correlator(CorrelateSettings(), fixed_clock)
    (opened,) = apply(correlator, conn, [make_alert(1), make_alert(2)])
    incident = opened.incident_id
    conn.execute("BEGIN")
    correlator.apply(conn, actions=[
        Transition(incident_id=incident, status="triaged", who="alice", why="looking"),
        Assign(incident_id=incident, assignee="bob", who="alice"),
        SetTier(incident_id=incident, tier=opened.tier, who="alice", why="same tier: no change"),
        Note(incident_id=incident, who="bob", text="called the store"),
    ])
    conn.execute("COMMIT")
    apply(correlator, conn, [make_alert(3)])
    logged = changelog.read(conn, "test")
    assert [c.change.cause for c in logged] == ["alerts", "status_changed", "assigned", "note", "alerts"]
    assert logged[0].change.opened and not logged[-1].change.opened
    versions = [c.change.version for c in logged]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    head = conn.execute("SELECT timeline_seq FROM incidents WHERE incident_id = ?", (incident,)).fetchone()[0]
    assert versions[-1] == head  # the version is the timeline head after the change
    assert logged[1].change.previous_status == "open" and logged[1].change.status == "triaged"
    assert logged[2].change.assignee == "bob" and logged[2].change.who == "alice"


def test_a_rolled_back_batch_leaves_nothing_in_the_log():
    conn, correlator = new_store(), Correlator(CorrelateSettings(), fixed_clock)
    conn.execute("BEGIN")
    correlator.apply(conn, [make_alert(1)])
    conn.execute("ROLLBACK")
    assert changelog.read(conn, "any") == []


def test_an_illegal_action_changes_nothing_and_logs_nothing():
    conn, correlator = new_store(), Correlator(CorrelateSettings(), fixed_clock)
    (opened,) = apply(correlator, conn, [make_alert(1)])
    before = changelog.pending(conn, "x")
    conn.execute("BEGIN")
    with pytest.raises(CorrelateError):
        correlator.apply(conn, actions=[Transition(incident_id=opened.incident_id, status="closed", who="a", why="b")])
    conn.execute("ROLLBACK")
    assert changelog.pending(conn, "x") == before


def test_each_consumer_reads_each_change_once_by_its_own_cursor():
    conn, correlator = new_store(), Correlator(CorrelateSettings(), fixed_clock)
    apply(correlator, conn, [make_alert(1, actor="E1"), make_alert(2, actor="E2")])
    conn.execute("BEGIN")
    first = changelog.read(conn, "respond", limit=1)
    changelog.advance(conn, "respond", first[-1].seq)
    conn.execute("COMMIT")
    rest = changelog.read(conn, "respond")
    assert [c.seq for c in rest] == [first[0].seq + 1]
    assert len(changelog.read(conn, "elastic.incidents")) == 2  # another consumer, its own cursor
    conn.execute("BEGIN")
    changelog.advance(conn, "respond", first[0].seq - 1)  # never backwards
    conn.execute("COMMIT")
    assert changelog.cursor(conn, "respond") == first[0].seq
    with pytest.raises(CorrelateError, match="inside"):
        changelog.advance(conn, "respond", 99)  # outside a transaction the move is not atomic


_WRITE = re.compile(
    r"\b(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM|REPLACE\s+INTO)\s+(?:main\.)?(\w+)",
    re.IGNORECASE)


def test_only_correlate_writes_the_incident_tables():
    """The one-writer rule, checked over the package's SQL text (migrations create them)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("correlate/", "store/migrations/")):
            continue
        for table in _WRITE.findall(path.read_text(encoding="utf-8")):
            if table in TABLES:
                offenders.append(f"{rel}: writes {table}")
    assert offenders == []


def test_the_one_writer_check_would_see_a_write():
    assert _WRITE.findall('conn.execute("UPDATE incidents SET status = ?")') == ["incidents"]
    assert _WRITE.findall("INSERT OR IGNORE INTO main.alerts (x) VALUES (1)") == ["alerts"]
