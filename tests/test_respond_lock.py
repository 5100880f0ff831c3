"""A playbook step renders without the store's write lock: the pipeline's batches go on
while thousands of customer notices render or a slow contact service answers for each,
and what the step rendered is put in place with its rows in one short transaction,
or not at all (another runner, a person's skip, a kill -9 in the middle)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from auditd.respond import people
from auditd.respond.render import STAGING, Staged, Templates
from auditd.respond.settings import ContactSettings, HttpContacts, Organisation
from auditd.store.pressure import hold_reason

from respond_helpers import UTC, Clock, World, alert

T0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
TESTS = Path(__file__).resolve().parent
ORG = Organisation(name="云岭零售有限公司", system="neo-crm", location="昆明市",
                   contact={"zh-CN": "客服热线 400-800-1234", "en": "hotline +86 400-800-1234"},
                   security_contact="security@yunling.example")
CUSTOMERS = 40


class ContactService:
    """A contact source on loopback that, before it answers each look-up, calls `probe`
    (what the test wants to happen while the step renders)."""

    def __init__(self, probe=lambda n: None, delay_s: float = 0.0):
        self.asked = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                service.asked += 1
                probe(service.asked)
                time.sleep(delay_s)
                body = json.dumps({"name": "Customer", "language": "zh-CN", "channel": "email",
                                   "address": f"c{service.asked}@example.com"}).encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/contact/{{pseudonym}}"

    def close(self):
        self.server.shutdown()


def _leak(tmp_path: Path, url: str) -> tuple[World, str]:
    """A T4 leak of CUSTOMERS customers, the notice drafted and approved: the next run
    fires notify-customers."""
    world = World(tmp_path, Clock(T0), directory=SimpleNamespace(employees={}))
    world.rebuild(organisation=ORG, contacts=ContactSettings(http=HttpContacts(url=url)))
    subjects = tuple(world.pseudonymiser(f"C{i:08d}") for i in range(CUSTOMERS))
    (change,) = world.apply([alert(1, T0, kind="match", severity="critical", subjects=subjects,
                                   categories=("identity",), sensitive=True, record_count=CUSTOMERS)])
    world.run()
    incident = change.incident_id
    people.done(world.conn, world.correlator, incident, "draft-customer-notice", "alice", world.clock())
    people.approve(world.conn, world.correlator, incident, "approve-customer-notice", "bob", world.clock())
    world.clock.advance(minutes=5)
    return world, incident


def _customer_rows(world: World, incident: str) -> list[tuple[str, str]]:
    return world.conn.execute("SELECT recipient, body_path FROM notices WHERE incident_id = ? AND audience = 'customers'",
                              (incident,)).fetchall()


def test_the_pipeline_writes_while_a_step_renders_its_notices(tmp_path):
    """Every look-up of the contact service is answered while another connection (the
    pipeline's, as it were) commits a write with a short busy timeout and checkpoints the
    WAL to its end: before the step's rendering left the write lock alone, each of these
    timed out ("database is locked"), and a read snapshot held through the rendering
    would keep the WAL from being checkpointed."""
    outcomes: list[str] = []

    def pipeline_writes(n: int) -> None:
        conn = sqlite3.connect(tmp_path / "neo.db", isolation_level=None, timeout=0.5)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?)", (str(n),))
            conn.execute("COMMIT")
            _, log_frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            # a reader's open snapshot would keep the checkpoint short of the WAL's end
            outcomes.append("committed" if copied == log_frames else f"checkpointed {copied} of {log_frames}")
        except sqlite3.OperationalError as exc:
            outcomes.append(str(exc))
        finally:
            conn.close()

    service = ContactService(pipeline_writes)
    try:
        world, incident = _leak(tmp_path, service.url)
        world.run()
    finally:
        service.close()
    step = world.step(incident, "notify-customers")
    assert step.state == "done" and step.result["recipients"] == CUSTOMERS  # each one asked of the service
    assert service.asked == CUSTOMERS and outcomes == ["committed"] * CUSTOMERS
    rows = _customer_rows(world, incident)
    assert len(rows) == CUSTOMERS and all(Path(path).is_file() for _, path in rows)
    assert not any((tmp_path / "respond" / STAGING).iterdir())  # nothing left staged


def test_a_person_who_skips_the_step_while_it_renders_wins(tmp_path):
    """An art. 57(2) exemption recorded while the notices render: none of them is put in
    place or recorded, and the step stays skipped."""
    state: dict = {}

    def skip_once(n: int) -> None:
        if n == 10:
            conn = sqlite3.connect(tmp_path / "neo.db", isolation_level=None, timeout=5)
            try:
                people.skip(conn, state["world"].correlator, state["incident"], "notify-customers", "dpo-li",
                            state["world"].clock(), "PIPL art. 57(2): the measures taken avoid the harm")
            finally:
                conn.close()

    service = ContactService(skip_once)
    try:
        world, incident = _leak(tmp_path, service.url)
        state.update(world=world, incident=incident)
        report = world.run()
    finally:
        service.close()
    step = world.step(incident, "notify-customers")
    assert step.state == "skipped" and step.closed_by == "dpo-li"
    assert f"{incident}/notify-customers" not in report.fired
    assert _customer_rows(world, incident) == []
    folder = tmp_path / "respond" / "notices" / incident / "notify-customers"
    assert not folder.exists() or not any(folder.iterdir())
    assert not any((tmp_path / "respond" / STAGING).iterdir())


def test_a_stop_while_notices_render_keeps_nothing_and_the_next_run_renders_them_all(tmp_path):
    stopping = threading.Event()
    service = ContactService(lambda n: stopping.set() if n == 10 else None)
    try:
        world, incident = _leak(tmp_path, service.url)
        report = world.responder.run(world.conn, world.clock(), should_stop=stopping.is_set)
        assert f"{incident}/notify-customers" not in report.fired and report.failed == []
        assert world.step(incident, "notify-customers").state == "pending" and _customer_rows(world, incident) == []
        assert service.asked == 10 and not any((tmp_path / "respond" / STAGING).iterdir())
        report = world.run()
    finally:
        service.close()
    assert f"{incident}/notify-customers" in report.fired
    assert len(_customer_rows(world, incident)) == CUSTOMERS


RUN_DUE = textwrap.dedent("""
    import datetime as dt, sys
    from pathlib import Path
    from types import SimpleNamespace
    sys.path.insert(0, {tests!r})
    from respond_helpers import Clock, World
    from auditd.respond.settings import ContactSettings, HttpContacts
    from test_respond_lock import ORG
    world = World(Path({tmp!r}), Clock(dt.datetime.fromisoformat({now!r})), directory=SimpleNamespace(employees={{}}))
    world.rebuild(organisation=ORG, contacts=ContactSettings(http=HttpContacts(url={url!r})))
    world.run()
""")


def test_kill_9_while_a_step_renders_leaves_nothing_and_the_next_run_sends_each_notice_once(tmp_path):
    service = ContactService(delay_s=0.05)
    try:
        world, incident = _leak(tmp_path, service.url)
        code = RUN_DUE.format(tests=str(TESTS), tmp=str(tmp_path), now=world.clock().isoformat(), url=service.url)
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        deadline = time.monotonic() + 60
        while service.asked < CUSTOMERS // 2:  # half of the notices rendered
            assert proc.poll() is None and time.monotonic() < deadline, "the runner never got half-way"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        staged = tmp_path / "respond" / STAGING
        assert [p.name.split("-")[0] for p in staged.iterdir()] == [str(proc.pid)]  # what it had rendered
        assert world.step(incident, "notify-customers").state == "pending" and _customer_rows(world, incident) == []

        report = world.run()  # the next run: the dead runner's files go, the step fires once
    finally:
        service.close()
    assert f"{incident}/notify-customers" in report.fired
    rows = _customer_rows(world, incident)
    assert len(rows) == len({r for r, _ in rows}) == CUSTOMERS
    assert not any(staged.iterdir())


def test_a_staged_rendering_puts_nothing_in_place_until_it_commits(tmp_path):
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    out = Staged(tmp_path / "out")
    target = tmp_path / "out" / "notices" / "a.json"
    digest = out.file(target, b"{}")
    out.row("INSERT INTO t (x) VALUES (?)", (1,))
    assert len(digest) == 64 and not target.exists() and conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    conn.execute("BEGIN IMMEDIATE")
    out.commit(conn)
    conn.execute("COMMIT")
    assert target.read_bytes() == b"{}" and oct(target.stat().st_mode & 0o777) == "0o600"
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1
    dropped = Staged(tmp_path / "out")
    dropped.file(tmp_path / "out" / "notices" / "b.json", b"{}")
    dropped.discard()
    assert not (tmp_path / "out" / "notices" / "b.json").exists()
    assert not any((tmp_path / "out" / STAGING).iterdir())


def test_leftovers_of_a_dead_process_are_cleared_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    root = tmp_path / STAGING
    (root / f"{pid}-3").mkdir(parents=True)
    (root / f"{pid}-3" / "0").write_text("a customer's address")
    live = Staged(tmp_path)
    live.file(tmp_path / "x.json", b"{}")
    assert Staged.clear_leftovers(tmp_path) == 1
    assert [p.name for p in root.iterdir()] == [f"{os.getpid()}-{live._made}"]
    live.discard()


def test_a_store_locked_past_the_busy_timeout_is_a_condition_to_wait_out(tmp_path):
    holder = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    writer = sqlite3.connect(tmp_path / "s.db", isolation_level=None, timeout=0.05)
    with pytest.raises(sqlite3.OperationalError) as busy:
        writer.execute("BEGIN IMMEDIATE")
    assert "SQLITE_BUSY" in hold_reason(busy.value)  # the daemon holds back and retries; it does not crash
    holder.execute("ROLLBACK")


def test_templates_are_compiled_once_at_warm_up_and_a_broken_one_is_named(tmp_path):
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "internal-alert.md.j2").write_text("{% if %}broken", encoding="utf-8")
    templates = Templates(tmp_path)
    problems = templates.warm()
    assert len(problems) == 1 and problems[0].startswith("en/internal-alert.md.j2: TemplateSyntaxError")
    markdown, html = len(templates.markdown.cache), len(templates.html.cache)
    assert markdown >= 15 and html >= 4  # every shipped template, in both languages
    template = templates.markdown.get_template("zh-CN/customer-notice.md.j2")
    assert len(templates.markdown.cache) == markdown  # found compiled, not compiled again
    assert template is templates.markdown.get_template("zh-CN/customer-notice.md.j2")


def test_the_report_command_renders_without_the_lock_and_keeps_a_finding_only_for_a_real_incident(tmp_path):
    from auditd.correlate import CorrelateSettings, Correlator
    from auditd.enrich.pseudonym import create_key_file
    from auditd.store.sqlite import Store

    create_key_file(tmp_path / "pseudonym.key")
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\nsources: []\npseudonym:\n  key_file: pseudonym.key\n")
    store = Store(tmp_path / "state" / "neo-auditd.db").open()
    with store.transaction() as conn:
        (change,) = Correlator(CorrelateSettings(), Clock(T0)).apply(conn, [alert(1, T0, severity="critical")])
    store.close()

    def report(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "auditd.cli", "report", "-c", str(config), *args],
                              capture_output=True, text=True, timeout=120)

    done = report(change.incident_id, "--kind", "initial", "--set", "cause=a role granted too widely", "--json")
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)
    assert rendered["revision"] == 1 and all(Path(p).is_file() for p in rendered["paths"].values())
    again = json.loads(report(change.incident_id, "--kind", "initial", "--json").stdout)
    assert again["revision"] == 2 and again["cause_known"] is True  # the finding was kept
    unknown = report("INC-20991231-0001", "--kind", "initial", "--set", "cause=x")
    assert unknown.returncode == 1 and "no incident 'INC-20991231-0001'" in unknown.stderr
    conn = sqlite3.connect(tmp_path / "state" / "neo-auditd.db")
    assert conn.execute("SELECT incident_id, field FROM report_findings").fetchall() == [(change.incident_id, "cause")]
    assert conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 2
    staging = tmp_path / "state" / "respond" / STAGING
    assert all(Path(p).is_relative_to(staging.parent) for p in rendered["paths"].values())
    assert not any(staging.iterdir())  # staged, then put in place
