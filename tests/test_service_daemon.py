"""The daemon as systemd runs it: SIGHUP reload (good and bad), metrics scraped for real."""

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
from prometheus_client.parser import text_string_to_metric_families

from auditd.enrich.pseudonym import create_key_file

pytestmark = pytest.mark.slow

RULE = """- rule: {rule_id}
  desc: any read of an order, for the test
  condition: event.action = read and neo.resource.type = order
  severity: low
  tags: [sandbox]
  samples:
    match: [{{'@timestamp': '2026-11-02T10:00:00+08:00', event.action: read, neo.resource.type: order}}]
    no_match: [{{'@timestamp': '2026-11-02T10:00:00+08:00', event.action: export}}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def line(n: int) -> str:
    return json.dumps({
        "ts": f"2026-11-02T10:{n // 60 % 60:02d}:{n % 60:02d}.000+08:00", "app": "crm", "host": "crm-web-01",
        "req": f"r-{n:08d}", "emp": {"id": f"E{10000 + n % 7}", "name": "x"}, "ip": "10.20.1.5",
        "op": "order.view", "res": {"type": "order", "id": f"O{n:09d}", "store": "S011"},
        "subjects": [f"C{n:08d}"], "count": 1, "fields": ["items"], "masked": True, "result": "ok",
    }) + "\n"


def write_setup(tmp_path: Path, rule_id: str, more_config: str = "") -> int:
    """Key, log folder, one rule and config.yaml (plus `more_config`) in `tmp_path`; the metrics port."""
    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "logs").mkdir()
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "a.yaml").write_text(RULE.format(rule_id=rule_id))
    port = free_port()
    (tmp_path / "config.yaml").write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n    poll_interval_s: 0.1\n"
        "pseudonym:\n  key_file: pseudonym.key\n"
        "rules:\n  include_shipped: false\n  paths: [rules.d]\n"
        f"ops:\n  metrics: {{listen: 127.0.0.1, port: {port}}}\n" + more_config
    )
    return port


@pytest.fixture
def daemon(tmp_path: Path):
    port = write_setup(tmp_path, "order_read_a")
    out = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(tmp_path / "config.yaml")],
                            stdout=out, stderr=subprocess.STDOUT)
    ctx = {"dir": tmp_path, "proc": proc, "port": port, "log": tmp_path / "logs" / "access.log"}
    try:
        wait_for(lambda: ready(ctx), "the daemon to be up")
        yield ctx
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def ready(ctx) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{ctx['port']}/metrics", timeout=1).read()
        return True
    except OSError:
        return False


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def query(ctx, sql: str):
    with sqlite3.connect(ctx["dir"] / "state" / "neo-auditd.db", timeout=5) as conn:
        return conn.execute(sql).fetchall()


def events(ctx) -> int:
    return query(ctx, "SELECT COALESCE(SUM(count), 0) FROM event_segments")[0][0]


def alerts_by_rule(ctx) -> dict[str, int]:
    return dict(query(ctx, "SELECT rule_id, COUNT(*) FROM alerts GROUP BY rule_id"))


def append(ctx, first: int, count: int) -> None:
    with open(ctx["log"], "a") as fh:
        fh.writelines(line(n) for n in range(first, first + count))


def scrape(ctx) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{ctx['port']}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_show_the_real_counts(daemon):
    append(daemon, 0, 1000)
    daemon["log"].open("ab").write(b"{not json\n")
    wait_for(lambda: events(daemon) == 1000, "1000 events")
    wait_for(lambda: query(daemon, "SELECT COUNT(*) FROM quarantine")[0][0] == 1, "the quarantined line")
    metrics = scrape(daemon)
    assert metrics[("neo_auditd_events_total", (("source", "crm"),))] == 1000
    assert metrics[("neo_auditd_quarantined_total", (("source", "crm"),))] == 1
    assert metrics[("neo_auditd_alerts_total", (("rule", "order_read_a"),))] == alerts_by_rule(daemon)["order_read_a"]
    assert metrics[("neo_auditd_alerts_total", (("rule", "order_read_a"),))] == 1000
    open_incidents = sum(v for (name, labels), v in metrics.items()
                         if name == "neo_auditd_incidents" and ("status", "open") in labels)
    assert open_incidents == query(daemon, "SELECT COUNT(*) FROM incidents WHERE status = 'open'")[0][0] > 0


def test_sighup_with_a_valid_change_applies_it_and_loses_nothing(daemon):
    append(daemon, 0, 500)
    wait_for(lambda: events(daemon) == 500, "the first 500 events")
    (daemon["dir"] / "rules.d" / "b.yaml").write_text(RULE.format(rule_id="order_read_b"))
    daemon["proc"].send_signal(signal.SIGHUP)
    append(daemon, 500, 500)  # written while the reload is read (on a thread): none may be lost
    wait_for(lambda: events(daemon) == 1000, "all 1000 events")
    wait_for(lambda: b'"message":"reloaded"' in (daemon["dir"] / "daemon.log").read_bytes(), "the new set swapped in")
    append(daemon, 1000, 100)  # after the swap: the new rule sees every one
    wait_for(lambda: events(daemon) == 1100, "1100 events")
    counts = wait_for(lambda: (c := alerts_by_rule(daemon)) and c["order_read_a"] == 1100 and c, "rule a on all")
    assert 100 <= counts["order_read_b"] <= 600  # every event after the swap, none before
    assert scrape(daemon)[("neo_auditd_reload_success", ())] == 1


def test_sighup_with_a_broken_rule_keeps_the_old_set_running(daemon):
    append(daemon, 0, 200)
    wait_for(lambda: events(daemon) == 200, "the first events")
    (daemon["dir"] / "rules.d" / "broken.yaml").write_text(
        "- rule: broken\n  desc: d\n  condition: event.action = read and user.id regex '(['\n"
        "  severity: low\n  tags: [sandbox]\n")
    daemon["proc"].send_signal(signal.SIGHUP)
    wait_for(lambda: scrape(daemon).get(("neo_auditd_reload_success", ())) == 0, "the reload to be rejected")
    append(daemon, 200, 200)
    wait_for(lambda: events(daemon) == 400, "events after the rejected reload")
    wait_for(lambda: alerts_by_rule(daemon).get("order_read_a") == 400, "the old rule on every event")
    assert daemon["proc"].poll() is None  # still running
    log = (daemon["dir"] / "daemon.log").read_text()
    assert "reload rejected" in log and "broken.yaml:3:" in log
    status = subprocess.run([sys.executable, "-m", "auditd.cli", "status", "-c", str(daemon["dir"] / "config.yaml"),
                             "--json"], capture_output=True, text=True)
    assert json.loads(status.stdout)["last_reload"]["ok"] is False
