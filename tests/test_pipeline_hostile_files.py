"""A log folder an attacker can write to: a symlink to a secret, a FIFO, a glob that
matches nothing. Through the real runtime, tailer, pipeline, store and metrics: the
secret's bytes reach nothing the daemon writes, the FIFO stalls nothing, and `status`
and the metrics say what was refused and why.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from auditd.enrich.pseudonym import create_key_file
from auditd.ops.metrics import Metrics
from auditd.ops.status import collect_status
from auditd.ops.status_text import render_status
from auditd.pipeline import Pipeline
from auditd.runtime import load_runtime
from auditd.sources.tail import FileTailer
from auditd.store.quarantine_file import QuarantineFile
from auditd.store.sqlite import Store

TOKEN = "S3CR3T-TOKEN-7f3a9c"  # in the secret file, and in nothing the daemon writes


def line(n: int, **changes) -> bytes:
    record = {"ts": f"2026-11-02T10:00:{n:02d}.000+08:00", "app": "crm", "host": "crm-web-01", "req": f"r-{n}",
              "emp": {"id": "E10001", "name": "x"}, "ip": "10.20.1.5", "op": "order.view",
              "res": {"type": "order", "id": f"O{n:09d}"}, "count": 1, "result": "ok", **changes}
    return json.dumps(record).encode() + b"\n"


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    create_key_file(tmp_path / "pseudonym.key")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "access.log").write_bytes(line(1) + line(2))
    # a secret that would even decode as an event, were it read
    (tmp_path / "secret.json").write_bytes(line(3, req=TOKEN) + TOKEN.encode() + b"\n")
    os.symlink(tmp_path / "secret.json", logs / "access.log.1")
    os.mkfifo(logs / "access.log.2")
    (tmp_path / "config.yaml").write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [logs/access.log, logs/audit-*.log]\n    format: neo-crm\n"
        "    use_inotify: false\n"
        "pseudonym:\n  key_file: pseudonym.key\n"
        "rules:\n  include_shipped: false\n")
    return tmp_path


def test_a_symlinked_secret_and_a_fifo_are_refused_and_the_secret_goes_nowhere(deployment, caplog):
    caplog.set_level(logging.DEBUG)
    runtime = load_runtime(deployment / "config.yaml")
    settings = runtime.settings
    store = Store(settings.store_path)
    store.open()
    quarantine = QuarantineFile(settings.quarantine_path, store)
    metrics = Metrics(store.path)
    pipeline = Pipeline(runtime, store, quarantine, metrics)
    (source,) = settings.sources
    tailer = FileTailer(source, runtime.framers["crm"](), store.load_checkpoints("crm"), first_start=True)
    for _ in range(3):
        for batch in tailer.poll(1000):
            pipeline.handle(batch)
    with open(deployment / "logs" / "access.log", "ab") as fh:
        fh.write(line(4))
    for batch in tailer.poll(1000):
        pipeline.handle(batch)
    tailer.stop()

    assert store.count_events() == 3  # the live file, and only it
    status = collect_status(store.path, settings, dt.datetime.now(dt.timezone.utc))
    store.close()
    (crm,) = status.sources
    assert crm.scan.files == 1 and crm.scan.unmatched_globs == [str(deployment / "logs" / "audit-*.log")]
    assert {(Path(f.path).name, f.reason) for f in crm.scan.refused} == {
        ("access.log.1", "symlink_outside"), ("access.log.2", "fifo")}
    text = render_status(status)
    assert "audit-*.log matches no file" in text and "access.log.1: a symlink to" in text

    page = generate_latest(metrics.registry).decode()
    assert 'neo_auditd_source_files_refused{reason="fifo",source="crm"} 1.0' in page
    assert 'neo_auditd_source_files_refused{reason="symlink_outside",source="crm"} 1.0' in page
    assert 'neo_auditd_source_globs_unmatched{source="crm"} 1.0' in page

    written = [p for p in (deployment / "state").rglob("*") if p.is_file()]
    assert any(p.name == "neo-auditd.db" for p in written)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text and TOKEN not in page
    assert "not reading" in caplog.text and "matches no file" in caplog.text


def test_a_source_reaching_into_the_state_directory_is_a_located_config_error(deployment):
    config = deployment / "config.yaml"
    config.write_text(config.read_text().replace("logs/audit-*.log", "state/*.jsonl").replace(
        "    use_inotify: false\n", "    use_inotify: false\n    allow_dirs: [.]\n"))
    out = subprocess.run([sys.executable, "-m", "auditd.cli", "check", "-c", str(config)],
                         capture_output=True, text=True)
    assert out.returncode == 78
    assert f"{config}:4:30: sources[0].paths[1]: reaches into the daemon's own files" in out.stderr
    assert "sources[0].allow_dirs[0]: holds the daemon's own files" in out.stderr


def test_the_customers_contacts_and_every_file_the_config_names_are_never_a_source(deployment):
    """A hostile trial: `respond.contacts.csv` (customers' names and addresses) passed
    `check` as a source, and a hard link to it in the log folder was read: 302 lines with
    raw names and e-mail addresses in the quarantine. Every file the configuration names
    outside `sources` is now the daemon's own."""
    contacts = deployment / "contacts.csv"
    contacts.write_text("customer_id,name,language,channel,address\n"
                        f"C00000001,{TOKEN},zh-CN,email,customer1@mail.example\n")
    letters = deployment / "spool"  # not made yet: guarded as a folder
    config = deployment / "config.yaml"
    base = config.read_text()
    extra = ("respond:\n  contacts: {csv: contacts.csv}\n"
             "deliver:\n  channels:\n    letter: {spool: spool, format: html}\n")
    config.write_text(base.replace("logs/audit-*.log", "contacts.csv") + extra)
    out = subprocess.run([sys.executable, "-m", "auditd.cli", "check", "-c", str(config)],
                         capture_output=True, text=True)
    assert out.returncode == 78, out.stderr
    assert "sources[0].paths[1]: reaches into the daemon's own files" in out.stderr

    # a secret file named relative to the config, checked from another folder (systemd's is /)
    token = deployment / "sms.token"
    token.write_text("t0ken\n")
    token.chmod(0o600)
    config.write_text(base.replace("logs/audit-*.log", "'*.token'") + extra
                      + "    sms: {url: 'http://127.0.0.1:9/sms', token: {file: sms.token}}\n")
    out = subprocess.run([sys.executable, "-m", "auditd.cli", "check", "-c", str(config)],
                         capture_output=True, text=True, cwd="/")
    assert out.returncode == 78, out.stderr
    assert "sources[0].paths[1]: reaches into the daemon's own files" in out.stderr

    config.write_text(base + extra)
    os.link(contacts, deployment / "logs" / "access.log.6")
    letters.mkdir()
    (letters / "letter-1.html").write_text(f"<p>{TOKEN}</p>")
    os.symlink(letters / "letter-1.html", deployment / "logs" / "access.log.7")
    out = subprocess.run([sys.executable, "-m", "auditd.cli", "replay", "-c", str(config),
                          str(deployment / "logs" / "access.log.6"), str(deployment / "logs" / "access.log.7")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "access.log.6: is the daemon's own file" in out.stderr
    assert "access.log.7: is the daemon's own file" in out.stderr
    written = [f for f in (deployment / "state").rglob("*") if f.is_file()] if (deployment / "state").exists() else []
    assert not [f for f in written if TOKEN.encode() in f.read_bytes()]


def test_replay_refuses_a_fifo_and_the_daemons_own_files(deployment):
    (deployment / "state").mkdir()
    os.symlink(deployment / "pseudonym.key", deployment / "logs" / "k.log")
    out = subprocess.run([sys.executable, "-m", "auditd.cli", "replay", "-c", str(deployment / "config.yaml"),
                          str(deployment / "logs" / "access.log.2"), str(deployment / "logs" / "k.log"),
                          str(deployment / "config.yaml")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "access.log.2: a FIFO, not a regular file" in out.stderr
    assert "k.log: is the daemon's own file" in out.stderr and "config.yaml: is the daemon's own file" in out.stderr
    assert not (deployment / "state" / "neo-auditd.db").exists()  # refused before anything was opened


@pytest.mark.slow
def test_the_daemon_run_as_a_user_runs_it(deployment):
    """`neo-auditd run` on the folder: it logs why it refuses, keeps reading the live file,
    and `status --json` says what it refused and which glob matches nothing."""
    import signal
    import sqlite3
    import time

    config = deployment / "config.yaml"
    config.write_text(config.read_text().replace("    use_inotify: false\n", "    poll_interval_s: 0.2\n"))
    log = open(deployment / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)

    def events() -> int:
        try:
            with sqlite3.connect(deployment / "state" / "neo-auditd.db", timeout=5) as conn:
                return conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_segments").fetchone()[0]
        except sqlite3.Error:
            return 0

    def wait_for(predicate, what: str) -> None:
        deadline = time.monotonic() + 60
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    try:
        wait_for(lambda: events() == 2, "the live file's two lines")
        with open(deployment / "logs" / "access.log", "ab") as fh:
            fh.write(line(5) + line(6))
        wait_for(lambda: events() == 4, "the lines written later")
        status = subprocess.run([sys.executable, "-m", "auditd.cli", "status", "-c", str(config), "--json"],
                                capture_output=True, text=True, timeout=60)
        (crm,) = json.loads(status.stdout)["sources"]
        assert {(Path(f["path"]).name, f["reason"]) for f in crm["scan"]["refused"]} == {
            ("access.log.1", "symlink_outside"), ("access.log.2", "fifo")}
        assert crm["scan"]["unmatched_globs"] == [str(deployment / "logs" / "audit-*.log")]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    text = (deployment / "daemon.log").read_text()
    assert "not reading" in text and "a FIFO" in text and "symlink to" in text and TOKEN not in text


def test_a_symlink_to_the_key_planted_in_the_log_folder_blocks_no_start_or_reload(deployment):
    """A hostile trial: `access.log.3 -> pseudonym.key` in the log folder made `check`,
    every start and every reload fail with exit 78, for anyone who can write there. The
    link is refused when read, like any link out of the folder; the config stands."""
    config = deployment / "config.yaml"
    config.write_text(config.read_text().replace("logs/access.log,", "'logs/access.log*',"))
    os.symlink(deployment / "pseudonym.key", deployment / "logs" / "access.log.3")
    out = subprocess.run([sys.executable, "-m", "auditd.cli", "check", "-c", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    runtime = load_runtime(config)
    (source,) = runtime.settings.sources
    store = Store(runtime.settings.store_path)
    store.open()
    tailer = FileTailer(source, runtime.framers["crm"](), {}, first_start=True)
    try:
        records = [r for _ in range(3) for batch in tailer.poll(1000) for r in batch.records]
    finally:
        tailer.stop()
        store.close()
    key = (deployment / "pseudonym.key").read_bytes().strip()
    assert records and not any(key in r for r in records)
