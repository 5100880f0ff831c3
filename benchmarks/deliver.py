#!/usr/bin/env python3
"""Benchmark: customer notices draining through the outbox to a loopback SMTP server,
and what that costs the pipeline.

One incident, N rendered customer notices (default 100,000) in the store; a real SMTP
server (aiosmtpd, STARTTLS with a certificate made here, AUTH) in a process of its own
on 127.0.0.1. In paired rounds the pipeline replays a fresh part of the example log into
the same store, once with no deliver process (idle) and once while the daemon's deliver
process drains (the real arrangement: `jobs/deliver_supervisor.DeliverProcess` starts
`python -m auditd.jobs.deliver_process` with the settings, as `neo-auditd run` does;
the replay starts once it is sending, and it is stopped again after the replay);
after the rounds the rest drains alone. Prints the drain rate (messages/s, from the
deliver process's start to an empty outbox, and while it was sending) and the
pipeline's events/s idle and while draining, with the median of the rounds' ratios.
Usage:

    python benchmarks/deliver.py [--notices 100000] [--rounds 5] [--lines 100000] [--workdir DIR]

Needs openssl (the certificate) and aiosmtpd (pip install -e '.[test]').
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "bench", "bench-smtp-password"

SERVER = r"""
import asyncio, logging, ssl, sys, threading
logging.getLogger("mail.log").setLevel(logging.ERROR)
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
count = 0
class Handler:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        return f"250 2.0.0 Ok: queued as Q{count:08d}"
def auth(server, session, envelope, mechanism, data):
    return AuthResult(success=isinstance(data, LoginPassword) and data.password == b"%s", handled=False)
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
c = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
               authenticator=auth, auth_required=True)
c.start()
print("ready", flush=True)
for line in sys.stdin:
    print(count, flush=True)
c.stop()
""" % PASSWORD.encode().decode()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_smtp(workdir: Path) -> tuple[subprocess.Popen, int, Path]:
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(cert), str(key), str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc, port, cert


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        try:
            tasks = list(Path(f"/proc/{todo.pop()}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def pin_tree(pid: int, cpus: set[int]) -> None:
    """The deliver process and its SMTP sender child: on the other core, like a mail relay."""
    for child in [pid, *descendants(pid)]:
        try:
            os.sched_setaffinity(child, cpus)
        except OSError:
            pass


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


class Measured:
    """A replay's events/s, the pipeline thread's CPU per event, and how busy the machine was."""

    def __init__(self, run):
        busy0, total0 = machine_busy()
        cpu0 = time.thread_time()
        self.totals = run()
        self.cpu_s = time.thread_time() - cpu0
        busy1, total1 = machine_busy()
        self.cores_busy = (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)
        self.eps = self.totals.events / self.totals.seconds
        self.us_per_event = 1e6 * self.cpu_s / max(1, self.totals.events)


def received(proc: subprocess.Popen) -> int:
    proc.stdin.write("?\n")
    proc.stdin.flush()
    return int(proc.stdout.readline())


def prepare(workdir: Path, files: int, lines: int, port: int, cert: Path, rate: float | None = None) -> Path:
    from auditd.enrich.pseudonym import create_key_file

    for i in range(files):
        out = workdir / f"log{i}"
        if not (out / "access.log").exists():
            subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--out", str(out), "--lines",
                            str(lines), "--seed", str(100 + i)], check=True, capture_output=True)
    if not (workdir / "pseudonym.key").exists():  # a --workdir used before keeps its key
        create_key_file(workdir / "pseudonym.key")
    (workdir / "smtp.password").write_text(PASSWORD)
    (workdir / "smtp.password").chmod(0o600)
    config = workdir / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [log0/access.log]\n    format: neo-crm\n"
        "pseudonym: {key_file: pseudonym.key}\n"
        f"directory: {{path: {REPO / 'examples' / 'directory.yaml'}}}\n"
        "ops: {metrics: {enabled: false}}\n"
        "deliver:\n  claim_batch: 200\n  channels:\n"
        f"    email: {{host: 127.0.0.1, port: {port}, security: starttls, username: {USER},"
        f" password: {{file: smtp.password}}, sender: security@neo-retail.example, ca_file: {cert}"
        + (f", rate_per_minute: {rate}" if rate else "") + "}\n")
    return config


def render_notices(conn, folder: Path, n: int) -> str:
    """One incident (through the correlator's seam) and n rendered customer notices, as respond writes them."""
    from auditd.correlate import CorrelateSettings, Correlator
    from auditd.detect.alert import Alert
    from auditd.store.sqlite import immediate
    from auditd.store.times import to_db

    at = dt.datetime(2026, 11, 2, 2, 0, tzinfo=dt.timezone.utc)
    alert = Alert(alert_id="bench-1", rule_id="bulk-export", rule_kind="match", severity="critical",
                  title="bulk export", timestamp=at, event_ids=("e1",), actor="E10055", subject_ids=(),
                  categories=("contact",), sensitive=False, record_count=n)
    with immediate(conn):
        Correlator(CorrelateSettings(), lambda: at).apply(conn, [alert])
    incident = conn.execute("SELECT incident_id FROM incidents").fetchone()[0]
    text = ("Dear customer,\n\nWe have found a security incident that concerns your personal information: "
            "your name and phone number. ...\n") * 4
    step = folder / "notices" / incident / "notify-customers"
    step.mkdir(parents=True, mode=0o700)
    rows = []
    for i in range(n):
        body = json.dumps({"to": {"channel": "email", "address": f"customer{i}@mail.example", "name": f"客户{i}"},
                           "language": "en", "subject": "About a security incident", "text": text, "html": "",
                           "attachments": []}).encode()
        path = step / f"p_{i:07d}-r1.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, body)
        os.close(fd)
        rows.append((f"{incident}/notify-customers/p:{i:07d}/1", incident, "notify-customers", 1, "notice",
                     "customers", "email", f"p:{i:07d}", f"contact:p:{i:07d}:email", "en",
                     "About a security incident", str(path), hashlib.sha256(body).hexdigest(), to_db(at)))
    with immediate(conn):
        conn.executemany(
            "INSERT INTO notices (idempotency_key, incident_id, step_id, revision, kind, audience, channel, recipient,"
            " contact_ref, language, subject, body_path, body_sha256, rendered_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows)
    return incident


class Drain:
    """The daemon's deliver process, started with the settings and stopped between halves."""

    def __init__(self, settings, config: Path, db: Path, smtp: subprocess.Popen, pin: set[int] | None):
        from auditd.jobs.deliver_supervisor import DeliverProcess

        self.settings = settings
        self.db = db
        self.smtp = smtp
        self.pin = pin
        self.process = DeliverProcess(db, config, log_level="WARNING")
        self.seconds = 0.0  # from each start to its stop
        self.sending_seconds = 0.0  # from each start's first message on
        self.cpu_seconds = 0.0  # the deliver processes' own CPU time (and their SMTP children's)
        self._started = 0.0
        self._first = None
        self._stop = threading.Event()
        self._pinner: threading.Thread | None = None

    def start(self) -> None:
        """Start it and return once it sends (its start-up, imports and settings, is not the pipeline's)."""
        before = received(self.smtp)
        self._started, self._first = time.monotonic(), None
        self._stop.clear()
        self.process.apply(self.settings, fleet=False)
        self._pinner = threading.Thread(target=self._keep_pinned, daemon=True)
        self._pinner.start()
        deadline = time.monotonic() + 60
        while received(self.smtp) == before and self.backlog() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._first = time.monotonic()

    def _keep_pinned(self) -> None:
        while not self._stop.wait(0.2):
            pid = self.process.pid()
            if pid is not None and self.pin:
                pin_tree(pid, self.pin)

    def pause(self) -> None:
        pid = self.process.pid()
        cpu = process_cpu(pid) if pid else 0.0
        self.process.stop(60)
        self._stop.set()
        if self._pinner is not None:
            self._pinner.join()
        now = time.monotonic()
        self.seconds += now - self._started
        self.sending_seconds += now - (self._first or now)
        self.cpu_seconds += cpu

    def backlog(self) -> int:
        from auditd.jobs.respond_due import connect

        conn = connect(self.db)
        try:  # rows still open, and notices the outbox has not taken in yet
            return conn.execute(
                "SELECT (SELECT COUNT(*) FROM outbox WHERE state IN ('held', 'pending', 'sending', 'digested'))"
                " + (SELECT COALESCE(MAX(seq), 0) FROM notices) - (SELECT COALESCE(MAX(notice_seq), 0) FROM outbox)"
            ).fetchone()[0]
        finally:
            conn.close()


def process_cpu(pid: int) -> float:
    """CPU seconds of a process, its live descendants and its reaped children so far (/proc)."""
    total = 0.0
    for i, p in enumerate([pid, *descendants(pid)]):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15 if i == 0 else 13]) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lines", type=int, default=100_000, help="log lines the pipeline replays per half-round")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--rate", type=float, help="deliver.channels.email.rate_per_minute (default: no limit)")
    parser.add_argument("--no-pin", action="store_true", help="leave every process on every core (default: the "
                        "pipeline's process on core 0; the SMTP server, the deliver process and its sender child on "
                        "core 1)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from auditd.jobs.respond_due import connect
    from auditd.runtime import load_runtime
    from auditd.service import open_store, replay

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="neo-deliver-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "state", ignore_errors=True)
    smtp, port, cert = start_smtp(workdir)
    try:
        config = prepare(workdir, 2 * args.rounds, args.lines, port, cert, args.rate)
        runtime = load_runtime(config)
        store, quarantine = open_store(runtime)
        t0 = time.monotonic()
        render_notices(store.conn, workdir / "state" / "respond", args.notices)
        print(f"rendered {args.notices:,} notices in {time.monotonic() - t0:.1f} s")
        pinned = not args.no_pin and (os.cpu_count() or 1) >= 2
        if pinned:
            os.sched_setaffinity(smtp.pid, {1})
            os.sched_setaffinity(0, {0})
        drain = Drain(runtime.settings, config, store.path, smtp, {1} if pinned else None)
        ratios, idle_eps, busy_eps = [], [], []
        cpu_ratios = []
        for i in range(args.rounds):
            idle = Measured(lambda: replay(runtime, store, quarantine, [workdir / f"log{2 * i}" / "access.log"],
                                           "crm").totals)
            drain.start()
            before = received(smtp)
            busy = Measured(lambda: replay(runtime, store, quarantine, [workdir / f"log{2 * i + 1}" / "access.log"],
                                           "crm").totals)
            drained = received(smtp) > before and drain.backlog() > 0
            drain.pause()
            sent = received(smtp) - before
            idle_eps.append(idle.eps)
            busy_eps.append(busy.eps)
            ratios.append(busy.eps / idle.eps)
            cpu_ratios.append(idle.us_per_event / busy.us_per_event)
            print(f"round {i + 1}: pipeline {idle.eps:,.0f} events/s idle, {busy.eps:,.0f} while draining "
                  f"({ratios[-1]:.1%}); {sent:,} messages sent meanwhile"
                  + ("" if drained else " (the outbox ran dry before the replay ended)")
                  + f"\n         pipeline thread CPU {idle.us_per_event:.1f} vs {busy.us_per_event:.1f} us an event; "
                  f"cores busy (whole machine) {idle.cores_busy:.2f} vs {busy.cores_busy:.2f} of {os.cpu_count()}")
        drain.start()
        while drain.backlog():
            time.sleep(0.05)
        drain.pause()
        total = received(smtp)
        conn = connect(store.path)
        states = dict(conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        conn.close()
        print(f"\ndrain: {total:,} messages to the loopback SMTP server (STARTTLS, AUTH) in {drain.seconds:.1f} s of "
              f"deliver processes' life: {total / drain.seconds:,.0f} messages/s ({total / drain.sending_seconds:,.0f} "
              f"messages/s while sending, start-ups left out); outbox {states}")
        print(f"deliver process: {drain.cpu_seconds:.1f} s of CPU with its SMTP child "
              f"({1e6 * drain.cpu_seconds / max(1, total):,.0f} us a message), none of it in the pipeline's process")
        print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(f"pipeline: median {statistics.median(idle_eps):,.0f} events/s idle, "
              f"{statistics.median(busy_eps):,.0f} while draining; median of paired ratios "
              f"{statistics.median(ratios):.1%} of idle ({len(ratios)} rounds)")
        print(f"pipeline thread CPU per event: median of paired ratios {statistics.median(cpu_ratios):.1%} of idle "
              "(the work per event; a gap between this and the events/s ratio is time off the CPU: waiting for a "
              "core, the interpreter lock or the store's write lock)")
        store.close()
    finally:
        smtp.stdin.close()
        smtp.wait(timeout=30)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
