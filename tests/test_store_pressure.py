"""Back pressure, not a crash, when storage cannot be written: the daemon stops reading,
says so (log, status, metric, systemd status line), retries with backoff and resumes by
itself -- no exit, no event lost, none twice.

A genuine SQLITE_FULL comes from the store's size cap (`store.max_bytes`, SQLite's
max_page_count), lowered then raised by a reload; a read-only quarantine folder is a
tmpfs remounted read-only and back (skipped, with the reason, where mounting is not
allowed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from auditd.enrich.pseudonym import create_key_file
from auditd.store.pressure import MirrorBehind, StorageUnavailable, hold_reason

from test_ops_watchdog import Manager

pytestmark = pytest.mark.slow


def line(n: int, *, bad: bool = False) -> str:
    if bad:
        return "{this is not json %d\n" % n
    return json.dumps({
        "ts": f"2026-11-02T10:{n // 60 % 60:02d}:{n % 60:02d}.{n % 1000:03d}+08:00", "app": "crm", "host": "h1",
        "req": f"r-{n:08d}", "emp": {"id": f"E{10000 + n % 9}", "name": "x"}, "ip": "10.20.1.5",
        "op": "order.view", "res": {"type": "order", "id": f"O{n:09d}", "store": "S011"},
        "subjects": [f"C{n:08d}"], "count": 1, "fields": ["items"] * 40, "masked": True, "result": "ok",
    }) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, folder: Path, *, max_bytes: int | None = None, quarantine: Path | None = None,
                 notify: Manager | None = None, workers: int = 1, lines_at_start: int = 0):
        self.folder = folder
        create_key_file(folder / "pseudonym.key")
        (folder / "logs").mkdir()
        self.log = folder / "logs" / "access.log"
        self.log.touch()
        self.append(0, lines_at_start)  # in the file before the daemon reads: its first batch is whole
        self.port = free_port()
        self.quarantine = quarantine
        self.config = folder / "config.yaml"
        self.write_config(max_bytes)
        env = {**os.environ}
        if notify is not None:
            env.update(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="4000000")
        self.out = open(folder / "daemon.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(self.config),
                                      "--workers", str(workers)],
                                     stdout=self.out, stderr=subprocess.STDOUT, env=env)

    def write_config(self, max_bytes: int | None) -> None:
        self.config.write_text(
            "state_dir: state\n"
            "sources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n    poll_interval_s: 0.1\n"
            "pseudonym:\n  key_file: pseudonym.key\n"
            "rules:\n  include_shipped: false\n"
            "pipeline: {batch_records: 200}\n"
            + (f"store: {{max_bytes: {max_bytes}}}\n" if max_bytes else "")
            + (f"quarantine: {{path: {self.quarantine / 'quarantine.jsonl'}}}\n" if self.quarantine else "")
            + f"ops:\n  metrics: {{listen: 127.0.0.1, port: {self.port}}}\n")

    def append(self, first: int, count: int, *, bad: set[int] = frozenset()) -> None:
        with open(self.log, "a") as fh:
            fh.writelines(line(n, bad=n in bad) for n in range(first, first + count))

    def query(self, sql: str):
        db = self.folder / "state" / "neo-auditd.db"
        with contextlib.closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute(sql).fetchall()

    def events(self) -> int:
        try:
            return self.query("SELECT COALESCE(SUM(count), 0) FROM event_segments")[0][0]
        except sqlite3.Error:
            return -1

    def status(self) -> dict:
        done = subprocess.run([sys.executable, "-m", "auditd.cli", "status", "-c", str(self.config), "--json"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def status_text(self) -> str:
        return subprocess.run([sys.executable, "-m", "auditd.cli", "status", "-c", str(self.config)],
                              capture_output=True, text=True, timeout=60).stdout

    def metric(self, name: str) -> float | None:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        for row in text.splitlines():
            if row.startswith(name + " ") or row.startswith(name + "{"):
                return float(row.rsplit(" ", 1)[1])
        return None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def wait_for(predicate, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def manager():
    with tempfile.TemporaryDirectory(prefix="bp-") as folder:  # an AF_UNIX path fits in 108 bytes
        path = str(Path(folder) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            yield Manager(sock, path)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_store_holds_back_says_so_and_resumes_when_the_cap_is_raised(tmp_path, manager, workers):
    """With two workers too: the batches they prepared are held, and done again under the
    reloaded set once the SIGHUP that lifts the cap has reached the workers."""
    daemon = Daemon(tmp_path, max_bytes=2 * 1024 * 1024, notify=manager, workers=workers)
    try:
        wait_for(lambda: daemon.events() == 0, "the daemon to be up")
        total = 0
        while True:  # feed until the cap is reached
            daemon.append(total, 2000)
            total += 2000
            try:
                wait_for(lambda: daemon.events() == total, "the lines committed", timeout=30)
            except AssertionError:
                break
            assert total < 100_000, "the store never filled"
        wait_for(lambda: daemon.status().get("daemon", {}).get("state") == "holding_back", "status to hold back")
        status = daemon.status()
        assert "SQLITE_FULL" in status["daemon"]["reason"]
        assert "HOLDING BACK" in daemon.status_text()
        assert daemon.metric("neo_auditd_holding_back") == 1
        manager.wait_for("STATUS=holding back: the store is full", 30)
        stuck = daemon.events()
        daemon.append(total, 500)  # more lines while full: not read, not lost
        total += 500
        time.sleep(3)
        assert daemon.events() == stuck and daemon.proc.poll() is None  # holding, not crashing
        assert "WATCHDOG=1" in "".join(manager.messages(4))  # alive on purpose: still pinged

        daemon.write_config(None)  # the operator lifts the cap
        daemon.proc.send_signal(signal.SIGHUP)
        # at once, not after the backoff's next try (30-60 s by now): the SIGHUP is the reason to try
        wait_for(lambda: daemon.events() == total, "every line once the store takes writes again", timeout=20)
        wait_for(lambda: daemon.status()["daemon"]["state"] == "running", "status to say running")
        assert daemon.metric("neo_auditd_holding_back") == 0
        assert daemon.metric("neo_auditd_storage_retries_total") >= 1
    finally:
        assert daemon.stop() == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "holding back: storage cannot be written" in log and "reading resumes" in log
    assert "Traceback" not in log
    conn = sqlite3.connect(tmp_path / "state" / "neo-auditd.db")
    assert conn.execute("SELECT SUM(count) FROM event_segments").fetchone()[0] == total  # none lost, none twice


def _mount_tmpfs(path: Path) -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to make a folder read-only ({done.stderr.strip()})")


def _remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def test_a_read_only_quarantine_folder_holds_back_and_the_file_catches_up(tmp_path):
    folder = tmp_path / "quarantine"
    _mount_tmpfs(folder)
    try:
        (tmp_path / "d").mkdir()
        daemon = Daemon(tmp_path / "d", quarantine=folder)
        try:
            daemon.append(0, 100)
            wait_for(lambda: daemon.events() == 100, "the first lines")
            _remount(folder, "ro")
            daemon.append(100, 100, bad={150})
            wait_for(lambda: daemon.status().get("daemon", {}).get("state") == "holding_back",
                     "status to hold back")
            assert "read-only" in daemon.status()["daemon"]["reason"]
            held_at = daemon.events()
            # the batch with the bad line committed (lines 100-199 may come in more than one
            # batch on a busy machine); what was read after it waits
            assert 150 <= held_at <= 199
            daemon.append(200, 100)
            time.sleep(3)
            assert daemon.events() == held_at  # nothing more while the folder refuses writes
            _remount(folder, "rw")
            wait_for(lambda: daemon.events() == 299, "every good line once the folder takes writes")
            wait_for(lambda: daemon.status()["daemon"]["state"] == "running", "running again")
        finally:
            assert daemon.stop() == 0
        mirrored = [json.loads(row) for row in (folder / "quarantine.jsonl").read_text().splitlines()]
        assert [row["record"] for row in mirrored] == [line(150, bad=True).rstrip("\n")]  # once
        conn = sqlite3.connect(tmp_path / "d" / "state" / "neo-auditd.db")
        assert conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == 1
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_holding_back_before_the_first_commit_shows_the_whole_file_as_lag(tmp_path):
    """Full before anything was committed, so no checkpoint yet: `status` still shows the
    whole unread file as the source's lag, not "0 B". (A fresh store is already past a
    1 MiB cap: SQLite keeps the pages it has and refuses the first new one.)"""
    # The lines are there before the daemon starts: its first batch (200 events, ~100 KB)
    # needs new pages. One appended later might be read a few lines at a time, and a
    # batch of a dozen fits the free room of the store's existing 64 KiB pages.
    daemon = Daemon(tmp_path, max_bytes=1024 * 1024, lines_at_start=3000)
    try:
        wait_for(lambda: daemon.events() == 0, "the store to be there")
        wait_for(lambda: daemon.status().get("daemon", {}).get("state") == "holding_back", "status to hold back")
        assert daemon.events() == 0
        (crm,) = daemon.status()["sources"]
        size = daemon.log.stat().st_size
        assert crm["lag_bytes"] == size
        assert [(f["path"], f["lag_bytes"], f["checkpointed"]) for f in crm["files"]] == [
            (str(daemon.log), size, False)]
        assert "nothing yet" in daemon.status_text()
        daemon.write_config(None)
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: daemon.events() == 3000, "every line once the store takes writes")
        wait_for(lambda: daemon.status()["sources"][0]["lag_bytes"] == 0, "the lag to drop to 0")
    finally:
        assert daemon.stop() == 0


def test_storage_errors_are_told_apart_from_damage_and_bugs():
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # as the sqlite3 module sets it
    assert "SQLITE_FULL" in hold_reason(full)
    assert "read-only" in hold_reason(OSError(30, "Read-only file system", "/var/log/neo-auditd/q.jsonl"))
    assert "ENOSPC" in hold_reason(OSError(28, "No space left on device"))
    corrupt = sqlite3.DatabaseError("database disk image is malformed")
    corrupt.sqlite_errorcode = 11
    assert hold_reason(corrupt) is None  # damage stops the daemon (store/health.py), never a retry loop
    assert hold_reason(ValueError("a bug")) is None
    assert isinstance(StorageUnavailable("x"), Exception) and isinstance(MirrorBehind("y"), Exception)
