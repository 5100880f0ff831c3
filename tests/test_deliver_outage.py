"""Outages: a webhook receiver down for two minutes, and the daemon killed with SIGKILL
while messages are in flight. Every message arrives; a repeat is only ever a message
the outbox recorded as in flight, and receivers that drop repeats by key see each once."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from auditd.config.typed import Duration
from auditd.deliver.settings import DeliverSettings, RetrySettings, Route, Secret
from deliver_helpers import (SMTP_PASSWORD, SMTP_USER, HttpReceiver, SmtpServer, add_customers, add_incident,
                             add_notice, deliverer, free_port, open_store, outbox_states)

OUTAGE_S = 120.0  # the acceptance's two minutes, for real: the same code path as a shorter one, at its length


@pytest.mark.slow
def test_webhook_receiver_down_for_two_minutes_then_delivered_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NEO_HOOK_SECRET", "hook-secret")
    conn = open_store(tmp_path / "neo.db")
    incident, fleet_key = add_incident(conn)
    for step in ("notify-security", "notify-dpo"):
        add_notice(conn, tmp_path, incident_id=incident, step_id=step, recipient="soc", audience="security",
                   kind="security", channel="webhook", contact_ref="audience:soc")
    port = free_port()  # nothing listens there yet: connections are refused
    retry = RetrySettings(attempts=1000, initial=Duration(1.0), max=Duration(5.0), jitter=Duration(0.5))
    settings = DeliverSettings(retry=retry, to={"soc": [Route(channel="webhook", url=f"http://127.0.0.1:{port}/hook",
                                                              secret=Secret(env="NEO_HOOK_SECRET"))]})
    d = deliverer(settings, tmp_path)
    stop = threading.Event()

    def job() -> None:  # the deliver job, every half second, on a thread of its own as on the scheduler's
        from deliver_helpers import open_store as reopen

        own = reopen(tmp_path / "neo.db")
        while not stop.is_set():
            d.run(own, should_stop=stop.is_set)
            stop.wait(0.5)
        own.close()

    worker = threading.Thread(target=job, daemon=True)
    started = time.monotonic()
    worker.start()
    receiver = HttpReceiver(port=port)
    try:
        time.sleep(OUTAGE_S)
        down_attempts = conn.execute("SELECT COUNT(*) FROM delivery_attempts WHERE outcome = 'retry'").fetchone()[0]
        assert outbox_states(conn) == {"pending": 2} and down_attempts >= 2 * 10  # kept trying, nothing lost
        receiver.start()
        deadline = time.monotonic() + 60
        while outbox_states(conn) != {"delivered": 2}:
            assert time.monotonic() < deadline, outbox_states(conn)
            time.sleep(0.2)
        time.sleep(2)  # a late repeat would arrive now
    finally:
        stop.set()
        worker.join(timeout=30)
        receiver.stop()
    keys = [r.headers["X-Neo-Idempotency-Key"] for r in receiver.requests]
    assert sorted(keys) == [f"{fleet_key}/notify-dpo/soc/r1", f"{fleet_key}/notify-security/soc/r1"]
    assert time.monotonic() - started >= OUTAGE_S
    print(f"\nwebhook outage {OUTAGE_S:.0f} s: {down_attempts} failed attempts while down, "
          f"{len(receiver.requests)} requests received for 2 messages")


DAEMON_CONFIG = textwrap.dedent("""
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


def customer_states(conn) -> dict[str, int]:
    """The customers' notices (the daemon's respond stage adds the incident's own, unrouted here)."""
    return dict(conn.execute("SELECT state, COUNT(*) FROM outbox WHERE audience = 'customers' GROUP BY state"))


def _start(folder: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(folder / "config.yaml")],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_daemon_killed_with_messages_in_flight_then_restarted(tmp_path):
    n = 3000
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
    add_customers(conn, tmp_path / "state" / "respond", n, incident_id=incident)
    conn.close()
    log = tmp_path / "daemon.log"
    with SmtpServer(tmp_path) as server:
        server.handler.delay_s = 0.002
        (tmp_path / "config.yaml").write_text(DAEMON_CONFIG.format(port=server.port, user=SMTP_USER,
                                                                   cert=server.cert))
        daemon = _start(tmp_path, log)
        try:
            deadline = time.monotonic() + 120
            while len(server.received) < n // 4 + 25:  # mid-slice: some sent, not yet recorded
                assert daemon.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the daemon delivered too little"
                time.sleep(0.01)
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
            at_kill = len(server.received)
            conn = open_store(tmp_path / "state" / "neo-auditd.db")
            in_flight = {k for (k,) in conn.execute("SELECT wire_key FROM outbox WHERE state = 'sending'"
                                                    " AND audience = 'customers'")}
            recorded = conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'delivered'").fetchone()[0]
            conn.close()
            assert in_flight, "the kill found no message in flight"
            daemon = _start(tmp_path, log)
            deadline = time.monotonic() + 300
            conn = open_store(tmp_path / "state" / "neo-auditd.db")
            while customer_states(conn) != {"delivered": n}:
                assert daemon.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, customer_states(conn)
                time.sleep(0.2)
            time.sleep(1)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)
        keys = collections.Counter(r.message["X-Neo-Idempotency-Key"] for r in server.received)
    repeated = {k for k, c in keys.items() if c > 1}
    marked = {k for (k,) in conn.execute("SELECT wire_key FROM outbox WHERE possible_repeat = 1"
                                         " AND audience = 'customers'")}
    interrupted = conn.execute("SELECT COUNT(*) FROM delivery_attempts a JOIN outbox o ON o.id = a.outbox_id"
                               " WHERE a.outcome = 'interrupted' AND o.audience = 'customers'").fetchone()[0]
    assert len(keys) == n  # every message arrived: distinct keys at the receiver = messages sent
    assert repeated <= in_flight == marked  # repeats only for messages recorded as in flight, all marked
    assert interrupted == len(in_flight)
    assert sum(keys.values()) == n + len(repeated)
    print(f"\nkill -9: {n} messages, {at_kill} received before the kill ({recorded} recorded delivered), "
          f"{len(in_flight)} in flight, {sum(keys.values())} received in all, {len(keys)} distinct keys, "
          f"{len(repeated)} repeats (all of them among the {len(marked)} marked possible repeats)")
    status = subprocess.run([sys.executable, "-m", "auditd.cli", "status", "-c", str(tmp_path / "config.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert f"possible repeats after a crash: {len(in_flight)}" in status.stdout
    assert "FAILED:" in status.stdout and "no route for audience:security" in status.stdout
    for text in (log.read_text(), status.stdout):
        assert SMTP_PASSWORD not in text
    assert json.loads(conn.execute("SELECT receipt FROM outbox LIMIT 1").fetchone()[0])["queue_id"]
