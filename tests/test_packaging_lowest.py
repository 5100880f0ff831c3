"""The lowest versions pyproject.toml allows really run the daemon.

A floor that is too low passes every other test (they run on the newest versions) and
fails on the machine that happens to have the old one: chinese-calendar 1.10 knows no
2026, sentry-sdk before 2.35 refuses ``before_send_log`` and the daemon dies at start
once a DSN is set. So this test builds a virtualenv with every direct dependency at
its floor (``name==floor``; their own dependencies as pip resolves them), installs the
project without dependencies, checks a config, and runs the daemon for a while with a
DSN that points at a Sentry stand-in on loopback, and without the system's zone data
(so Asia/Shanghai must come from the tzdata package).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LINE = ('{{"ts": "2026-11-02T10:00:{s:02d}.000+08:00", "app": "crm", "host": "crm-web-01", "req": "r-{n:08d}",'
        ' "emp": {{"id": "E10001", "name": "x"}}, "ip": "10.20.1.5", "op": "order.view",'
        ' "res": {{"type": "order", "id": "O{n:09d}", "store": "S011"}}, "subjects": ["C{n:08d}"], "count": 1,'
        ' "fields": ["items"], "masked": true, "result": "ok"}}\n')


def floors() -> dict[str, str]:
    """Each direct dependency and the lowest version its specifier allows."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        lows = [spec.version for spec in requirement.specifier if spec.operator in (">=", "==", "~=")]
        assert len(lows) == 1, f"{text!r}: a dependency needs exactly one floor (>=) that this test can install"
        out[requirement.name] = lows[0]
    return out


def test_the_floors_the_issue_asked_for() -> None:
    lows = floors()
    assert lows["chinese-calendar"] == "1.11"  # 1.10 has no 2026
    assert lows["sentry-sdk"] == "2.35"  # before_send_log
    assert "tzdata" in lows


class SentryStandIn:
    """Takes Sentry's envelopes on loopback and keeps the request paths."""

    def __init__(self) -> None:
        paths = self.paths = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server.server_address[1]}/1"


@pytest.fixture
def sentry() -> Iterator[SentryStandIn]:
    stand_in = SentryStandIn()
    stand_in.thread.start()
    try:
        yield stand_in
    finally:
        stand_in.server.shutdown()
        stand_in.server.server_close()


def run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def lowest_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("lowest") / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    pins = [f"{name}=={version}" for name, version in floors().items()]
    installed = run(*pip, *pins)
    assert installed.returncode == 0, f"the floors do not install together:\n{installed.stderr[-3000:]}"
    project = run(*pip, "--no-deps", REPO)
    assert project.returncode == 0, project.stderr[-3000:]
    consistent = run(venv / "bin" / "python", "-m", "pip", "check")
    assert consistent.returncode == 0, consistent.stdout  # the floors' own requirements are met
    return venv


@pytest.mark.slow
def test_lowest_allowed_versions_check_and_run(lowest_venv: Path, tmp_path: Path, sentry: SentryStandIn) -> None:
    listed = run(lowest_venv / "bin" / "python", "-m", "pip", "list", "--format", "json")
    versions = {canonicalize_name(p["name"]): Version(p["version"]) for p in json.loads(listed.stdout)}
    for name, floor in floors().items():
        assert versions[canonicalize_name(name)] == Version(floor), (name, versions[canonicalize_name(name)])

    neo = lowest_venv / "bin" / "neo-auditd"
    env = {**os.environ, "PYTHONTZPATH": str(tmp_path / "no-zoneinfo-here"),  # only the tzdata package
           "NO_PROXY": "127.0.0.1"}
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    assert run(neo, "keygen", tmp_path / "pseudonym.key", env=env).returncode == 0
    (tmp_path / "logs").mkdir()
    (tmp_path / "rules.d").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n    poll_interval_s: 0.2\n"
        "pseudonym:\n  key_file: pseudonym.key\n"
        "rules:\n  paths: [rules.d]\n"
        f"ops:\n  metrics: {{listen: 127.0.0.1, port: {free_port()}}}\n"
        f"  sentry: {{dsn: '{sentry.dsn}', environment: lowest-versions}}\n"
    )

    checked = run(neo, "check", "-c", config, env=env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok: ")

    with open(tmp_path / "daemon.log", "wb") as out:
        daemon = subprocess.Popen([str(neo), "run", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                  env=env)
    try:
        with open(tmp_path / "logs" / "access.log", "w") as fh:
            fh.writelines(LINE.format(n=n, s=n % 60) for n in range(200))
        db = tmp_path / "state" / "neo-auditd.db"

        def committed() -> int:
            if daemon.poll() is not None:
                raise AssertionError(f"the daemon died:\n{(tmp_path / 'daemon.log').read_text()[-3000:]}")
            if not db.exists():
                return 0
            with sqlite3.connect(db, timeout=5) as conn:
                try:
                    return conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_segments").fetchone()[0]
                except sqlite3.OperationalError:
                    return 0

        wait_for(lambda: committed() == 200, "200 events in the store")
        # a rejected reload is logged as an error, which the SDK at its floor must deliver
        (tmp_path / "rules.d" / "broken.yaml").write_text("- rule: broken\n  condition: [\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: any(p.endswith("/envelope/") for p in sentry.paths), "an envelope at the Sentry stand-in")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log, log[-3000:]
