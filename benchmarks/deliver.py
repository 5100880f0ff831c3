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
a round that finds fewer than N/2 messages waiting renders N more first, so that every
busy half drains from its start to its end; after the rounds the rest drains alone.
Prints the drain rate (messages/s over the deliver processes' lives up to their last
delivery, and over the part of it after their first message) and the pipeline's
events/s idle and while draining, with the median of the rounds' ratios; per round,
where the pipeline thread's time went: its CPU per event, its time off the CPU, and of
that the time it waited for the store's write lock (BEGIN IMMEDIATE, timed in this
process) and spent in COMMIT, the CPU of its process's other threads, and its reads.
Off-CPU time that is neither is time waiting for a core: on a shared machine, other
work the busy half pushed onto the pipeline's core. Usage:

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


def thread_reads() -> tuple[int, int]:
    """(read calls, bytes read) of the calling thread so far: the store's pages it reads
    again after another connection's commit made SQLite drop its page cache."""
    import threading

    try:
        text = Path(f"/proc/self/task/{threading.get_native_id()}/io").read_text()
    except OSError:
        return 0, 0
    fields = dict(line.split(": ") for line in text.splitlines() if ": " in line)
    return int(fields.get("syscr", 0)), int(fields.get("rchar", 0))


class LockWaits:
    """Time the pipeline's transactions wait for the store's write lock (BEGIN IMMEDIATE)
    and spend committing: the store module's transaction helper, timed, in this process
    only (the deliver process has its own)."""

    seconds = 0.0
    commit_seconds = 0.0

    @classmethod
    def install(cls) -> None:
        import contextlib

        from auditd.store import sqlite as store_sqlite

        @contextlib.contextmanager
        def timed(conn):  # store.sqlite.immediate, with two clocks
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            cls.seconds += time.perf_counter() - t0
            try:
                yield
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            t1 = time.perf_counter()
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            cls.commit_seconds += time.perf_counter() - t1

        store_sqlite.immediate = timed


class Measured:
    """A replay's events/s, the pipeline thread's CPU per event, how long it waited for the
    store's write lock, and how busy the machine was."""

    def __init__(self, run):
        busy0, total0 = machine_busy()
        cpu0, process0, read0 = time.thread_time(), time.process_time(), thread_reads()
        lock0, commit0 = LockWaits.seconds, LockWaits.commit_seconds
        self.totals = run()
        self.cpu_s = time.thread_time() - cpu0
        self.others_cpu_s = time.process_time() - process0 - self.cpu_s  # the WAL checkpointer, mostly
        reads = [b - a for a, b in zip(read0, thread_reads())]
        self.read_calls_per_1000, self.read_kb_per_1000 = (1000 * reads[0] / max(1, self.totals.events),
                                                           reads[1] / max(1, self.totals.events))
        self.lock_s = LockWaits.seconds - lock0
        self.commit_s = LockWaits.commit_seconds - commit0
        busy1, total1 = machine_busy()
        self.cores_busy = (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)
        self.eps = self.totals.events / self.totals.seconds
        self.us_per_event = 1e6 * self.cpu_s / max(1, self.totals.events)
        self.off_cpu_s = max(0.0, self.totals.seconds - self.cpu_s)


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


def render_notices(conn, folder: Path, n: int, start: int = 0) -> str:
    """One incident (through the correlator's seam) and n rendered customer notices, as respond
    writes them (customers numbered from `start`)."""
    from auditd.correlate import CorrelateSettings, Correlator
    from auditd.detect.alert import Alert
    from auditd.store.sqlite import immediate
    from auditd.store.times import to_db

    at = dt.datetime(2026, 11, 2, 2, 0, tzinfo=dt.timezone.utc)
    alert = Alert(alert_id=f"bench-{start}", rule_id="bulk-export", rule_kind="match", severity="critical",
                  title="bulk export", timestamp=at, event_ids=("e1",), actor="E10055", subject_ids=(),
                  categories=("contact",), sensitive=False, record_count=n)
    with immediate(conn):
        Correlator(CorrelateSettings(), lambda: at).apply(conn, [alert])
    incident = conn.execute("SELECT incident_id FROM incidents").fetchone()[0]
    text = ("Dear customer,\n\nWe have found a security incident that concerns your personal information: "
            "your name and phone number. ...\n") * 4
    step = folder / "notices" / incident / "notify-customers"
    step.mkdir(parents=True, mode=0o700, exist_ok=True)
    rows = []
    for i in range(start, start + n):
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
        self.seconds = 0.0  # from each start to its stop or its last delivery
        self.sending_seconds = 0.0  # the same, from each start's first message on
        self.cpu_seconds = 0.0  # the deliver processes' own CPU time (and their SMTP children's)
        self._started = 0.0
        self._first = None
        self._stop = threading.Event()
        self._pinner: threading.Thread | None = None

    def start(self) -> None:
        """Start it and return once it sends (its start-up, imports and settings, is not the pipeline's)."""
        before = received(self.smtp)
        self._started, self._first = time.time(), None
        self._stop.clear()
        self.process.apply(self.settings, fleet=False)
        self._pinner = threading.Thread(target=self._keep_pinned, daemon=True)
        self._pinner.start()
        deadline = time.monotonic() + 60
        while received(self.smtp) == before and self.backlog() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._first = time.time()

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
        end = min(time.time(), self.last_delivery())  # the outbox may have run dry before the stop
        self.seconds += max(0.0, end - self._started)
        self.sending_seconds += max(0.0, end - (self._first or end))
        self.cpu_seconds += cpu

    def last_delivery(self) -> float:
        from auditd.jobs.respond_due import connect
        from auditd.store.times import from_db

        conn = connect(self.db)
        try:
            at = conn.execute("SELECT MAX(delivered_at) FROM outbox").fetchone()[0]
        finally:
            conn.close()
        return from_db(at).timestamp() if at else 0.0

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
    from auditd.opening import open_store
    from auditd.replay import replay

    LockWaits.install()

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
        rendered = args.notices
        for i in range(args.rounds):
            if drain.backlog() < args.notices // 2:  # every busy half drains from its start to its end
                render_notices(store.conn, workdir / "state" / "respond", args.notices, start=rendered)
                rendered += args.notices
                print(f"         (fewer than half of --notices waiting: {args.notices:,} more rendered)")
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
                  f"cores busy (whole machine) {idle.cores_busy:.2f} vs {busy.cores_busy:.2f} of {os.cpu_count()}"
                  f"\n         pipeline thread off the CPU {idle.off_cpu_s:.2f} vs {busy.off_cpu_s:.2f} s, of which waiting "
                  f"for the write lock {idle.lock_s * 1000:.0f} vs {busy.lock_s * 1000:.0f} ms, in COMMIT "
                  f"{idle.commit_s * 1000:.0f} vs {busy.commit_s * 1000:.0f} ms; the process's other threads' CPU "
                  f"{idle.others_cpu_s:.2f} vs {busy.others_cpu_s:.2f} s"
                  f"\n         pipeline thread reads per 1,000 events {idle.read_calls_per_1000:.0f} vs "
                  f"{busy.read_calls_per_1000:.0f} calls, {idle.read_kb_per_1000:.0f} vs {busy.read_kb_per_1000:.0f} KB")
        drain.start()
        while drain.backlog():
            time.sleep(0.05)
        drain.pause()
        total = received(smtp)
        conn = connect(store.path)
        states = dict(conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        conn.close()
        print(f"\ndrain: {total:,} messages ({rendered:,} rendered) to the loopback SMTP server (STARTTLS, AUTH) in {drain.seconds:.1f} s of "
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
