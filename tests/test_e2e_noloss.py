"""End to end: `neo-auditd run` as a subprocess loses no line and counts none twice.

A writer appends 200,000 lines across 5 rotations (rename and copytruncate both; one
copytruncate while the daemon is frozen with SIGSTOP and the writer refills the file
past the daemon's old offset), while the daemon is killed with SIGKILL and restarted
twice. At the end the store holds exactly one event per line written, and one alert
per line of the watched actor (every 100th line). With one process and with two
workers (whose processes end with the killed daemon; between the two kills of the
daemon, one worker is killed with SIGKILL too and replaced by the daemon).

The rotations and kills are at fixed fractions of the lines, so the same test runs at
the size the throughput issue asks for:

    NEO_NOLOSS_LINES=1000000 python -m pytest -s tests/test_e2e_noloss.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from auditd.enrich.pseudonym import create_key_file
from auditd.store.sqlite import Store

pytestmark = pytest.mark.slow

TOTAL = int(os.environ.get("NEO_NOLOSS_LINES", "200000"))
LINE = (
    '{{"ts":"2026-11-02T10:{m:02d}:{s:02d}.{ms:03d}+08:00","app":"crm","host":"crm-web-01","req":"r-{n:08d}",'
    '"emp":{{"id":"{actor}","name":"x"}},"ip":"10.20.1.5","op":"order.view",'
    '"res":{{"type":"order","id":"O{n:09d}","store":"S001"}},"subjects":["C{c:08d}"],"count":1,'
    '"fields":["items"],"masked":true,"result":"ok"}}\n'
)


WATCH_EVERY = 100  # every 100th line is the watched actor's, and alerts
WATCH_RULE = """- rule: watched_actor
  desc: every access by one watched employee
  condition: user.id = E20001
  severity: low
  tags: [sandbox]
  samples:
    match: [{user.id: E20001, event.action: read}]
"""


def line(n: int) -> str:
    actor = "E20001" if n % WATCH_EVERY == 0 else "E10001"
    return LINE.format(m=(n // 60000) % 60, s=(n // 1000) % 60, ms=n % 1000, n=n, c=n % 5000, actor=actor)


def write_config(tmp: Path) -> Path:
    (tmp / "logs").mkdir()
    (tmp / "rules.d").mkdir()
    (tmp / "rules.d" / "watched.yaml").write_text(WATCH_RULE)
    create_key_file(tmp / "pseudonym.key")
    config = tmp / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n"
        "  - name: crm\n"
        "    paths: [logs/access.log*]\n"
        "    format: neo-crm\n"
        "    start_at: beginning\n"
        "    poll_interval_s: 0.2\n"
        "pseudonym:\n"
        "  key_file: pseudonym.key\n"
        "rules:\n"
        "  paths: [rules.d]\n"
        "pipeline:\n"
        "  batch_records: 2000\n"
    )
    return config


class Writer(threading.Thread):
    """Appends lines at a steady pace and rotates the file at planned points.

    A hook takes over at its line number: it may rotate the file and write lines itself,
    and returns the open file and the next line number to write.
    """

    def __init__(self, logs: Path, hooks: dict):
        super().__init__(daemon=True)
        self.logs = logs
        self.hooks = hooks
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            fh = open(self.logs / "access.log", "a", encoding="utf-8")
            n = 0
            while n < TOTAL:
                if n in self.hooks:
                    fh, after = self.hooks.pop(n)(fh, n)
                    self.written += after - n
                    n = after
                    continue
                fh.write(line(n))
                self.written += 1
                n += 1
                if n % 500 == 0:
                    fh.flush()
                    time.sleep(0.02)  # ~25k lines/s: the daemon is killed mid-stream
            fh.close()
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def rename_rotation(logs: Path, suffix: str):
    def hook(fh, n):
        fh.close()
        os.rename(logs / "access.log", logs / f"access.log.{suffix}")
        return open(logs / "access.log", "a", encoding="utf-8"), n
    return hook


def copytruncate(logs: Path, suffix: str):
    def hook(fh, n):
        fh.flush()
        shutil.copyfile(logs / "access.log", logs / f"access.log.{suffix}")
        fh.truncate(0)
        fh.seek(0)
        return fh, n
    return hook


def start_daemon(config: Path, log: Path, workers: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "auditd.cli", "run", "-c", str(config), "--workers", str(workers)],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT,
    )


def stored_events(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_segments").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def worker_pids(pid: int) -> list[int]:
    """The daemon's worker processes (multiprocessing's resource tracker is not one)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if ppid == pid and b"multiprocessing.spawn" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(entry))
    return found


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("workers", [1, 2])
def test_no_loss_no_duplicates_across_rotations_and_kills(tmp_path: Path, workers: int):
    config = write_config(tmp_path)
    logs, db, daemon_log = tmp_path / "logs", tmp_path / "state" / "neo-auditd.db", tmp_path / "daemon.log"
    state = {"proc": start_daemon(config, daemon_log, workers)}
    orphans: list[int] = []

    def kill_daemon() -> None:
        proc = state["proc"]
        pids = worker_pids(proc.pid)
        assert len(pids) == (workers if workers > 1 else 0)
        orphans.extend(pids)
        proc.kill()
        proc.wait()
        state["proc"] = start_daemon(config, daemon_log, workers)

    def frozen_copytruncate(fh, n):
        # Freeze the daemon, let the writer run ahead, then copytruncate and refill the
        # file past the daemon's old offset before it wakes up.
        proc = state["proc"]
        proc.send_signal(signal.SIGSTOP)
        try:
            for k in range(n, n + 5_000):
                fh.write(line(k))
            fh, _ = copytruncate(logs, "r4")(fh, n)
            # more lines (and bytes) than the file held when it was copied: the last
            # rotation's 5 % of the lines and the 5,000 just written
            refill = TOTAL // 20 + 10_000
            for k in range(n + 5_000, n + 5_000 + refill):
                fh.write(line(k))
            fh.flush()
        finally:
            proc.send_signal(signal.SIGCONT)
        return fh, n + 5_000 + refill

    def kill_a_worker() -> None:
        pids = worker_pids(state["proc"].pid)
        assert len(pids) == workers
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: len(set(worker_pids(state["proc"].pid)) - {pids[0]}) == workers, 120,
                 "the daemon to replace its killed worker")

    at = lambda fraction: TOTAL // 1000 * round(fraction * 1000)  # noqa: E731 - a line number
    writer = Writer(logs, {
        at(0.15): rename_rotation(logs, "r1"),
        at(0.30): copytruncate(logs, "r2"),
        at(0.45): rename_rotation(logs, "r3"),
        at(0.50): frozen_copytruncate,
        at(0.85): rename_rotation(logs, "r5"),
    })
    wait_for(lambda: db.exists(), 30, "the daemon to create its store")
    writer.start()

    wait_for(lambda: stored_events(db) > at(0.225), 600, "events before the first kill")
    kill_daemon()
    if workers > 1:
        wait_for(lambda: stored_events(db) > at(0.55), 600, "events before a worker is killed")
        kill_a_worker()
    wait_for(lambda: stored_events(db) > at(0.70), 600, "events before the second kill")
    kill_daemon()
    wait_for(lambda: all(gone(pid) for pid in orphans), 60, "the killed daemons' workers to end")

    writer.join(timeout=300)
    assert writer.error is None, writer.error
    assert writer.written == TOTAL
    wait_for(lambda: stored_events(db) >= TOTAL, 900, "every line to be stored")
    time.sleep(1.0)  # anything extra (a duplicate) would show up now
    state["proc"].send_signal(signal.SIGTERM)
    assert state["proc"].wait(timeout=60) == 0, daemon_log.read_text()[-3000:]

    store = Store(db).open()
    try:
        request_ids = [event.request_id for event in store.iter_events()]
        quarantined = store.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        alerts = store.conn.execute("SELECT alert_id, doc FROM alerts WHERE rule_id = 'watched_actor'").fetchall()
        cited = [e for _, doc in alerts for e in json.loads(doc)["event_ids"]]
        alerted = sorted(event.request_id for event in store.evidence(cited))
    finally:
        store.close()
    print(f"\n{workers} worker(s): {writer.written:,} lines written over 5 rotations, daemon killed twice"
          f"{' and a worker once' if workers > 1 else ''}; stored {len(request_ids):,} events, "
          f"{len(set(request_ids)):,} distinct, {TOTAL - len(set(request_ids)):,} lost; quarantined {quarantined}; "
          f"alerts {len(alerts):,} ({len({alert_id for alert_id, _ in alerts}):,} distinct)")
    assert quarantined == 0
    assert len(request_ids) == TOTAL, f"{len(request_ids) - len(set(request_ids))} duplicates"
    assert set(request_ids) == {f"r-{n:08d}" for n in range(TOTAL)}
    assert len({alert_id for alert_id, _ in alerts}) == len(alerts) == len(cited) == TOTAL // WATCH_EVERY
    assert alerted == [f"r-{n:08d}" for n in range(0, TOTAL, WATCH_EVERY)]
