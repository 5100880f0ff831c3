"""The watchdog pings only on proof of life, and SIGTERM ends a daemon stuck mid-batch.

A real AF_UNIX datagram socket stands in for systemd's $NOTIFY_SOCKET; the stuck stage
is the `assigned` scope's lookup against a real loopback HTTP server that never answers.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from auditd.enrich.pseudonym import create_key_file
from auditd.ops.sdnotify import Notifier
from auditd.ops.watchdog import Watchdog

REPO = Path(__file__).resolve().parents[1]


class Manager:
    """The receiving end of $NOTIFY_SOCKET, as systemd binds it."""

    def __init__(self, sock: socket.socket, path: str):
        self.sock, self.path = sock, path

    def messages(self, within: float) -> list[str]:
        """Every datagram that arrives within `within` seconds."""
        out, deadline = [], time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.sock], [], [], left)
            if readable:
                out.append(self.sock.recv(4096).decode())
        return out

    def drain(self) -> list[str]:
        out = []
        while select.select([self.sock], [], [], 0)[0]:
            out.append(self.sock.recv(4096).decode())
        return out

    def wait_for(self, text: str, timeout: float) -> list[str]:
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages(0.2)
            seen += got
            if any(text in m for m in got):
                return seen
        raise AssertionError(f"no {text!r} within {timeout} s; got {seen}")


@pytest.fixture
def manager() -> Iterator[Manager]:
    with tempfile.TemporaryDirectory(prefix="wd-") as folder:  # an AF_UNIX path fits in 108 bytes
        path = str(Path(folder) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            yield Manager(sock, path)


# --- the Watchdog alone -------------------------------------------------------------------


def test_pings_are_rate_limited_to_half_the_interval(manager: Manager) -> None:
    now = [100.0]
    watchdog = Watchdog(Notifier({"NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": "10000000"}),
                        clock=lambda: now[0])
    assert watchdog.every == 5.0
    watchdog.progressed()
    watchdog.progressed()
    watchdog.idle()
    assert manager.drain() == ["WATCHDOG=1"]
    now[0] += 4.9
    watchdog.idle()
    assert manager.drain() == []
    now[0] += 0.1
    watchdog.idle()
    assert manager.drain() == ["WATCHDOG=1"]


def test_holding_back_pings_and_says_why_once(manager: Manager) -> None:
    now = [0.0]
    watchdog = Watchdog(Notifier({"NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": "2000000"}),
                        clock=lambda: now[0])
    watchdog.holding_back("disk full: 12 MB free in /var/lib/neo-auditd")
    now[0] += 1
    watchdog.holding_back("disk full: 12 MB free in /var/lib/neo-auditd")
    assert manager.drain() == ["STATUS=holding back: disk full: 12 MB free in /var/lib/neo-auditd",
                               "WATCHDOG=1", "WATCHDOG=1"]
    assert watchdog.holding_back_reason is not None
    now[0] += 1
    watchdog.resumed()
    assert manager.drain() == ["STATUS=running", "WATCHDOG=1"]
    assert watchdog.holding_back_reason is None


def test_without_a_watchdog_nothing_is_sent(manager: Manager) -> None:
    watchdog = Watchdog(Notifier({"NOTIFY_SOCKET": manager.path}))
    assert not watchdog.enabled
    watchdog.progressed()
    watchdog.idle()
    assert manager.drain() == []


# --- a real daemon: idle pings, none while wedged, SIGTERM within the stop timeout ----------


class NeverAnswers:
    """A loopback HTTP assignment service that takes requests and answers none until told."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        self.answer: dict[str, Any] | None = None
        holder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                holder.asked.set()
                holder.release.wait()
                if holder.answer is None:
                    return  # hang up without a word
                body = json.dumps(holder.answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/assignee/{{id}}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _deployment(folder: Path, url: str) -> Path:
    create_key_file(folder / "pseudonym.key")
    (folder / "logs").mkdir()
    (folder / "logs" / "access.log").write_bytes(b"")
    (folder / "directory.yaml").write_text(
        "roles:\n  - id: agent\n    grants:\n"
        "      - {categories: [identity, order], actions: [read], scope: assigned}\n"
        "employees:\n  - {id: E1, name: x, roles: [agent], hire_date: 2020-01-01}\n")
    config = folder / "config.yaml"
    config.write_text(
        "state_dir: state\nsources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n"
        "    poll_interval_s: 0.2\npseudonym:\n  key_file: pseudonym.key\n"
        "directory: {path: directory.yaml}\n"
        f"entitlement:\n  assignments:\n    http: {{url: '{url}', timeout_s: 3600}}\n"
        "pipeline: {stop_timeout_s: 2}\n"
        "ops:\n  metrics: {enabled: false}\n")
    return config


ORDER_READ = json.dumps({
    "ts": "2026-11-02T10:00:00.000+08:00", "app": "crm", "host": "crm-web-01", "req": "r-1",
    "emp": {"id": "E1", "name": "x"}, "ip": "10.20.1.5", "op": "order.view",
    "res": {"type": "order", "id": "O000000123", "store": "S011"}, "subjects": ["C00000001"],
    "count": 1, "fields": ["items"], "masked": True, "result": "ok",
}) + "\n"


def _events(db: Path) -> int:
    with sqlite3.connect(db, timeout=5) as conn:
        return conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_segments").fetchone()[0]


def _start(config: Path, manager: Manager | None, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()
           and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["NO_PROXY"] = "127.0.0.1"
    if manager is not None:
        env.update(NOTIFY_SOCKET=manager.path, WATCHDOG_USEC="2000000")  # ping every 1 s
    return subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(config)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_a_wedged_stage_stops_the_pings_and_sigterm_still_ends_the_daemon(manager: Manager, tmp_path: Path) -> None:
    """Today's main keeps the pings to the loop, but its SIGTERM waits for the lookup
    (here an hour) while systemd kills it after TimeoutStopSec."""
    service = NeverAnswers()
    config = _deployment(tmp_path, service.url)
    log = tmp_path / "daemon.log"
    proc = _start(config, manager, log)
    try:
        manager.wait_for("READY=1", timeout=30)
        idle = manager.messages(3.5)  # nothing to read: pings, about one a second
        assert idle.count("WATCHDOG=1") >= 2, idle

        with open(tmp_path / "logs" / "access.log", "a") as fh:
            fh.write(ORDER_READ)
        assert service.asked.wait(30), "the lookup never reached the assignment service"
        manager.drain()  # pings sent before the lookup began
        wedged = manager.messages(5.0)  # 2.5 watchdog intervals
        assert "WATCHDOG=1" not in wedged, wedged  # systemd would now restart it

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=25)  # the unit's TimeoutStopSec is 30
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 75, text[-2000:]  # EX_TEMPFAIL: stopped mid-batch, to be read again
    assert took < 20, took
    assert "stop timed out" in text
    assert "STOPPING=1" in manager.drain()
    assert _events(tmp_path / "state" / "neo-auditd.db") == 0  # the batch was not committed...

    service.answer = {"assignee": "E1"}
    service.release.set()
    proc = _start(config, None, log)
    try:
        deadline = time.monotonic() + 30
        while _events(tmp_path / "state" / "neo-auditd.db") == 0:  # ...so the next start reads it again
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=25) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        service.close()


def test_the_default_stop_timeout_ends_before_systemd_kills() -> None:
    from auditd.settings import PipelineSettings

    unit = (REPO / "systemd" / "neo-auditd.service").read_text()
    [stop_sec] = [int(line.split("=")[1]) for line in unit.splitlines() if line.startswith("TimeoutStopSec=")]
    [watchdog_sec] = [int(line.split("=")[1]) for line in unit.splitlines() if line.startswith("WatchdogSec=")]
    assert PipelineSettings().stop_timeout_s <= stop_sec - 5  # time left to log, notify and exit
    assert watchdog_sec > 0
