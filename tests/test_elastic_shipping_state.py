"""What `status` and the metrics say about the shipper, from the store and the shipper object.

The cluster here is a loopback port that accepts connections and never answers (what
a paused or wedged Elasticsearch looks like to a client), so these run without one;
the daemon against a paused real server is in test_elastic_visibility_e2e.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from auditd.settings import Settings
from auditd.elastic.client import TRANSPORT_LOGGER, build_client
from auditd.elastic.settings import ElasticSettings, ShipSettings
from auditd.ops.shipping import (
    EVENTS_KEY,
    RECORD_EVERY_S,
    SHIPPER_KEY,
    STALE_AFTER_S,
    ShipperHealth,
    ShipperRecord,
    read_backlog,
    write_shipper_record,
)
from auditd.elastic.sink import EventShipper
from auditd.elastic.testing import T0, fill_store, scratch_settings, synthetic_events
from auditd.enrich.pseudonym import create_key_file
from auditd.ops.metrics import Metrics
from auditd.ops.status import collect_status
from auditd.ops.status_text import render_status
from auditd.store.sqlite import Store

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A loopback port whose kernel completes every connection and nobody ever reads."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def settings_for(elastic: ElasticSettings | None, state_dir: Path) -> Settings:
    return Settings(state_dir=state_dir, sources=[], pseudonym=None, elastic=elastic)  # status reads neither


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def stored_record(path: Path) -> ShipperRecord | None:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (SHIPPER_KEY,)).fetchone()
    return None if row is None else msgspec.json.decode(row[0], type=ShipperRecord)


def test_a_cluster_that_never_answers_shows_as_backlog_and_error(tmp_path: Path, black_hole: str) -> None:
    db = tmp_path / "neo-auditd.db"
    fill_store(db, synthetic_events(1500), batch=500).close()  # three segments
    with sqlite3.connect(db) as conn:
        stored_bytes = conn.execute("SELECT SUM(length(doc)) FROM event_segments").fetchone()[0]
    elastic = dataclasses.replace(
        scratch_settings(black_hole, ship=ShipSettings(retry_backoff_initial_s=0.1, retry_backoff_max_s=0.5)),
        request_timeout_s=1)
    shipper = EventShipper(build_client(elastic), db, elastic, agent="host-a")
    metrics = Metrics(db, clock=lambda: NOW.timestamp())
    metrics.watch_shipper(shipper)
    shipper.start()
    try:
        wait_for(lambda: (r := stored_record(db)) is not None and r.state == "retrying", "a retrying record")
        status = collect_status(db, settings_for(elastic, tmp_path), NOW)
        scraped = samples(metrics)
    finally:
        shipper.stop(drain_timeout=0.5)

    es = status.elasticsearch
    assert es is not None and es.state == "retrying" and es.shipping
    assert es.backlog.events == 1500 and es.backlog.bytes == stored_bytes
    assert es.backlog.oldest_event_at == T0
    assert "ConnectionTimeout" in es.record.last_error and es.record.last_error_at is not None
    assert es.record.last_shipped_at is None and es.dead_letters == 0
    text = render_status(status)
    assert "  shipper:      RETRYING since " in text
    assert "  backlog:      1,500 events, " in text and "oldest event 2026-03-02 09:00:00+08:00" in text
    assert "  last error:   " in text and "ConnectionTimeout" in text

    assert scraped[("neo_auditd_elastic_backlog_events", frozenset())] == 1500
    assert scraped[("neo_auditd_elastic_backlog_bytes", frozenset())] == stored_bytes
    assert scraped[("neo_auditd_elastic_oldest_unshipped_event_timestamp_seconds", frozenset())] == T0.timestamp()
    assert scraped[("neo_auditd_elastic_shipper_state", frozenset({("state", "retrying")}))] == 1
    assert scraped[("neo_auditd_elastic_shipper_state", frozenset({("state", "running")}))] == 0
    assert ("neo_auditd_elastic_last_error_timestamp_seconds", frozenset()) in scraped
    assert scraped[("neo_auditd_elastic_request_failures_total", frozenset())] >= 1

    # stopped: the record says so, and the backlog is still there for the next start
    after = collect_status(db, settings_for(elastic, tmp_path), NOW).elasticsearch
    assert after.state == "stopped" and after.backlog.events == 1500


def test_backlog_counts_the_unshipped_share_of_the_cursor_segment(tmp_path: Path) -> None:
    db = tmp_path / "neo-auditd.db"
    store = fill_store(db, synthetic_events(1000), batch=400)  # segments of 400, 400, 200
    seqs = [row[0] for row in store.conn.execute("SELECT seq FROM event_segments ORDER BY seq")]
    sizes = [row[0] for row in store.conn.execute("SELECT length(doc) FROM event_segments ORDER BY seq")]
    store.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (EVENTS_KEY, f"{seqs[0]}:100"))
    backlog = read_backlog(store.conn)
    assert backlog.events == 300 + 400 + 200
    assert backlog.bytes == sizes[0] * 300 // 400 + sizes[1] + sizes[2]
    assert backlog.oldest_event_at == T0  # the half-shipped segment counts from its first event

    store.conn.execute("UPDATE meta SET value = ? WHERE key = ?", (f"{seqs[1]}:400", EVENTS_KEY))
    later = read_backlog(store.conn)
    assert (later.events, later.bytes) == (200, sizes[2])
    assert later.oldest_event_at == T0 + dt.timedelta(milliseconds=50) * 800

    store.conn.execute("UPDATE meta SET value = ? WHERE key = ?", (f"{seqs[2]}:200", EVENTS_KEY))
    assert read_backlog(store.conn) == msgspec.convert({"events": 0, "bytes": 0, "oldest_event_at": None},
                                                       type=type(later))
    store.close()


def test_a_stale_record_says_unknown_and_no_shipping_says_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "neo-auditd.db").open()
    assert collect_status(store.path, settings_for(None, tmp_path), NOW).elasticsearch is None
    old = NOW - dt.timedelta(seconds=STALE_AFTER_S + 1)
    write_shipper_record(store.conn, ShipperRecord(state="retrying", since=old, recorded_at=old,
                                                   last_error="ConnectionTimeout: x", last_error_at=old))
    status = collect_status(store.path, settings_for(None, tmp_path), NOW)
    assert status.elasticsearch.state == "unknown"  # the daemon was killed, or the shipper hangs
    assert "no word from the shipper lately; is the daemon running?" in render_status(status)
    store.close()


def test_health_is_recorded_at_changes_and_as_a_heartbeat() -> None:
    now = [NOW]
    health = ShipperHealth(lambda: now[0])
    health.started()
    assert health.due().state == "running"
    assert health.due() is None  # nothing new
    health.failed("ConnectionTimeout: a", refused=False)
    first = health.due()
    assert (first.state, first.last_error) == ("retrying", "ConnectionTimeout: a")
    health.failed("ConnectionTimeout: a", refused=False)
    assert health.due() is None  # the same failure again: no write per retry
    now[0] += dt.timedelta(seconds=RECORD_EVERY_S)
    assert health.due().recorded_at == now[0]  # but a heartbeat
    health.failed("index template conflict", refused=True)
    assert health.refused and health.due().state == "refused"
    health.succeeded(shipped=True)
    record = health.due()
    assert record.state == "running" and record.last_shipped_at == now[0]
    assert record.last_error == "index template conflict"  # kept for status after recovery


def test_request_lines_go_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
    es = build_client(ElasticSettings(hosts=[f"http://127.0.0.1:{port}"], request_timeout_s=1))
    with caplog.at_level(logging.INFO):
        with pytest.raises(Exception):
            es.indices.exists(index="x")
    assert not [r for r in caplog.records if r.name == TRANSPORT_LOGGER]
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(Exception):
            es.indices.exists(index="x")
    lines = [r for r in caplog.records if r.name == TRANSPORT_LOGGER]
    assert lines and all(r.levelno == logging.DEBUG for r in lines)
    assert "HEAD http://127.0.0.1" in lines[0].getMessage()


def test_check_warns_when_it_cannot_ask_the_cluster(tmp_path: Path) -> None:
    create_key_file(tmp_path / "pseudonym.key")
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\nsources: []\npseudonym:\n  key_file: pseudonym.key\n"
                      "elastic:\n  hosts: ['http://127.0.0.1:9']\n")
    result = subprocess.run([sys.executable, "-m", "auditd.cli", "check", "-c", str(config), "--as-of", "2026-01-01"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"warning: {config}:6:10: elastic.hosts: could not ask Elasticsearch (http://127.0.0.1:9)" \
        in result.stderr
    offline = subprocess.run([sys.executable, "-m", "auditd.cli", "check", "-c", str(config), "--offline",
                              "--as-of", "2026-01-01"], capture_output=True, text=True, timeout=120)
    assert offline.returncode == 0 and "warning" not in offline.stderr, offline.stderr


def test_an_index_inside_the_events_pattern_is_a_config_error() -> None:
    settings = ElasticSettings(hosts=["http://127.0.0.1:9200"], events_data_stream="logs-neo_auditd.access-default",
                               alerts_index="logs-neo_auditd.access-alerts")
    problems = dict(settings.check())
    assert "matches 'logs-neo_auditd.access-*'" in problems["alerts_index"]
    assert "incidents_index" not in problems


def test_a_restarted_shipper_keeps_the_last_error_and_shipment_for_status(tmp_path: Path, black_hole: str) -> None:
    store = Store(tmp_path / "neo-auditd.db").open()
    earlier = NOW - dt.timedelta(hours=1)
    write_shipper_record(store.conn, ShipperRecord(state="stopped", since=earlier, recorded_at=earlier,
                                                   last_error="ConnectionTimeout: x", last_error_at=earlier,
                                                   last_shipped_at=earlier))
    store.close()
    elastic = scratch_settings(black_hole)
    shipper = EventShipper(build_client(elastic), tmp_path / "neo-auditd.db", elastic, agent="host-a",
                           clock=lambda: NOW).open()
    stats = shipper.stats()
    shipper.close()
    assert (stats.last_error, stats.last_error_at, stats.last_shipped_at) == ("ConnectionTimeout: x", earlier, earlier)
