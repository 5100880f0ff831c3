"""The shipper against a real Elasticsearch: every event once, through an outage too."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from pathlib import Path

import msgspec
import pytest
from elastic_server import ElasticServer, require_restartable
from elasticsearch import Elasticsearch

from auditd.correlate import Transition, act
from auditd.correlate.incidents import Correlator
from auditd.correlate.settings import CorrelateSettings
from auditd.detect.alert import Alert, alert_id
from auditd.elastic import templates
from auditd.elastic.client import build_client
from auditd.elastic.feeds import EVENTS_KEY
from auditd.elastic.settings import ElasticSettings
from auditd.elastic.sink import EventShipper, dead_letter_count, unshipped_guard_sql
from auditd.elastic.testing import T0, fill_store, scratch_settings, synthetic_events
from auditd.store.sqlite import Store

pytestmark = pytest.mark.elasticsearch


@pytest.fixture
def setup(elasticsearch_url: str) -> tuple[ElasticSettings, Elasticsearch]:
    settings = scratch_settings(elasticsearch_url)
    es = build_client(settings)
    templates.install(es, settings)
    return settings, es


def indexed(es: Elasticsearch, index: str) -> int:
    es.indices.refresh(index=index)
    return es.count(index=index)["count"]


def distinct_event_ids(es: Elasticsearch, index: str) -> int:
    """Exact: page through every event.id with a composite aggregation."""
    distinct, after = 0, None
    while True:
        composite = {"size": 10_000, "sources": [{"id": {"terms": {"field": "event.id"}}}]}
        if after:
            composite["after"] = after
        page = es.search(index=index, size=0, aggs={"ids": {"composite": composite}})["aggregations"]["ids"]
        distinct += len(page["buckets"])
        after = page.get("after_key")
        if not page["buckets"] or after is None:
            return distinct


def duplicated_ids(es: Elasticsearch, index: str) -> list[str]:
    response = es.search(index=index, size=0, aggs={
        "dupes": {"terms": {"field": "event.id", "min_doc_count": 2, "size": 10}}})
    return [b["key"] for b in response["aggregations"]["dupes"]["buckets"]]


def test_ships_100000_events_exactly_once(setup, tmp_path: Path) -> None:
    settings, es = setup
    fill_store(tmp_path / "neo.db", synthetic_events(100_000)).close()
    shipper = EventShipper(es, tmp_path / "neo.db", settings, agent="host-a")

    assert shipper.ship_pending() == 100_000

    assert indexed(es, settings.events_data_stream) == 100_000
    assert shipper.lag() == 0
    stats = shipper.stats()
    assert (stats.events_written, stats.dead_letters, stats.already_present) == (100_000, 0, 0)
    shipper.close()


def test_shipping_again_from_scratch_duplicates_nothing(setup, tmp_path: Path) -> None:
    settings, es = setup
    fill_store(tmp_path / "neo.db", synthetic_events(3000)).close()
    EventShipper(es, tmp_path / "neo.db", settings, agent="host-a").ship_pending()
    with sqlite3.connect(tmp_path / "neo.db") as conn:  # as if the position was lost in a crash
        conn.execute("DELETE FROM meta WHERE key = ?", (EVENTS_KEY,))

    again = EventShipper(es, tmp_path / "neo.db", settings, agent="host-a")
    again.ship_pending()

    assert again.stats().already_present == 3000
    assert indexed(es, settings.events_data_stream) == 3000


def test_outage_of_30_seconds_loses_and_doubles_nothing(
        elasticsearch_server: ElasticServer, setup, tmp_path: Path) -> None:
    require_restartable(elasticsearch_server)
    settings, es = setup
    total, chunk = 100_000, 2_000
    events = list(synthetic_events(total))
    store = Store(tmp_path / "neo.db").open()
    writer_done = threading.Event()
    outage = threading.Event()

    def pipeline_writes() -> None:  # the pipeline keeps committing while the cluster is away
        for start in range(0, total, chunk):
            if start == total // 2:  # the second half only once the cluster is down, however slow it stops
                outage.wait(300)
            with store.transaction() as conn:
                store.insert_events(conn, "crm", events[start:start + chunk])
            time.sleep(0.4)
        writer_done.set()

    shipper = EventShipper(es, tmp_path / "neo.db", settings, agent="host-a")
    shipper.start()
    writer = threading.Thread(target=pipeline_writes)
    writer.start()
    try:
        wait_for(lambda: shipper.stats().events_written >= 10_000, 60, "shipping to begin")
        elasticsearch_server.stop()
        outage.set()
        time.sleep(30)
        lag_during_outage = shipper.lag()
        elasticsearch_server.start()
        writer.join()
        wait_for(lambda: shipper.lag() == 0, 180, "the backlog to drain")
    finally:
        writer.join()
        drained = shipper.stop(drain_timeout=30)
    stats = shipper.stats()

    assert drained and writer_done.is_set()
    assert lag_during_outage > 0 and stats.failures > 0  # the outage was really in the middle
    assert indexed(es, settings.events_data_stream) == total
    assert duplicated_ids(es, settings.events_data_stream) == []
    assert distinct_event_ids(es, settings.events_data_stream) == total
    assert stats.dead_letters == 0


def test_a_document_its_mapping_refuses_is_dead_lettered_once(setup, tmp_path: Path) -> None:
    settings, es = setup
    events = list(synthetic_events(50))
    events[20] = msgspec.structs.replace(events[20], record_count=2**63)  # above a long's range
    fill_store(tmp_path / "neo.db", events).close()

    shipper = EventShipper(es, tmp_path / "neo.db", settings, agent="host-a")
    shipper.ship_pending()
    shipper.ship_pending()  # a second pass does not try it again

    assert shipper.lag() == 0
    assert shipper.stats().dead_letters == 1
    assert indexed(es, settings.events_data_stream) == 49
    with sqlite3.connect(tmp_path / "neo.db") as conn:
        assert dead_letter_count(conn) == 1
        feed, doc_id, status, reason = conn.execute(
            "SELECT feed, doc_id, status, reason FROM elastic_dead_letters").fetchone()
    assert (feed, doc_id, status) == ("events", events[20].event_id, 400)
    assert "neo.data.record_count" in reason


def test_alerts_and_incident_snapshots_are_shipped_and_kept_current(setup, tmp_path: Path) -> None:
    settings, es = setup
    events = list(synthetic_events(30))
    store = fill_store(tmp_path / "neo.db", [])
    alerts = [Alert(alert_id=alert_id("export-many", e.event_id), rule_id="export-many", rule_kind="match",
                    severity="high", title="Bulk export", timestamp=e.timestamp, event_ids=(e.event_id,),
                    actor="E1001", subject_ids=e.subject_ids, categories=e.categories, record_count=e.record_count)
              for e in events[:5]]
    correlator = Correlator(CorrelateSettings())
    with store.transaction() as conn:
        store.insert_events(conn, "crm", events)
        (change,) = correlator.apply(conn, alerts)
    shipper = EventShipper(es, tmp_path / "neo.db", settings, agent="host-a")
    shipper.ship_pending()

    assert indexed(es, settings.alerts_index) == 5
    (doc_id,) = store.conn.execute("SELECT fleet_key FROM incidents").fetchone()
    first = es.get(index=settings.incidents_index, id=doc_id)  # keyed by the fleet key, not the daemon
    assert first["_source"]["neo"]["incident"]["alert_count"] == 5
    assert first["_source"]["neo"]["incident"]["status"] == "open"
    assert first["_source"]["neo"]["incident"]["local_id"] == change.incident_id
    assert first["_version"] == change.version  # the incident's version
    alert_doc = es.search(index=settings.alerts_index, size=1)["hits"]["hits"][0]["_source"]
    assert alert_doc["neo"]["alert"]["incident_id"] == doc_id

    act(store.conn, Transition(incident_id=change.incident_id, status="triaged", who="alice", why="looking into it"))
    shipper.ship_pending()
    second = es.get(index=settings.incidents_index, id=doc_id)
    assert second["_source"]["neo"]["incident"]["status"] == "triaged"
    assert second["_version"] > first["_version"]  # the version is the timeline's length
    shipper.ship_pending()  # nothing new: no write
    assert es.get(index=settings.incidents_index, id=doc_id)["_version"] == second["_version"]
    assert store.conn.execute("SELECT seq FROM change_cursors WHERE consumer = 'elastic.incidents'").fetchone()[0] \
        == store.conn.execute("SELECT MAX(seq) FROM incident_changes").fetchone()[0]
    # a second daemon that saw the same episode writes the same document, not one of its own
    other = EventShipper(es, tmp_path / "neo.db", settings, agent="host-b")
    store.conn.execute("DELETE FROM change_cursors")
    other.ship_pending()
    es.indices.refresh(index=settings.incidents_index)
    assert es.count(index=settings.incidents_index)["count"] == 1
    store.close()


def test_retention_guard_keeps_unshipped_segments(tmp_path: Path) -> None:
    store = fill_store(tmp_path / "neo.db", synthetic_events(100), batch=10)  # segments 1..10
    guard = f"SELECT seq FROM event_segments WHERE {unshipped_guard_sql()}"
    assert store.conn.execute(guard).fetchall() == []  # nothing shipped yet
    with store.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, '4:3')", (EVENTS_KEY,))
    assert [seq for (seq,) in store.conn.execute(guard)] == [1, 2, 3]  # segment 4 is half shipped
    store.close()


def test_segments_larger_than_a_bulk_are_shipped_in_pages(setup, tmp_path: Path) -> None:
    settings, es = setup
    settings = dataclasses.replace(settings, ship=dataclasses.replace(settings.ship, bulk_max_docs=700))
    fill_store(tmp_path / "neo.db", synthetic_events(5000), batch=2000).close()  # 2000, 2000, 1000
    shipper = EventShipper(es, tmp_path / "neo.db", settings, agent="host-a")
    assert shipper.lag() == 0  # not opened yet
    shipper.open()
    assert shipper.lag() == 5000
    shipper.ship_pending()
    assert (shipper.lag(), shipper.stats().requests) == (0, 8)  # ceil(2000/700) * 2 + ceil(1000/700)
    assert indexed(es, settings.events_data_stream) == 5000
    with sqlite3.connect(tmp_path / "neo.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = ?", (EVENTS_KEY,)).fetchone() == ("3:1000",)


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def test_events_keep_their_time(setup, tmp_path: Path) -> None:
    settings, es = setup
    fill_store(tmp_path / "neo.db", synthetic_events(3)).close()
    EventShipper(es, tmp_path / "neo.db", settings, agent="host-a").ship_pending()
    es.indices.refresh(index=settings.events_data_stream)
    hit = es.search(index=settings.events_data_stream, sort=[{"@timestamp": "asc"}], size=1)["hits"]["hits"][0]
    assert hit["_source"]["@timestamp"] == T0.isoformat()
    assert hit["_source"]["agent"] == {"name": "host-a", "type": "neo-auditd"}
    assert "ingested" in hit["_source"]["event"]


def test_without_a_cluster_nothing_moves_and_stop_gives_up_in_time(tmp_path: Path) -> None:
    settings = dataclasses.replace(scratch_settings("http://127.0.0.1:9"), request_timeout_s=2)  # nothing listens
    fill_store(tmp_path / "neo.db", synthetic_events(500)).close()
    shipper = EventShipper(build_client(settings), tmp_path / "neo.db", settings, agent="host-a")
    shipper.start()
    wait_for(lambda: shipper.stats().failures >= 2, 30, "a few failed attempts")

    started = time.monotonic()
    drained = shipper.stop(drain_timeout=1)

    assert not drained and time.monotonic() - started < 10
    assert shipper.stats().events_written == 0
    with sqlite3.connect(tmp_path / "neo.db") as conn:  # the position never moved: all 500 are shipped later
        assert conn.execute("SELECT value FROM meta WHERE key = ?", (EVENTS_KEY,)).fetchone() is None
