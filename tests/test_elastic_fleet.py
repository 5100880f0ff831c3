"""One incident of record across the fleet: two daemons on one Elasticsearch, fed the
same input, one of them killed with SIGKILL and restarted, hold and replicate the same
incidents as one daemon alone."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from auditd.enrich.pseudonym import create_key_file

pytestmark = [pytest.mark.elasticsearch, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
LINES = 8000


@pytest.fixture(scope="module")
def shared_log(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fleet-input")
    subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--out", str(out), "--lines", str(LINES),
                    "--seed", "3", "--days", "2"], check=True, capture_output=True)
    return out / "access.log"


def _config(folder: Path, key: Path, log: Path, url: str, tag: str, agent: str) -> Path:
    folder.mkdir(parents=True)
    config = folder / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        f"sources:\n  - name: crm\n    paths: ['{log}']\n    format: neo-crm\n    poll_interval_s: 0.2\n"
        f"pseudonym:\n  key_file: {key}\n"
        f"directory:\n  path: {REPO / 'examples' / 'directory.yaml'}\n"
        f"rules:\n  paths: [{REPO / 'examples' / 'rules.d'}]\n"
        "pipeline: {batch_records: 500}\n"
        "ops:\n  metrics: {enabled: false}\n"
        "elastic:\n"
        f"  hosts: ['{url}']\n  node_name: {agent}\n  number_of_replicas: 0\n"
        f"  events_data_stream: logs-neo_auditd.{tag}-default\n"
        f"  alerts_index: neo-{tag}-alerts\n  incidents_index: neo-{tag}-incidents\n  leases_index: neo-{tag}-leases\n"
        "  ship: {idle_poll_s: 0.2}\n")
    return config


def _start(config: Path) -> subprocess.Popen:
    log = open(config.parent / "daemon.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)


def _q(config: Path, sql: str):
    db = config.parent / "state" / "neo-auditd.db"
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return None


def _events(config: Path) -> int:
    rows = _q(config, "SELECT COALESCE(SUM(count), 0) FROM event_segments")
    return rows[0][0] if rows else 0


def _fleet_keys(config: Path) -> set[str]:
    return {r[0] for r in _q(config, "SELECT fleet_key FROM incidents") or []}


def _replica(es: Elasticsearch, index: str) -> dict[str, dict]:
    es.indices.refresh(index=index)
    hits = es.search(index=index, size=10_000, query={"match_all": {}})["hits"]["hits"]
    return {h["_id"]: h["_source"]["neo"]["incident"] for h in hits}


def _settled(configs: list[Path], es: Elasticsearch, index: str) -> bool:
    """Every daemon has every event, and its incidents are replicated."""
    for config in configs:
        if _events(config) != LINES:
            return False
        pending = _q(config, "SELECT COUNT(*) FROM incident_changes WHERE seq > COALESCE("
                             "(SELECT seq FROM change_cursors WHERE consumer = 'elastic.incidents'), 0)")
        if not pending or pending[0][0]:
            return False
    return set(_replica(es, index)) == set().union(*(_fleet_keys(c) for c in configs))


def _cluster_alerts(es: Elasticsearch, index: str) -> set[str]:
    try:
        es.indices.refresh(index=index)
        hits = es.search(index=index, size=10_000, query={"term": {"neo.alert.origin": "cluster"}})["hits"]["hits"]
    except Exception:  # noqa: BLE001 - not created yet
        return set()
    return {h["_id"] for h in hits}


def _wait(predicate, what: str, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(p.read_text()[-1500:] for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def _run_to_the_end(configs: list[Path], es: Elasticsearch, tag: str, *, kill_one: bool) -> None:
    procs = [_start(c) for c in configs]
    logs = [c.parent / "daemon.log" for c in configs]
    try:
        if kill_one:
            _wait(lambda: _events(configs[1]) > LINES // 4, "the second daemon under way", 120, logs)
            procs[1].send_signal(signal.SIGKILL)
            procs[1].wait(timeout=30)
            time.sleep(1)
            procs[1] = _start(configs[1])
        _wait(lambda: _settled(configs, es, f"neo-{tag}-incidents"), "the fleet to settle", 300, logs)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)


def test_two_daemons_and_a_kill_hold_the_incidents_of_one(tmp_path, elasticsearch_url, shared_log):
    es = Elasticsearch(elasticsearch_url)
    key = tmp_path / "pseudonym.key"
    create_key_file(key)

    solo_tag = f"solo{uuid.uuid4().hex[:6]}"
    solo = _config(tmp_path / "solo", key, shared_log, elasticsearch_url, solo_tag, "solo")
    _run_to_the_end([solo], es, solo_tag, kill_one=False)
    reference = _fleet_keys(solo)
    solo_replica = _replica(es, f"neo-{solo_tag}-incidents")
    assert reference and set(solo_replica) == reference

    pair_tag = f"pair{uuid.uuid4().hex[:6]}"
    pair = [_config(tmp_path / name, key, shared_log, elasticsearch_url, pair_tag, name) for name in ("a", "b")]
    _run_to_the_end(pair, es, pair_tag, kill_one=True)
    replica = _replica(es, f"neo-{pair_tag}-incidents")

    print(f"incidents: one daemon {len(reference)}, two daemons {len(replica)} in the replica, "
          f"{len(_fleet_keys(pair[0]))} and {len(_fleet_keys(pair[1]))} in their stores")
    def describe(config: Path, keys: set[str]) -> list:
        marks = ",".join("?" * len(keys))
        return _q(config, f"SELECT fleet_key, group_key, first_seen, last_seen, rules, alert_count FROM incidents"
                          f" WHERE fleet_key IN ({marks})".replace("IN ()", "IN ('')"), ) if not keys else [
            r for r in _q(config, "SELECT fleet_key, group_key, first_seen, last_seen, rules, alert_count"
                                  " FROM incidents") or [] if r[0] in keys]

    for config in pair:
        extra, missing = _fleet_keys(config) - reference, reference - _fleet_keys(config)
        assert not extra and not missing, (config.parent.name, describe(config, extra), describe(solo, missing))
    assert set(replica) == reference  # one document per episode, not one per daemon
    shape = lambda inc: (inc["group_key"], inc["alert_count"], inc["rules"], inc["tier"])  # noqa: E731
    assert sorted(map(shape, replica.values())) == sorted(map(shape, solo_replica.values()))
