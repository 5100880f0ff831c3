"""`neo-auditd run --workers N` (issue 19): worker processes prepare the daemon's
batches and the main process commits them in the order read. Real daemons as
subprocesses: live lines alert, a SIGHUP reaches the workers between two batches, a
refused reload keeps the old set everywhere, a worker killed with SIGKILL costs no line
and repeats none, and a stop leaves no worker behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from behaviour_helpers import daemon_config

pytestmark = pytest.mark.slow

WATCHED = "E20001"  # the actor whose lines the rule alerts on
RULE = """- rule: watched_actor
  desc: every access by one watched employee
  condition: user.id = {actor}
  severity: low
  tags: [sandbox]
  samples:
    match: [{{user.id: {actor}, event.action: read}}]
    no_match: [{{user.id: E1, event.action: read}}]
"""


def line(n: int, actor: str = "E10001") -> str:
    return json.dumps({
        "ts": f"2026-11-02T10:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{n % 1000:03d}+08:00", "app": "crm",
        "host": "h1", "req": f"r-{n:08d}", "emp": {"id": actor, "name": "x"}, "ip": "10.20.1.5",
        "op": "order.view", "res": {"type": "order", "id": f"O{n:09d}", "store": "S011"},
        "subjects": [f"C{n % 5000:08d}"], "count": 1, "fields": ["items"], "masked": True, "result": "ok",
    }) + "\n"


def setup(tmp_path: Path, actor: str = WATCHED) -> Path:
    config = daemon_config(tmp_path, {"watched.yaml": RULE.format(actor=actor)})
    config.write_text(config.read_text().replace("batch_records: 37", "batch_records: 500"))
    return config


def start(config: Path, log: Path, workers: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(config), "--workers", str(workers)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def query(tmp_path: Path, sql: str) -> list:
    db = tmp_path / "state" / "neo-auditd.db"
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []


def events(tmp_path: Path) -> int:
    rows = query(tmp_path, "SELECT COALESCE(SUM(count), 0) FROM event_segments")
    return rows[0][0] if rows else 0


def alerted_requests(tmp_path: Path, rule: str = "watched_actor") -> list[str]:
    """The request id of the event each alert of `rule` cites (one each), one entry per alert."""
    cited = []
    for (doc,) in query(tmp_path, f"SELECT doc FROM alerts WHERE rule_id = '{rule}'"):
        cited += json.loads(doc)["event_ids"]
    from auditd.store.encoding import decode_event

    requests = {}
    for (doc,) in query(tmp_path, "SELECT doc FROM evidence") if cited else []:
        event = decode_event(doc)
        requests[event.event_id] = event.request_id
    return [requests.get(e, e) for e in cited]


def wait_for(predicate, what: str, timeout: float = 300.0, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}) waiting for {what}: "
                                 f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-3000:] if log else ''}")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (its workers, and multiprocessing's resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def workers_of(pid: int) -> list[int]:
    out = []
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing.spawn" in cmdline and b"resource_tracker" not in cmdline:
            out.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def log_records(log: Path, message: str) -> list[dict]:
    found = []
    for raw in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if record.get("message") == message:
            found.append(record)
    return found


def append(path: Path, numbers, watched_every: int = 0, actor: str = WATCHED) -> list[int]:
    """Append the lines `numbers`; every `watched_every`-th is the watched actor's. The watched lines' numbers."""
    watched = []
    with path.open("a") as fh:
        for n in numbers:
            if watched_every and n % watched_every == 0:
                watched.append(n)
                fh.write(line(n, actor))
            else:
                fh.write(line(n))
    return watched


def test_run_with_two_workers_alerts_on_live_lines_and_stops_its_workers(tmp_path):
    config = setup(tmp_path)
    log = tmp_path / "daemon.log"
    access = tmp_path / "logs" / "access.log"
    proc = start(config, log)
    try:
        wait_for(lambda: len(workers_of(proc.pid)) == 2, "two worker processes", 120, proc, log)
        workers = workers_of(proc.pid)
        wait_for(lambda: log_records(log, "workers ready"), "the workers to load", 120, proc, log)
        expected: list[int] = []
        written = 0
        for _ in range(20):  # live: small appends the daemon reads as they come
            expected += append(access, range(written, written + 300), watched_every=50)
            written += 300
            time.sleep(0.1)
        wait_for(lambda: events(tmp_path) >= written, "every line committed", 300, proc, log)
        wait_for(lambda: len(alerted_requests(tmp_path)) >= len(expected), "every alert", 60, proc, log)
        time.sleep(0.5)
        assert events(tmp_path) == written
        assert sorted(alerted_requests(tmp_path)) == [f"r-{n:08d}" for n in expected]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not any(alive(pid) for pid in workers), "the workers to end with the daemon", 30)
    stopped = log_records(log, "stopped")[-1]
    assert stopped["workers"]["prepared"] > 0 and stopped["workers"]["done_here"] == 0  # all by the workers
    assert stopped["workers"]["restarts"] == 0


def test_sighup_reaches_the_workers_and_a_refused_reload_keeps_the_old_set(tmp_path):
    config = setup(tmp_path)
    rule_file = tmp_path / "rules.d" / "watched.yaml"
    log = tmp_path / "daemon.log"
    access = tmp_path / "logs" / "access.log"
    proc = start(config, log)
    try:
        # the workers must have read the rule files before they change: one still loading
        # would read the new rule and, rightly, be distrusted until the SIGHUP
        wait_for(lambda: log_records(log, "workers ready"), "the workers to load", 120, proc, log)
        first = append(access, range(0, 3000), watched_every=30)  # the rule watches E20001
        wait_for(lambda: events(tmp_path) >= 3000, "the first lines", 300, proc, log)

        rule_file.write_text(RULE.format(actor="E20002"))  # now it watches E20002 instead
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log_records(log, "workers reloaded"), "the workers to reload", 120, proc, log)
        assert log_records(log, "workers reloaded")[-1]["workers_agreeing"] == 2
        # E20001's lines no longer alert; E20002's do, whichever worker prepares them
        append(access, range(3000, 6000), watched_every=30)
        second = append(access, range(6000, 9000), watched_every=30, actor="E20002")
        wait_for(lambda: events(tmp_path) >= 9000, "the lines after the reload", 300, proc, log)

        rule_file.write_text("- rule: broken\n  condition: user.id ==== \n")  # refused: the E20002 rule stays
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log_records(log, "reload rejected; the previous configuration keeps running"),
                 "the refused reload", 120, proc, log)
        third = append(access, range(9000, 12000), watched_every=30, actor="E20002")
        wait_for(lambda: events(tmp_path) >= 12000, "the lines after the refused reload", 300, proc, log)
        wait_for(lambda: len(alerted_requests(tmp_path)) >= len(first + second + third), "the alerts", 60, proc, log)
        time.sleep(0.5)
        assert sorted(alerted_requests(tmp_path)) == [f"r-{n:08d}" for n in first + second + third]
        assert len(log_records(log, "workers reloaded")) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not [r for r in log.read_text().splitlines() if "loaded other files" in r]  # they agreed throughout
    assert log_records(log, "stopped")[-1]["workers"]["prepared"] > 0


def test_a_worker_killed_mid_run_costs_no_line_and_repeats_none(tmp_path):
    config = setup(tmp_path)
    log = tmp_path / "daemon.log"
    access = tmp_path / "logs" / "access.log"
    proc = start(config, log)
    total = 60_000
    try:
        wait_for(lambda: log_records(log, "started") and len(workers_of(proc.pid)) == 2, "the daemon", 120, proc, log)
        expected: list[int] = []
        killed = []
        for start_at in range(0, total, 2000):
            expected += append(access, range(start_at, start_at + 2000), watched_every=100)
            if start_at in (20_000, 40_000):  # every worker, one with a batch in flight at least
                for victim in workers_of(proc.pid):
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
            time.sleep(0.05)
        wait_for(lambda: events(tmp_path) >= total, "every line committed", 600, proc, log)
        wait_for(lambda: len(alerted_requests(tmp_path)) >= len(expected), "every alert", 60, proc, log)
        time.sleep(1.0)  # a line done twice would show now
        assert events(tmp_path) == total
        assert sorted(alerted_requests(tmp_path)) == [f"r-{n:08d}" for n in expected]
        wait_for(lambda: len(workers_of(proc.pid)) == 2, "two workers again", 60, proc, log)
        assert not set(killed) & set(workers_of(proc.pid))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert log_records(log, "stopped")[-1]["workers"]["restarts"] >= 4


STORE_RULE = """- rule: store_s012
  desc: every access by staff of store S012
  condition: neo.actor.store = S012
  severity: low
  tags: [sandbox]
  samples:
    match: [{neo.actor.store: S012, event.action: read}]
"""


def test_a_changed_directory_reaches_the_workers_between_two_batches(tmp_path):
    """The HR file moves E10002 from store S011 to S012: the lines appended after the
    daemon (and its workers) reloaded it alert, those before do not, whichever worker
    enriched them."""
    config = daemon_config(tmp_path, {"store.yaml": STORE_RULE})
    directory = tmp_path / "directory.yaml"
    original = (Path(__file__).resolve().parents[1] / "examples" / "directory.yaml").read_text()
    before = "  - {id: E10002, name: 李娜, roles: [store_clerk], store: S011,"
    assert before in original
    directory.write_text(original)
    config.write_text(config.read_text().replace("batch_records: 37", "batch_records: 500")
                      + f"directory: {{path: {directory}, reload_check_s: 0.2}}\n")
    log = tmp_path / "daemon.log"
    access = tmp_path / "logs" / "access.log"
    proc = start(config, log)
    try:
        wait_for(lambda: log_records(log, "workers ready"), "the workers to load", 120, proc, log)
        append(access, range(0, 3000), watched_every=10, actor="E10002")
        wait_for(lambda: events(tmp_path) >= 3000, "the lines before the move", 300, proc, log)
        assert alerted_requests(tmp_path, "store_s012") == []

        directory.write_text(original.replace(before, before.replace("S011", "S012")))
        wait_for(lambda: [r for r in log_records(log, "workers reloaded") if r["what"] == "directory"],
                 "the workers to reload the directory", 120, proc, log)
        assert log_records(log, "workers reloaded")[-1]["workers_agreeing"] == 2
        moved = append(access, range(3000, 6000), watched_every=10, actor="E10002")
        wait_for(lambda: events(tmp_path) >= 6000, "the lines after the move", 300, proc, log)
        wait_for(lambda: len(alerted_requests(tmp_path, "store_s012")) >= len(moved), "the alerts", 60, proc, log)
        time.sleep(0.5)
        assert sorted(alerted_requests(tmp_path, "store_s012")) == [f"r-{n:08d}" for n in moved]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert log_records(log, "stopped")[-1]["workers"]["done_here"] == 0  # every batch enriched by a worker
