"""End to end against the real server: the daemon ships what it replays, and the cluster
source (reading an index the test filled with its own bulk call) gives the same
incidents as a file replay of the same events."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from elasticsearch import helpers

from auditd.elastic.documents import event_actions
from auditd.enrich.pseudonym import create_key_file
from auditd.store.sqlite import Store

pytestmark = [pytest.mark.elasticsearch, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def neo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *args], capture_output=True, text=True)


def write_config(folder: Path, body: str) -> Path:
    key = folder.parent / "pseudonym.key"
    if not key.exists():
        create_key_file(key)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(
        "state_dir: state\n" + body +
        f"pseudonym:\n  key_file: {key}\n"
        f"directory:\n  path: {REPO / 'examples' / 'directory.yaml'}\n"
        f"rules:\n  paths: [{REPO / 'examples' / 'rules.d'}]\n"
        "ops:\n  metrics: {enabled: false}\n"
    )
    return config


def incident_shapes(config: Path) -> list[tuple]:
    rows = json.loads(neo("incidents", "list", "-c", str(config), "--limit", "10000", "--json").stdout)
    return sorted((r["actor"], r["tier"], r["alert_count"], r["affected_count"], tuple(r["categories"]))
                  for r in rows)


@pytest.fixture(scope="module")
def example_log(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("example")
    subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--out", str(out), "--lines", "20000",
                    "--seed", "5"], check=True, capture_output=True)
    return out / "access.log"


def test_replay_ships_every_event_once(tmp_path: Path, elasticsearch_url: str, example_log: Path):
    stream = f"logs-neo_auditd.e2e{uuid.uuid4().hex[:8]}-default"
    config = write_config(tmp_path / "a", "sources:\n  - name: crm\n    paths: [logs/access.log]\n"
                          "    format: neo-crm\n"
                          f"elastic:\n  hosts: ['{elasticsearch_url}']\n  events_data_stream: {stream}\n"
                          f"  alerts_index: neo-e2e-alerts-{stream[-16:-8]}\n"
                          f"  incidents_index: neo-e2e-incidents-{stream[-16:-8]}\n")
    result = neo("replay", "-c", str(config), "--json", str(example_log))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events"] == 20000 and summary["shipped_lag"] == 0
    from elasticsearch import Elasticsearch

    es = Elasticsearch(elasticsearch_url)
    es.indices.refresh(index=stream)
    assert es.count(index=stream)["count"] == 20000
    # exactly once: no event.id twice (the data stream has one shard, so terms are exact)
    twice = es.search(index=stream, size=0, aggs={"twice": {"terms": {"field": "event.id", "min_doc_count": 2}}})
    assert twice["aggregations"]["twice"]["buckets"] == []
    es.indices.refresh(index=f"neo-e2e-alerts-{stream[-16:-8]}")
    assert es.count(index=f"neo-e2e-alerts-{stream[-16:-8]}")["count"] == summary["alerts"]


def test_cluster_source_gives_the_same_incidents_as_a_file_replay(tmp_path: Path, elasticsearch_url: str,
                                                                  example_log: Path):
    # 1. a file replay, the reference
    file_config = write_config(tmp_path / "file", "sources:\n  - name: crm\n    paths: [logs/access.log]\n"
                               "    format: neo-crm\n")
    assert neo("replay", "-c", str(file_config), "--json", str(example_log)).returncode == 0
    reference = incident_shapes(file_config)
    assert reference

    # 2. the same (enriched, pseudonymised) events, put in an index by the test's own bulk call
    store = Store(tmp_path / "file" / "state" / "neo-auditd.db").open()
    try:
        events = list(store.iter_events())
    finally:
        store.close()
    index = f"neo-e2e-src-{uuid.uuid4().hex[:8]}"
    from elasticsearch import Elasticsearch

    es = Elasticsearch(elasticsearch_url)
    es.indices.create(index=index, mappings={"properties": {"@timestamp": {"type": "date"},
                                                           "event": {"properties": {"id": {"type": "keyword"}}}}})
    ok, errors = helpers.bulk(es, event_actions(events, index), chunk_size=5000, raise_on_error=False)
    assert ok == len(events) and not errors
    es.indices.refresh(index=index)

    # 3. a daemon whose only source is that index
    cluster_config = write_config(tmp_path / "cluster", "sources: []\n"
                                  f"elastic:\n  hosts: ['{elasticsearch_url}']\n  ship: {{enabled: false}}\n"
                                  f"  sources:\n    - name: shipped\n      index: {index}\n      settle: 1s\n"
                                  "      page_size: 2000\n      poll_interval_s: 0.2\n")
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(cluster_config)],
                            stdout=log, stderr=subprocess.STDOUT)
    db = tmp_path / "cluster" / "state" / "neo-auditd.db"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as conn:
                        if conn.execute("SELECT COALESCE(SUM(count),0) FROM event_segments").fetchone()[0] \
                                >= len(events):
                            break
                except sqlite3.OperationalError:
                    pass
            time.sleep(0.2)
        else:
            raise AssertionError("the cluster source did not deliver every event: "
                                 + (tmp_path / "daemon.log").read_text()[-2000:])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert incident_shapes(cluster_config) == reference
