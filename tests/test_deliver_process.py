"""The deliver job in a process of its own: a real `neo-auditd run` subprocess, a real SMTP
server (aiosmtpd, STARTTLS, AUTH) on loopback. The daemon starts its deliver process,
hands it every accepted reload, restarts it with backoff when it dies (kill -9 mid-send:
every message arrives, repeats only among those recorded as possible repeats), and
stops it with itself, leaving no process behind."""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from auditd.deliver.lock import DeliverLock
from auditd.jobs.deliver_supervisor import DeliverProcess, describe_exit
from auditd.ops import runstate
from deliver_helpers import SMTP_PASSWORD, SMTP_USER, SmtpServer, add_customers, add_incident, open_store

CONFIG = textwrap.dedent("""
    state_dir: state
    sources:
      - {{name: app, paths: [logs/access.log], format: neo-crm, start_at: beginning, poll_interval_s: 0.2}}
    pseudonym: {{key_file: pseudonym.key}}
    ops: {{metrics: {{enabled: false}}}}
    deliver:
      check_every: 1s
      claim_batch: 100
      retry: {{attempts: 50, initial: 1s, max: 2s, jitter: 0s}}
      channels:
        email: {{host: 127.0.0.1, port: {port}, security: starttls, username: {user},
                 password: {{file: smtp.password}}, sender: security@neo-retail.example, ca_file: {cert}}}
""")


def _folder(tmp_path: Path, server: SmtpServer, customers: int) -> tuple[Path, str]:
    """A daemon's folder with `customers` rendered notices of one incident waiting in its store."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "access.log").write_text("")
    (tmp_path / "state").mkdir(mode=0o700)
    subprocess.run([sys.executable, "-m", "auditd.cli", "keygen", str(tmp_path / "pseudonym.key")], check=True,
                   capture_output=True)
    password = tmp_path / "smtp.password"
    password.write_text(SMTP_PASSWORD)
    password.chmod(0o600)
    conn = open_store(tmp_path / "state" / "neo-auditd.db")
    incident, _ = add_incident(conn)
    if customers:
        add_customers(conn, tmp_path / "state" / "respond", customers, incident_id=incident)
    conn.close()
    (tmp_path / "config.yaml").write_text(CONFIG.format(port=server.port, user=SMTP_USER, cert=server.cert))
    return tmp_path / "state" / "neo-auditd.db", incident


def _start(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(folder / "config.yaml")],
                            stdout=open(folder / "daemon.log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _deliver_record(store: Path) -> dict:
    return (runstate.read(store) or {}).get("deliver") or {}


def _wait(what, daemon: subprocess.Popen, folder: Path, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = what()
        if value:
            return value
        assert daemon.poll() is None, (folder / "daemon.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (folder / "daemon.log").read_text()[-3000:]
        time.sleep(0.05)


def _running_pid(store: Path, daemon: subprocess.Popen, folder: Path, not_pid: int | None = None) -> int:
    def pid() -> int | None:
        record = _deliver_record(store)
        if record.get("state") == "running" and record.get("pid") not in (None, not_pid):
            return int(record["pid"])
        return None

    return _wait(pid, daemon, folder)


def _customer_states(store: Path) -> dict[str, int]:
    with sqlite3.connect(store) as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM outbox WHERE audience = 'customers' GROUP BY state"))


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _stop(daemon: subprocess.Popen) -> None:
    if daemon.poll() is None:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)


# -- the daemon and its deliver process ---------------------------------------------------------
@pytest.mark.slow
def test_the_daemon_sends_from_a_deliver_process_of_its_own(tmp_path):
    with SmtpServer(tmp_path) as server:
        store, _ = _folder(tmp_path, server, 200)
        daemon = _start(tmp_path)
        try:
            pid = _running_pid(store, daemon, tmp_path)
            _wait(lambda: _customer_states(store) == {"delivered": 200}, daemon, tmp_path)
            assert pid != daemon.pid
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert ppid == daemon.pid
            assert b"auditd.jobs.deliver_process" in Path(f"/proc/{pid}/cmdline").read_bytes()
            nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
            daemon_nice = int(Path(f"/proc/{daemon.pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
            assert nice == min(19, daemon_nice + 10)  # below the pipeline: where they meet on a core, it yields
            status = subprocess.run([sys.executable, "-m", "auditd.cli", "status", "-c", str(tmp_path / "config.yaml"),
                                     "--json"], capture_output=True, text=True, timeout=60)
            text = subprocess.run([sys.executable, "-m", "auditd.cli", "status", "-c", str(tmp_path / "config.yaml")],
                                  capture_output=True, text=True, timeout=60).stdout
        finally:
            _stop(daemon)
        assert len({r.message["X-Neo-Idempotency-Key"] for r in server.received}) == len(server.received) == 200
    deliver = json.loads(status.stdout)["daemon"]["deliver"]
    assert deliver["state"] == "running" and deliver["pid"] == pid and deliver["restarts"] == 0
    assert f"deliver:      process running (pid {pid}" in text
    with sqlite3.connect(store) as conn:  # the job's runs are recorded as before, by the deliver process
        assert conn.execute("SELECT runs FROM jobs WHERE job_id = 'deliver'").fetchone()[0] >= 1
    log = (tmp_path / "daemon.log").read_text()
    assert "deliver process started" in log and SMTP_PASSWORD not in log


@pytest.mark.slow
def test_a_killed_deliver_process_is_restarted_and_every_message_arrives(tmp_path):
    n = 3000
    with SmtpServer(tmp_path) as server:
        server.handler.delay_s = 0.002
        store, _ = _folder(tmp_path, server, n)
        daemon = _start(tmp_path)
        try:
            first = _running_pid(store, daemon, tmp_path)
            _wait(lambda: len(server.received) >= n // 4 + 25, daemon, tmp_path)  # mid-slice: sent, not recorded
            os.kill(first, signal.SIGKILL)
            with sqlite3.connect(store) as conn:  # before the successor can queue them again
                in_flight = {k for (k,) in conn.execute("SELECT wire_key FROM outbox WHERE state = 'sending'"
                                                        " AND audience = 'customers'")}
            assert in_flight, "the kill found no message in flight"
            second = _running_pid(store, daemon, tmp_path, not_pid=first)
            assert not _alive(first)
            _wait(lambda: _customer_states(store) == {"delivered": n}, daemon, tmp_path, timeout_s=300)
            time.sleep(1)  # a late repeat would arrive now
            record = _deliver_record(store)
            text = subprocess.run([sys.executable, "-m", "auditd.cli", "status", "-c", str(tmp_path / "config.yaml")],
                                  capture_output=True, text=True, timeout=60).stdout
            assert daemon.poll() is None  # the daemon itself never stopped
        finally:
            _stop(daemon)
        keys = collections.Counter(r.message["X-Neo-Idempotency-Key"] for r in server.received)
    repeated = {k for k, c in keys.items() if c > 1}
    with sqlite3.connect(store) as conn:
        marked = {k for (k,) in conn.execute("SELECT wire_key FROM outbox WHERE possible_repeat = 1"
                                             " AND audience = 'customers'")}
    assert len(keys) == n  # every message arrived: distinct keys at the receiver = messages sent
    assert repeated <= in_flight == marked  # repeats only among those recorded as in flight, all marked
    assert sum(keys.values()) == n + len(repeated)
    assert record["restarts"] == 1 and record["pid"] == second and record["last_exit"] == "killed by SIGKILL"
    assert "restarted 1 time, last after it died (killed by SIGKILL)" in text
    assert f"possible repeats after a crash: {len(in_flight)}" in text
    log_text = (tmp_path / "daemon.log").read_text()
    assert "@mail.example" not in log_text and SMTP_PASSWORD not in log_text  # no address, no secret
    died = [json.loads(line) for line in log_text.splitlines() if "deliver process died" in line]
    assert len(died) == 1 and died[0]["log.level"] == "error" and died[0]["exit"] == "killed by SIGKILL"
    print(f"\nkill -9 of the deliver process: {n} messages, {len(in_flight)} in flight, {sum(keys.values())} "
          f"received, {len(keys)} distinct keys, {len(repeated)} repeats (all among the {len(marked)} marked)")


@pytest.mark.slow
def test_sigterm_of_the_daemon_stops_its_deliver_process_and_leaves_no_process(tmp_path):
    with SmtpServer(tmp_path) as server:
        server.handler.delay_s = 0.01  # still sending when the daemon is told to stop
        store, _ = _folder(tmp_path, server, 2000)
        daemon = _start(tmp_path)
        try:
            pid = _running_pid(store, daemon, tmp_path)
            _wait(lambda: len(server.received) >= 100, daemon, tmp_path)
            family = [pid, *_descendants(pid)]
            assert len(family) >= 2  # the deliver process and its SMTP conversation's child
            daemon.send_signal(signal.SIGTERM)  # the daemon's pid only, as `kill PID` does
            assert daemon.wait(timeout=60) == 0
        finally:
            _stop(daemon)
    assert [p for p in family if _alive(p)] == []
    assert _deliver_record(store)["state"] == "stopped"
    log = (tmp_path / "daemon.log").read_text()
    assert "deliver process stopped" in log and "did not stop in time" not in log
    with sqlite3.connect(store) as conn:  # stopped between two chunks: nothing left in flight
        assert conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'sending'").fetchone()[0] == 0


@pytest.mark.slow
def test_a_daemon_killed_with_sigkill_leaves_no_deliver_process_behind(tmp_path):
    with SmtpServer(tmp_path) as server:
        server.handler.delay_s = 0.01
        store, _ = _folder(tmp_path, server, 2000)
        daemon = _start(tmp_path)
        try:
            pid = _running_pid(store, daemon, tmp_path)
            _wait(lambda: len(server.received) >= 100, daemon, tmp_path)
            family = [pid, *_descendants(pid)]
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=30)
            deadline = time.monotonic() + 60
            while [p for p in family if _alive(p)]:  # they see the end of the daemon's pipe and stop
                assert time.monotonic() < deadline, [p for p in family if _alive(p)]
                time.sleep(0.1)
        finally:
            _stop(daemon)


@pytest.mark.slow
def test_a_reload_reaches_the_deliver_process_and_a_rejected_one_does_not(tmp_path):
    (tmp_path / "b").mkdir()
    with SmtpServer(tmp_path) as first, SmtpServer(tmp_path / "b") as second:
        store, incident = _folder(tmp_path, first, 10)
        daemon = _start(tmp_path)
        try:
            _wait(lambda: _customer_states(store) == {"delivered": 10}, daemon, tmp_path)
            config = tmp_path / "config.yaml"
            config.write_text(config.read_text().replace(f"port: {first.port}", f"port: {second.port}")
                              .replace(str(first.cert), str(second.cert)))
            daemon.send_signal(signal.SIGHUP)
            _wait(lambda: "deliver process reloaded" in (tmp_path / "daemon.log").read_text(), daemon, tmp_path)
            _add_customers(store, tmp_path, incident, 10, 20)
            _wait(lambda: _customer_states(store) == {"delivered": 30}, daemon, tmp_path)
            # a broken config is refused by the daemon and never reaches the deliver process: even
            # one started afresh (kill -9) runs the settings in force, not the file
            config.write_text(config.read_text() + "deliver: [this is not a mapping\n")
            daemon.send_signal(signal.SIGHUP)
            _wait(lambda: "reload rejected" in (tmp_path / "daemon.log").read_text(), daemon, tmp_path)
            old = _running_pid(store, daemon, tmp_path)
            os.kill(old, signal.SIGKILL)
            _running_pid(store, daemon, tmp_path, not_pid=old)
            _add_customers(store, tmp_path, incident, 30, 10)
            _wait(lambda: _customer_states(store) == {"delivered": 40}, daemon, tmp_path)
        finally:
            _stop(daemon)
        assert len(first.received) == 10 and len(second.received) == 30
    assert (tmp_path / "daemon.log").read_text().count("deliver process reloaded") == 1


def _add_customers(store: Path, folder: Path, incident: str, start: int, n: int) -> None:
    """More rendered notices, as respond adds them while the daemon runs."""
    from deliver_helpers import add_notice
    from auditd.store.sqlite import immediate

    conn = open_store(store)
    try:
        with immediate(conn):
            for i in range(start, start + n):
                add_notice(conn, folder / "state" / "respond", incident_id=incident, step_id="notify-customers",
                           recipient=f"p:{i:06d}", address=f"c{i}@mail.example")
    finally:
        conn.close()


# -- the supervisor alone ---------------------------------------------------------------------
def test_a_deliver_process_that_keeps_dying_is_restarted_with_backoff_and_each_death_is_logged(tmp_path, caplog):
    from auditd.settings import Settings

    settings = Settings(state_dir=tmp_path, sources=[], pseudonym=None)  # type: ignore[arg-type]
    records: list[dict] = []
    supervisor = DeliverProcess(tmp_path / "neo-auditd.db", tmp_path / "config.yaml", on_change=records.append,
                                backoff_s=(0.05, 0.1),
                                command=[sys.executable, "-c", "import sys; sys.stdin.buffer.read(1); sys.exit(3)"])
    caplog.set_level(logging.ERROR, logger="neo_auditd.deliver")
    supervisor.apply(settings, fleet=False)
    deadline = time.monotonic() + 60
    while supervisor.record["restarts"] < 3:
        assert time.monotonic() < deadline, records
        time.sleep(0.02)
    scraped = _scrape(supervisor)
    assert scraped["neo_auditd_deliver_process_restarts_total"] >= 3
    assert sum(v for k, v in scraped.items() if k.startswith("neo_auditd_deliver_process_state{")) == 1
    supervisor.stop(10)
    assert supervisor.record["state"] == "stopped" and supervisor.pid() is None
    assert _scrape(supervisor)['neo_auditd_deliver_process_state{state="stopped"}'] == 1
    assert {r["last_exit"] for r in records if r["state"] == "restarting"} == {"exit code 3"}
    died = [r for r in caplog.records if r.getMessage() == "deliver process died; starting it again"]
    assert len(died) >= 3 and [r.restart_in_s for r in died[:3]] == [0.05, 0.1, 0.1]
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(None) == "could not be started"


def _scrape(supervisor: DeliverProcess) -> dict[str, float]:
    """The deliver process's series as the metrics endpoint serves them."""
    from prometheus_client import generate_latest

    from auditd.ops.metrics import Metrics

    metrics = Metrics()
    metrics.watch_deliver_process(lambda: supervisor.record)
    lines = generate_latest(metrics.registry).decode().splitlines()
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in lines)
            if name.startswith("neo_auditd_deliver_process")}


def test_a_disabled_deliver_stage_has_no_process_and_enabling_it_starts_one(tmp_path):
    import dataclasses

    from auditd.settings import Settings

    settings = Settings(state_dir=tmp_path, sources=[], pseudonym=None)  # type: ignore[arg-type]
    off = dataclasses.replace(settings, deliver=dataclasses.replace(settings.deliver, enabled=False))
    supervisor = DeliverProcess(tmp_path / "neo-auditd.db", tmp_path / "config.yaml",
                                command=[sys.executable, "-c", "import sys; sys.stdin.buffer.read()"])
    supervisor.apply(off, fleet=False)
    assert supervisor.pid() is None and supervisor.record["state"] == "stopped"
    supervisor.apply(settings, fleet=False)
    deadline = time.monotonic() + 30
    while supervisor.pid() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pid = supervisor.pid()
    supervisor.apply(off, fleet=False)  # a reload that disables it stops it
    assert supervisor.pid() is None and not _alive(pid)


def test_outbox_send_refuses_while_a_deliver_process_holds_the_outbox(tmp_path):
    from auditd.enrich.pseudonym import create_key_file

    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "state").mkdir(mode=0o700)
    open_store(tmp_path / "state" / "neo-auditd.db").close()
    (tmp_path / "config.yaml").write_text("state_dir: state\nsources: []\npseudonym: {key_file: pseudonym.key}\n")
    held = DeliverLock(tmp_path / "state" / "neo-auditd.db")
    assert held.try_acquire()
    try:
        assert not DeliverLock(tmp_path / "state" / "neo-auditd.db").try_acquire()  # one holder, even in-process
        cmd = [sys.executable, "-m", "auditd.cli", "outbox", "send", "-c", str(tmp_path / "config.yaml")]
        busy = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert busy.returncode == 75 and f"deliver process (pid {os.getpid()})" in busy.stderr
    finally:
        held.release()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert oct((tmp_path / "state" / "deliver.lock").stat().st_mode & 0o777) == "0o600"


def test_a_one_shot_command_logs_which_message_failed_and_why():
    """`outbox send` with a channel missing logs each failed message; Python's last-resort
    handler printed only 'message failed', 225 times, without which or why."""
    code = ("import logging, sys; from auditd.logs import setup_command_logging; setup_command_logging(); "
            "logging.getLogger('neo_auditd.deliver').error('message failed', extra={'outbox_id': 353, "
            "'route': 'email', 'error': 'channel email is not configured'}); "
            "logging.getLogger('neo_auditd.deliver').info('quiet')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr == ("error: message failed (outbox_id=353, route=email, "
                           "error=channel email is not configured)\n")
    assert proc.stdout == ""


def test_outbox_list_says_when_its_limit_cut_the_list(tmp_path):
    from auditd.deliver import outbox
    from auditd.enrich.pseudonym import create_key_file

    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "state").mkdir(mode=0o700)
    conn = open_store(tmp_path / "state" / "neo-auditd.db")
    now = dt.datetime(2026, 12, 5, 13, 0, tzinfo=dt.timezone.utc)
    for n in range(3):
        outbox.add_own(conn, route="email", channel="email", key=f"k{n}", kind="digest", audience="security",
                       recipient="security", contact_ref="security-team", body_path="x.json", now=now)
    conn.commit()
    conn.close()
    (tmp_path / "config.yaml").write_text("state_dir: state\nsources: []\npseudonym: {key_file: pseudonym.key}\n")
    cmd = [sys.executable, "-m", "auditd.cli", "outbox", "list", "-c", str(tmp_path / "config.yaml")]
    cut = subprocess.run([*cmd, "--limit", "2"], capture_output=True, text=True, timeout=60)
    assert cut.returncode == 0 and "the newest 2 shown; there are more (--limit N" in cut.stdout, cut.stderr
    whole = subprocess.run([*cmd, "--limit", "3"], capture_output=True, text=True, timeout=60)
    assert whole.returncode == 0 and "there are more" not in whole.stdout


def test_the_deliver_lock_refuses_a_link(tmp_path):
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "deliver.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        DeliverLock(tmp_path / "neo-auditd.db").try_acquire()


def test_status_shows_the_deliver_process_and_its_restarts():
    from zoneinfo import ZoneInfo

    from auditd.ops.status_text import _deliver_line

    zone = ZoneInfo("Asia/Shanghai")
    at = dt.datetime(2026, 12, 4, 2, 0, tzinfo=dt.timezone.utc).isoformat()
    running = {"alive": True, "state": "running",
               "deliver": {"state": "running", "pid": 42, "since": at, "restarts": 2, "last_exit": "exit code 1",
                           "last_exit_at": at}}
    assert _deliver_line(running, zone) == ("process running (pid 42, since 2026-12-04 10:00:00+08:00); restarted 2 "
                                            "times, last after it died (exit code 1) at 2026-12-04 10:00:00+08:00")
    restarting = {**running, "deliver": {**running["deliver"], "state": "restarting", "pid": None}}
    assert _deliver_line(restarting, zone).startswith("process RESTARTING; restarted 2 times")
    assert _deliver_line({**running, "alive": False}, zone).startswith("process not running")


def test_a_claim_sends_only_rows_still_pending_when_the_write_lock_is_taken(tmp_path):
    """Claims choose their rows before the write lock; a row that left `pending` in
    between (another writer than this sender) is not marked `sending` nor sent."""
    from auditd.deliver import outbox

    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 3, incident_id=incident)
    now = dt.datetime.now(dt.timezone.utc)
    outbox.intake(conn, lambda notice: [outbox.Planned(route="email", channel="email")], now)
    ids = [i for (i,) in conn.execute("SELECT id FROM outbox ORDER BY id")]

    def meanwhile(c, row):  # runs between the read and the write: the middle row is taken elsewhere
        if row.id == ids[1]:
            c.execute("UPDATE outbox SET state = 'failed' WHERE id = ?", (row.id,))
        return None

    claimed, suppressed = outbox.claim(conn, "email", now, 10, "w1", meanwhile)
    assert [r.id for r in claimed] == [ids[0], ids[2]] and suppressed == []
    assert dict(conn.execute("SELECT id, state FROM outbox")) == {ids[0]: "sending", ids[1]: "failed",
                                                                   ids[2]: "sending"}


def test_the_deliver_process_takes_the_fleets_lease_only_while_the_daemon_reads_the_fleets_alerts(tmp_path):
    """The daemon says `fleet` with the settings (it reads the cluster alerts back); the job
    then gets the deliver lease and the fleet's records through context.fleet, else none.
    (The lease itself against a real server: tests/test_elastic_deliveries.py.)"""
    import pickle

    from auditd.elastic.deliveries import FleetDeliveries
    from auditd.elastic.testing import scratch_settings
    from auditd.jobs.deliver_process import DeliverConfig, DeliverService
    from auditd.settings import Settings

    elastic = scratch_settings("http://127.0.0.1:9")  # never reached: constructing does no I/O
    settings = Settings(state_dir=tmp_path, sources=[], pseudonym=None, elastic=elastic)  # type: ignore[arg-type]
    config = pickle.loads(pickle.dumps(DeliverConfig.of(settings, tmp_path / "config.yaml")))  # as on the pipe
    service = DeliverService(tmp_path / "neo-auditd.db", control=-1)
    context = service.context()
    service.fleet.set(False, config.elastic)
    assert context.fleet() is None
    service.fleet.set(True, config.elastic)
    lease = context.fleet()
    assert isinstance(lease, FleetDeliveries) and lease.agent == "host-a" and context.fleet() is lease
    service.fleet.set(True, None)  # a reload without the elastic section
    assert context.fleet() is None


def test_the_deliver_lock_is_taken_on_a_full_disk(tmp_path, monkeypatch):
    """A trial on a genuinely full disk: the deliver process crash-looped on ENOSPC from
    writing its pid into deliver.lock, a courtesy for whoever waits on the lock."""
    import errno

    (tmp_path / "state").mkdir()

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)  # the one write a full disk refuses here
    held = DeliverLock(tmp_path / "state" / "neo-auditd.db")
    assert held.try_acquire()
    try:
        assert not DeliverLock(tmp_path / "state" / "neo-auditd.db").try_acquire()  # and it is held
    finally:
        held.release()
