"""Retention on a real store: old events and quarantine go, the breach register stays."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import msgspec
import pytest

from auditd.config.located import Problems, parse_yaml
from auditd.config.typed import Duration, convert
from auditd.event import AccessEvent
from auditd.jobs.retention import PurgeReport, connect, purge, purge_store
from auditd.ops.settings import LEGAL_MINIMUM_RETENTION, OpsSettings, RetentionSettings
from auditd.store.sqlite import Store

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SETTINGS = RetentionSettings()  # 184 days for both
CUTOFF = NOW - dt.timedelta(days=184)


def event(event_id: str, at: dt.datetime) -> AccessEvent:
    return AccessEvent(timestamp=at, action="read", event_id=event_id, dataset="app.access", user_id="E1001")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "neo-auditd.db").open()
    yield store
    store.close()


def add_events(store: Store, *events: AccessEvent) -> None:
    """One segment per event, so that each event's age decides alone."""
    with store.transaction() as conn:
        for e in events:
            store.insert_events(conn, "app", [e])


def cite(store: Store, *events: AccessEvent) -> None:
    """What the pipeline does when an alert cites events: keep them as evidence."""
    with store.transaction() as conn:
        store.insert_evidence(conn, events)


def add_quarantine(store: Store, at: str) -> None:
    store.conn.execute(
        "INSERT INTO quarantine (source, path, offset, reason, length, record, at) VALUES (?,?,?,?,?,?,?)",
        ("app", "/var/log/app/access.log", 0, "bad json", 3, b"{{{", at),
    )


def add_register(store: Store, cited_event_id: str) -> None:
    """An incident with one alert citing an event, and one timeline entry."""
    at = "2026-04-01T00:00:00.000000+00:00"
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO incidents (incident_id, group_key, actor, title, tier, auto_tier, status, severity,"
            " first_seen, last_seen, discovered_at, updated_at, alert_count, affected_count, max_record_count,"
            " sensitive, band, rules, categories, timeline_seq, timeline_head)"
            " VALUES ('INC-1', 'E1001', 'E1001', 't', 'T4', 'T4', 'closed', 'high', ?, ?, ?, ?, 1, 1, 1, 0, NULL,"
            " '[\"departed-access\"]', '[]', 1, 'h1')", (at, at, at, at))
        doc = msgspec.json.encode({"alert_id": "A1", "rule_id": "departed-access", "event_ids": [cited_event_id]})
        conn.execute("INSERT INTO alerts VALUES ('A1', 'INC-1', 'departed-access', 'high', ?, ?)", (at, doc.decode()))
        conn.execute("INSERT INTO incident_timeline VALUES ('INC-1', 1, ?, 'opened', 'correlator', '{}', '', 'h1')",
                     (at,))


def event_ids(store: Store) -> list[str]:
    return [e.event_id for e in store.iter_events()]


def count(store: Store, table: str) -> int:
    if table == "events":
        return store.count_events()
    return store.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


# -- what goes and what stays ----------------------------------------------------------------
def test_purge_deletes_only_old_rows_and_keeps_the_register(store: Store, caplog) -> None:
    add_events(store,
               event("ancient", CUTOFF - dt.timedelta(days=30)),
               event("cited", CUTOFF - dt.timedelta(days=20)),
               event("just-old", CUTOFF - dt.timedelta(microseconds=1)),
               event("at-cutoff", CUTOFF),
               event("recent", NOW - dt.timedelta(days=1)))
    add_register(store, cited_event_id="cited")
    cite(store, event("cited", CUTOFF - dt.timedelta(days=20)))
    add_quarantine(store, "2026-01-01T00:00:00+00:00")  # old, no microseconds written
    add_quarantine(store, (CUTOFF + dt.timedelta(hours=1)).isoformat())
    add_quarantine(store, "not a time")  # unreadable: kept, never guessed at

    with caplog.at_level(logging.INFO, logger="neo_auditd.retention"), closing(connect(store.path)) as conn:
        report = purge(conn, NOW, SETTINGS)

    assert report == PurgeReport(events_cutoff=CUTOFF, quarantine_cutoff=CUTOFF, events_deleted=3,
                                 quarantine_deleted=1, evidence_kept=1, complete=True, seconds=report.seconds)
    assert event_ids(store) == ["at-cutoff", "recent"]
    assert [e.event_id for e in store.evidence(["cited"])] == ["cited"]  # the alert's evidence stays
    assert count(store, "quarantine") == 2
    assert (count(store, "incidents"), count(store, "alerts"), count(store, "incident_timeline")) == (1, 1, 1)

    [record] = [r for r in caplog.records if r.name == "neo_auditd.retention"]
    assert record.getMessage() == "retention purge"
    assert (record.events_deleted, record.quarantine_deleted, record.evidence_kept) == (3, 1, 1)
    assert record.events_cutoff == "2026-05-02T09:00:00+00:00"
    assert record.quarantine_cutoff == "2026-05-02T09:00:00+00:00"


def test_purge_without_correlate_tables_and_with_nothing_old(tmp_path: Path) -> None:
    store = Store(tmp_path / "plain.db").open()  # no incidents/alerts tables
    try:
        add_events(store, event("old", CUTOFF - dt.timedelta(days=1)), event("new", NOW))
        report = purge_store(store.path, SETTINGS, now=NOW)
        assert (report.events_deleted, report.evidence_kept) == (1, 0)
        assert event_ids(store) == ["new"]
        again = purge_store(store.path, SETTINGS, now=NOW)
        assert (again.events_deleted, again.quarantine_deleted) == (0, 0)
    finally:
        store.close()


def test_longer_retention_keeps_more(store: Store) -> None:
    add_events(store, event("200d", NOW - dt.timedelta(days=200)), event("400d", NOW - dt.timedelta(days=400)))
    with closing(connect(store.path)) as conn:
        report = purge(conn, NOW, RetentionSettings(events=Duration(365 * 86400)))
    assert report.events_deleted == 1
    assert event_ids(store) == ["200d"]


# -- chunks, stopping, running beside the pipeline ----------------------------------------
def test_chunks_delete_everything_and_can_stop_between_them(store: Store) -> None:
    add_events(store, *(event(f"e{i}", CUTOFF - dt.timedelta(days=1, seconds=i)) for i in range(7)))
    with closing(connect(store.path)) as conn:
        stopped = purge(conn, NOW, SETTINGS, segment_rows=3, pause_s=0, should_stop=lambda: True)
        assert (stopped.events_deleted, stopped.complete) == (3, False)
        assert event_ids(store) == ["e3", "e4", "e5", "e6"]  # the first committed went first
        finished = purge(conn, NOW, SETTINGS, segment_rows=3, pause_s=0)
    assert (finished.events_deleted, finished.complete) == (4, True)
    assert count(store, "events") == 0


def test_the_quarantine_is_searched_without_the_write_lock_and_purged_in_chunks(store: Store) -> None:
    """No index serves the quarantine's time test: the search for a chunk's rows (the
    last one reads the whole table) ran inside BEGIN IMMEDIATE, minutes on a large
    quarantine read cold, while the pipeline waited. Now it is a read of its own."""
    for i in range(7):
        add_quarantine(store, (CUTOFF - dt.timedelta(days=1, seconds=i)).isoformat())
    add_quarantine(store, "not a time")  # between old rows: kept inside a deleted range
    add_quarantine(store, (CUTOFF - dt.timedelta(days=2)).isoformat())
    add_quarantine(store, (CUTOFF + dt.timedelta(hours=1)).isoformat())
    traced: list[tuple[str, bool]] = []
    with closing(connect(store.path)) as conn:
        conn.set_trace_callback(lambda sql: traced.append((" ".join(sql.split())[:40], conn.in_transaction)))
        report = purge(conn, NOW, SETTINGS, chunk_rows=3, pause_s=0)
    assert report.quarantine_deleted == 8 and count(store, "quarantine") == 2
    searches = [inside for sql, inside in traced if sql.startswith("SELECT MIN(seq), MAX(seq), COUNT(*)")]
    deletes = [inside for sql, inside in traced if sql.startswith("DELETE FROM main.quarantine")]
    assert searches == [False] * 3 and deletes == [True] * 3  # 3 + 3 + 2 rows


def test_evidence_outlives_its_segment(store: Store) -> None:
    old = [event(f"e{i}", CUTOFF - dt.timedelta(days=1, seconds=i)) for i in range(5)]
    add_events(store, *old)
    add_register(store, cited_event_id="e0")
    cite(store, old[0])
    with closing(connect(store.path)) as conn:
        report = purge(conn, NOW, SETTINGS, segment_rows=2, pause_s=0)
    assert (report.events_deleted, report.evidence_kept) == (5, 1)
    assert event_ids(store) == []
    assert store.evidence(["e0"]) == [old[0]]


def test_purge_runs_while_the_pipeline_commits(store: Store) -> None:
    old = [event(f"old{i}", CUTOFF - dt.timedelta(days=1, seconds=i)) for i in range(3000)]
    add_events(store, *old)
    errors: list[BaseException] = []
    done = threading.Event()

    def pipeline() -> None:  # the store's own connection, on another thread, as the daemon does
        try:
            for batch in range(40):
                add_events(store, *(event(f"new{batch}-{i}", NOW) for i in range(50)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=pipeline)
    writer.start()
    with closing(connect(store.path, busy_timeout_s=10)) as conn:
        report = purge(conn, NOW, SETTINGS, chunk_rows=200, pause_s=0.001)
    writer.join(timeout=30)
    assert done.is_set() and errors == []
    assert report.events_deleted == 3000
    assert count(store, "events") == 40 * 50


# -- misuse ----------------------------------------------------------------------------------
def test_purge_refuses_naive_time_and_transactional_connections(store: Store) -> None:
    with closing(connect(store.path)) as conn, pytest.raises(ValueError, match="timezone-aware"):
        purge(conn, dt.datetime(2026, 11, 2), SETTINGS)
    legacy = sqlite3.connect(store.path)  # default isolation_level opens transactions behind our back
    try:
        with pytest.raises(ValueError, match="autocommit"):
            purge(legacy, NOW, SETTINGS)
    finally:
        legacy.close()


def test_connect_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        connect(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


# -- settings --------------------------------------------------------------------------------
def load_retention(text: str) -> tuple[OpsSettings | None, list[str]]:
    problems = Problems()
    doc = parse_yaml(text, "/etc/neo-auditd/config.yaml", problems)
    return convert(OpsSettings, doc.data, doc, (), problems), [str(p) for p in problems.items]


def test_default_retention_meets_six_calendar_months() -> None:
    assert SETTINGS.events == SETTINGS.quarantine == LEGAL_MINIMUM_RETENTION
    assert SETTINGS.check_every == Duration(3600)
    # the longest six-month span: 1 July to 1 January
    assert LEGAL_MINIMUM_RETENTION.timedelta >= dt.date(2027, 1, 1) - dt.date(2026, 7, 1)


def test_retention_below_the_legal_minimum_is_a_config_error() -> None:
    _, problems = load_retention("retention:\n  events: 180d\n  quarantine: 30d\n  check_every: 10s\n")
    assert problems == [
        "/etc/neo-auditd/config.yaml:2:11: retention.events: 180 days is shorter than the legal minimum"
        " of 184 days (网络安全法 art. 21: network logs are kept at least six months)",
        "/etc/neo-auditd/config.yaml:3:15: retention.quarantine: 30 days is shorter than the legal minimum"
        " of 184 days (网络安全法 art. 21: network logs are kept at least six months)",
        "/etc/neo-auditd/config.yaml:4:16: retention.check_every: expected at least 1m, got 10s",
    ]
    ops, problems = load_retention("retention: {events: 400d, check_every: 15m}\n")
    assert problems == [] and ops.retention.events == Duration(400 * 86400)
