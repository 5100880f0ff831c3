"""Failover of a cluster rule between two real daemons: the lease holder is killed
with SIGKILL in the middle of the events, the other goes on from its position and
state, the killed one comes back. Each alert once: counted by alert id in the alerts
index, in each daemon's store and in the incidents replica."""

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

from auditd.elastic import templates
from auditd.elastic.client import build_client
from auditd.elastic.settings import ElasticSettings
from auditd.enrich.pseudonym import create_key_file
from test_elastic_cluster_rules import RULES, local_alerts, mixed_events, scoped, ship

pytestmark = [pytest.mark.elasticsearch, pytest.mark.slow]

RULE = "many_customers"


def _config(folder: Path, key: Path, url: str, tag: str, agent: str, rules: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "logs").mkdir()
    (folder / "logs" / "access.log").write_text("")
    config = folder / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - {name: crm, paths: [logs/access.log], format: neo-crm, poll_interval_s: 0.2}\n"
        f"pseudonym:\n  key_file: {key}\n"
        f"rules:\n  include_shipped: false\n  paths: [{rules}]\n"
        "ops:\n  metrics: {enabled: false}\n"
        "elastic:\n"
        f"  hosts: ['{url}']\n  node_name: {agent}\n  number_of_replicas: 0\n"
        f"  events_data_stream: logs-neo_auditd.{tag}-default\n"
        f"  alerts_index: neo-{tag}-alerts\n  incidents_index: neo-{tag}-incidents\n  leases_index: neo-{tag}-leases\n"
        "  ship: {idle_poll_s: 0.2}\n"
        "  cluster: {partitions: 1, lease_ttl: 6s, heartbeat: 2s, clock_skew: 1s, evaluate_every: 1s,\n"
        "            settle: 1s, start_at: beginning, page_size: 100, max_events_per_round: 100}\n")
    return config


def _start(config: Path) -> subprocess.Popen:
    log = open(config.parent / "daemon.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)


def _q(config: Path, sql: str) -> list:
    db = config.parent / "state" / "neo-auditd.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


def _head(es: Elasticsearch, index: str) -> dict | None:
    try:
        es.indices.refresh(index=index)
        hits = es.search(index=index, size=10, query={"term": {"kind": "rule_state"}})["hits"]["hits"]
    except Exception:  # noqa: BLE001 - not created yet
        return None
    return hits[0]["_source"] if hits else None


def _holder(es: Elasticsearch, index: str) -> str | None:
    doc = es.options(ignore_status=404).get(index=index, id="default/partition/0")
    return doc.get("_source", {}).get("owner") if doc.get("found") else None


def _wait(predicate, what: str, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    tails = "\n".join(p.read_text()[-2000:] for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def test_kill_9_of_the_lease_holder_mid_way_raises_each_alert_once(tmp_path, elasticsearch_url):
    tag = f"fo{uuid.uuid4().hex[:6]}"
    key = tmp_path / "pseudonym.key"
    create_key_file(key)
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "cluster.yaml").write_text(scoped(RULES["value_count"], "cluster"))
    events = mixed_events(seed=9)
    expected = {a.alert_id for a in local_alerts(tmp_path, RULES["value_count"], events)}
    selected = sum(1 for e in events if e.action in ("read", "export"))

    settings = ElasticSettings(hosts=[elasticsearch_url], number_of_replicas=0,
                               events_data_stream=f"logs-neo_auditd.{tag}-default", alerts_index=f"neo-{tag}-alerts",
                               incidents_index=f"neo-{tag}-incidents", leases_index=f"neo-{tag}-leases")
    es = build_client(settings)
    templates.install(es, settings)
    ship(es, settings, events)  # what the fleet's hosts shipped

    configs = {name: _config(tmp_path / name, key, elasticsearch_url, tag, name, rules) for name in ("a", "b")}
    logs = [c.parent / "daemon.log" for c in configs.values()]
    procs = {name: _start(config) for name, config in configs.items()}
    try:
        _wait(lambda: (h := _head(es, settings.leases_index)) is not None and h["evaluated"] >= selected // 4,
              "the holder a quarter through", 180, logs)
        holder = _holder(es, settings.leases_index)
        at_kill = _head(es, settings.leases_index)
        assert holder in procs and at_kill["evaluated"] < selected, at_kill  # mid-way: windows still open
        procs[holder].send_signal(signal.SIGKILL)
        procs[holder].wait(timeout=30)
        _wait(lambda: _holder(es, settings.leases_index) not in (None, holder), "the takeover", 60, logs)
        procs[holder] = _start(configs[holder])  # and back
        _wait(lambda: (_head(es, settings.leases_index) or {}).get("evaluated") == selected, "the end", 300, logs)

        def stored(config: Path) -> list[str]:
            return [r[0] for r in _q(config, f"SELECT alert_id FROM alerts WHERE rule_id = '{RULE}'")]

        def replica() -> dict:
            es.indices.refresh(index=settings.incidents_index)
            hits = es.search(index=settings.incidents_index, size=1000, query={"match_all": {}})["hits"]["hits"]
            return {h["_id"]: h["_source"]["neo"]["incident"] for h in hits}

        def settled() -> bool:
            if any(set(stored(c)) != expected for c in configs.values()):
                return False
            pending = [_q(c, "SELECT COUNT(*) FROM incident_changes WHERE seq > COALESCE((SELECT seq FROM "
                             "change_cursors WHERE consumer = 'elastic.incidents'), 0)") for c in configs.values()]
            return all(p and not p[0][0] for p in pending) and \
                sum(i["alert_count"] for i in replica().values()) == len(expected)

        _wait(settled, "every daemon to hold every alert and the replica to settle", 300, logs)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=60)

    es.indices.refresh(index=settings.alerts_index)
    docs = es.search(index=settings.alerts_index, size=1000,
                     query={"term": {"neo.alert.origin": "cluster"}})["hits"]["hits"]
    ids = [d["_id"] for d in docs]
    counts = {name: stored(c) for name, c in configs.items()}
    incidents = replica()
    print(f"\nkilled {holder} at {at_kill['evaluated']} of {selected} events; expected alerts {len(expected)}; "
          f"cluster alert documents {len(ids)} ({len(set(ids))} ids); "
          + "; ".join(f"store {n}: {len(v)} rows, {len(set(v))} ids" for n, v in counts.items())
          + f"; replica: {len(incidents)} incidents, alert_count sum {sum(i['alert_count'] for i in incidents.values())}")
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected
    for rows in counts.values():
        assert len(rows) == len(set(rows)) == len(expected)
    assert sum(i["alert_count"] for i in incidents.values()) == len(expected)
