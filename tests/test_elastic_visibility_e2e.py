"""The daemon while its Elasticsearch is paused, as an operator sees it through `status`
and the metrics: the backlog grows and says why, then drains, and the index ends with
exactly what the store has."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from elastic_server import ElasticServer, require_restartable
from elasticsearch import Elasticsearch
from prometheus_client.parser import text_string_to_metric_families

from auditd.elastic.testing import unique_name
from auditd.enrich.pseudonym import create_key_file

pytestmark = [pytest.mark.elasticsearch, pytest.mark.slow]


def line(n: int) -> str:
    return json.dumps({
        "ts": f"2026-11-02T10:{n // 60 % 60:02d}:{n % 60:02d}.000+08:00", "app": "crm", "host": "crm-web-01",
        "req": f"r-{n:08d}", "emp": {"id": f"E{10000 + n % 7}", "name": "x"}, "ip": "10.20.1.5",
        "op": "order.view", "res": {"type": "order", "id": f"O{n:09d}", "store": "S011"},
        "subjects": [f"C{n:08d}"], "count": 1, "fields": ["items"], "masked": True, "result": "ok",
    }) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


class Deployment:
    def __init__(self, folder: Path, url: str) -> None:
        self.folder = folder
        self.stream = f"logs-neo_auditd.{unique_name('vis')}-default"
        self.port = free_port()
        tag = unique_name("vis")
        create_key_file(folder / "pseudonym.key")
        (folder / "logs").mkdir()
        self.log = folder / "logs" / "access.log"
        self.config = folder / "config.yaml"
        self.config.write_text(
            "state_dir: state\n"
            "sources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n    poll_interval_s: 0.2\n"
            "pseudonym:\n  key_file: pseudonym.key\n"
            "rules:\n  include_shipped: false\n"
            f"ops:\n  metrics: {{listen: 127.0.0.1, port: {self.port}}}\n"
            "elastic:\n"
            f"  hosts: ['{url}']\n"
            f"  events_data_stream: {self.stream}\n"
            f"  alerts_index: neo-{tag}-alerts\n  incidents_index: neo-{tag}-incidents\n"
            f"  leases_index: neo-{tag}-leases\n"
            "  number_of_replicas: 0\n"
            "  request_timeout_s: 3\n"
            "  ship: {retry_backoff_initial_s: 0.2, retry_backoff_max_s: 2, idle_poll_s: 0.2}\n"
        )

    def append(self, first: int, count: int) -> None:
        with open(self.log, "a") as fh:
            fh.writelines(line(n) for n in range(first, first + count))

    def status(self) -> dict:
        result = subprocess.run([sys.executable, "-m", "auditd.cli", "status", "-c", str(self.config), "--json"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def status_text(self) -> str:
        return subprocess.run([sys.executable, "-m", "auditd.cli", "status", "-c", str(self.config)],
                              capture_output=True, text=True, timeout=60).stdout

    def ready(self, daemon: subprocess.Popen) -> bool:
        assert daemon.poll() is None, "the daemon died"
        try:
            self.scrape()
        except OSError:
            return False
        return True

    def scrape(self) -> dict[tuple[str, tuple], float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stored_events(self) -> int:
        with sqlite3.connect(self.folder / "state" / "neo-auditd.db", timeout=10) as conn:
            return conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_segments").fetchone()[0]


def test_a_paused_cluster_shows_as_backlog_and_error_then_drains(
        elasticsearch_server: ElasticServer, tmp_path: Path) -> None:
    require_restartable(elasticsearch_server)
    site = Deployment(tmp_path, elasticsearch_server.url)
    with open(tmp_path / "daemon.log", "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(site.config)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: site.ready(daemon), "the daemon to be up")
        site.append(0, 2000)
        wait_for(lambda: site.status().get("elasticsearch", {}).get("backlog", {}).get("events") == 0
                 and site.stored_events() == 2000, "the first 2,000 events shipped")

        with elasticsearch_server.paused():
            site.append(2000, 3000)
            wait_for(lambda: site.stored_events() == 5000, "the store to take all 5,000 events")
            during = wait_for(lambda: (s := site.status()["elasticsearch"])["state"] == "retrying" and s,
                              "status to say the shipper is retrying")
            metrics = site.scrape()
            text = site.status_text()

        assert during["backlog"]["events"] == 3000 and during["backlog"]["bytes"] > 0
        assert during["backlog"]["oldest_event_at"] == "2026-11-02T02:00:00Z"  # line 3600: 10:00:00 in Shanghai
        assert "ConnectionTimeout" in during["record"]["last_error"]
        assert metrics[("neo_auditd_elastic_backlog_events", ())] == 3000
        assert metrics[("neo_auditd_elastic_shipper_state", (("state", "retrying"),))] == 1
        assert ("neo_auditd_elastic_last_error_timestamp_seconds", ()) in metrics
        assert "  shipper:      RETRYING since" in text and "  backlog:      3,000 events" in text
        assert "ConnectionTimeout" in text

        after = wait_for(lambda: (s := site.status()["elasticsearch"])["backlog"]["events"] == 0 and s,
                         "the backlog to drain after the cluster resumed")
        assert after["state"] == "running" and after["dead_letters"] == 0
        assert "ConnectionTimeout" in after["record"]["last_error"]  # kept: what happened, and when
        assert "caught up" in site.status_text()
        es = Elasticsearch(elasticsearch_server.url, request_timeout=30)
        es.indices.refresh(index=site.stream)
        assert es.count(index=site.stream)["count"] == site.stored_events() == 5000
        assert site.scrape()[("neo_auditd_elastic_backlog_events", ())] == 0
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=90) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert '"log.logger":"elastic_transport.transport"' not in log  # per-request lines are DEBUG now
