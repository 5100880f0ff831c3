"""Hostile input on the respond path: contact files, export manifests, contact endpoints
and contain webhooks that a careless operator or a hostile system could produce."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.enrich.pseudonym import create_key_file
from auditd.respond.contacts import ContactError, load_contacts, read_manifests
from auditd.respond.contain import run_command
from auditd.respond.settings import ContactSettings, ContainAction, HttpContacts, ManifestSettings, Webhook

from respond_helpers import UTC, Clock, World, alert

REPO = Path(__file__).resolve().parents[1]
HEADER = "customer_id,name,language,channel,address\n"


def test_a_contact_field_over_the_csv_limit_is_a_located_bad_row_and_the_rest_loads(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text(HEADER + "C00000001," + "A" * 200_000 + ",en,email,a@example.com\n"
                    "C00000002,Bob,en,email,bob@example.com\n", encoding="utf-8")
    problems = Problems()
    book = load_contacts(ContactSettings(csv=path), lambda raw: "p:" + raw, problems)
    assert [str(p) for p in problems.items] == [
        f"{path}:2:1: not a CSV row: field larger than field limit (131072)"]
    assert book.lookup("p:C00000002").address == "bob@example.com" and len(book) == 1


def test_check_says_where_the_oversized_contact_field_is_and_exits_78(tmp_path):
    from test_cli_check import check, write_config

    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "contacts.csv").write_text(HEADER + "C00000001," + "A" * 200_000 + ",en,email,a@example.com\n")
    write_config(tmp_path, extra="respond:\n  contacts: {csv: contacts.csv}\n")
    done = check(tmp_path)
    assert done.returncode == 78, done.stderr
    assert "Traceback" not in done.stderr
    assert "contacts.csv:2:1: not a CSV row" in done.stderr


def test_an_oversized_field_in_a_csv_manifest_is_a_bad_line_not_a_crash(tmp_path):
    manifest = tmp_path / "exports-1.csv"
    manifest.write_text("req,customer_id\nr-9," + "9" * 200_000 + "\nr-9,C2\n", encoding="utf-8")
    read = read_manifests([ManifestSettings(name="crm", paths=[tmp_path / "exports-*.csv"], format="csv")],
                          {"r-9"}, lambda raw: "p:" + raw)
    assert read.customers == {"r-9": {"p:C2"}} and read.bad_lines == 1


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Trickling(BaseHTTPRequestHandler):
    """An endpoint that sends its answer one byte every 0.2 s: each read succeeds, the
    answer never completes."""

    def do_GET(self):  # noqa: N802
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(200):
                self.wfile.write(b"X")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


def test_a_contact_endpoint_that_redirects_elsewhere_is_not_followed(tmp_path):
    asked: list[str] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - would name the addressee of the customer's notice
            asked.append(self.path)
            body = json.dumps({"name": "Mallory", "language": "en", "channel": "email",
                               "address": "mallory@evil.example"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    elsewhere = _serve(Elsewhere)

    class Redirecting(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{elsewhere.server_port}/steal{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    crm = _serve(Redirecting)
    try:
        url = f"http://127.0.0.1:{crm.server_port}/contact/{{pseudonym}}"
        book = load_contacts(ContactSettings(http=HttpContacts(url=url, timeout_s=2)), lambda raw: raw, Problems())
        with pytest.raises(ContactError, match="HTTP 302"):
            book.lookup("p:1")
    finally:
        crm.shutdown()
        elsewhere.shutdown()
    assert asked == []  # the pseudonym went to no other host, and no other host chose the address


def test_a_contact_endpoint_that_trickles_its_answer_fails_within_its_timeout(tmp_path):
    crm = _serve(_Trickling)
    outcome: list[object] = []

    def ask() -> None:
        url = f"http://127.0.0.1:{crm.server_port}/contact/{{pseudonym}}"
        book = load_contacts(ContactSettings(http=HttpContacts(url=url, timeout_s=1)), lambda raw: raw, Problems())
        try:
            outcome.append(book.lookup("p:1"))
        except ContactError as exc:
            outcome.append(exc)

    try:
        started = time.monotonic()
        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        asker.join(15)
        took = time.monotonic() - started
    finally:
        crm.shutdown()
    assert outcome, "the look-up was still waiting for the contact endpoint after 15 s"
    assert isinstance(outcome[0], ContactError) and took < 5


def test_a_contain_webhook_redirected_to_a_login_page_fails_and_escalates(tmp_path):
    """An IAM endpoint behind single sign-on answers the POST with 302 to its login page;
    followed with a GET, that page's 200 counted as the account disabled."""
    asked: list[str] = []

    class SingleSignOn(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            asked.append(f"POST {self.path}")
            self.send_response(302)
            self.send_header("Location", "/login")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):  # noqa: N802
            asked.append(f"GET {self.path}")
            page = b"<html>please sign in</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    iam = _serve(SingleSignOn)
    t0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
    try:
        world = World(tmp_path, Clock(t0))
        url = f"http://127.0.0.1:{iam.server_port}/revoke"
        world.rebuild(contain={"disable-account": ContainAction(webhook=Webhook(url), timeout_s=5)})
        (change,) = world.apply([alert(1, t0)])
        result = world.run()
    finally:
        iam.shutdown()
    assert asked == ["POST /revoke"]
    step = world.step(change.incident_id, "contain-account")
    assert step.state == "failed" and step.open and step.result == {"http_status": 302}
    assert f"{change.incident_id}/contain-account" in result.failed and step.escalations == 1


def test_a_contain_webhook_that_trickles_its_answer_fails_at_its_timeout(tmp_path):
    iam = _serve(_Trickling)
    t0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
    done: list[object] = []
    try:
        world = World(tmp_path, Clock(t0))
        url = f"http://127.0.0.1:{iam.server_port}/revoke"
        world.rebuild(contain={"disable-account": ContainAction(webhook=Webhook(url), timeout_s=1)})
        (change,) = world.apply([alert(1, t0)])
        world.conn.close()  # the runner's thread opens its own

        def run() -> None:
            runner = World(tmp_path, Clock(t0))
            runner.rebuild(contain={"disable-account": ContainAction(webhook=Webhook(url), timeout_s=1)})
            done.append(runner.run())
            done.append(runner.step(change.incident_id, "contain-account"))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(20)
    finally:
        iam.shutdown()
    assert done, "the respond job was still waiting for the contain webhook after 20 s"
    step = done[1]
    assert step.state == "failed" and step.open and "Timeout" in step.result["error"]


def test_a_customer_listed_twice_in_the_contacts_is_a_located_problem_not_a_silent_choice(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text(HEADER + "C00000001,Alice,en,email,alice@example.com\n"
                    "C00000002,Bob,en,email,bob@example.com\n"
                    " C00000001 ,Alice,en,email,alice.old@example.com\n", encoding="utf-8")
    problems = Problems()
    load_contacts(ContactSettings(csv=path), lambda raw: "p:" + raw, problems)
    assert [str(p) for p in problems.items] == [
        f"{path}:4:1: customer_id: the same customer as line 2: one row per customer"]
    assert "alice" not in str(problems.items[0]).lower()


def test_a_contact_with_a_control_character_is_a_located_bad_row_an_address_may_run_over_lines(tmp_path):
    """A NUL or an escape in a customer's name reached gateways, terminals and letters as
    it was; only the e-mail channel refused it, at sending time."""
    path = tmp_path / "contacts.csv"
    path.write_text(HEADER + "C00000001,Eve\x1b[2J,en,sms,+8613800000000\n"
                    "C00000002,Bob\x00,en,email,bob@example.com\n"
                    'C00000003,Carol,en,letter,"1 Road\nKunming"\n', encoding="utf-8")
    problems = Problems()
    book = load_contacts(ContactSettings(csv=path), lambda raw: "p:" + raw, problems)
    assert [str(p) for p in problems.items] == [
        f"{path}:2:1: name: holds a control character (a line break only in an address)",
        f"{path}:3:1: name: holds a control character (a line break only in an address)"]
    assert len(book) == 1 and book.lookup("p:C00000003").address == "1 Road\nKunming"


CHATTY = """
import sys
chunk = b"x" * (1 << 20)
for _ in range(400):  # 400 MB on stdout, then a clean exit
    sys.stdout.buffer.write(chunk)
"""

MEASURE = """
import json, resource, sys
from auditd.respond.contain import run_command
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome = run_command([sys.executable, sys.argv[1]], {"actor": "E1"}, 60.0)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"ok": outcome.ok, "stdout": len(outcome.detail["stdout"]), "grown_mb": grown / 1024}))
"""


def test_a_contain_command_that_prints_400_mb_keeps_only_its_head_in_memory(tmp_path):
    (tmp_path / "chatty.py").write_text(CHATTY)
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "chatty.py")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    result = json.loads(done.stdout)
    assert result["ok"] and result["stdout"] == 2000
    assert result["grown_mb"] < 100, result  # the daemon's peak memory, not the command's output


def test_a_contain_command_whose_escaped_child_holds_its_output_ends_at_its_timeout(tmp_path):
    pid_file = tmp_path / "escaped.pid"
    script = tmp_path / "escape.py"
    script.write_text(  # a child in a session of its own (out of reach of the group kill) keeps stdout open
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n")
    started = time.monotonic()
    try:
        outcome = run_command([sys.executable, str(script)], {"actor": "E1"}, 1.0)
        took = time.monotonic() - started
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert outcome.detail.get("timed_out") is True and not outcome.ok
    assert took < 10, took  # not the escaped child's 30 s


def test_a_contact_endpoint_that_fails_once_delays_the_customer_notices_and_loses_none(tmp_path):
    from types import SimpleNamespace

    from auditd.respond import people

    asked: list[str] = []

    class Flaky(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the second look-up meets a restart of the customer system
            asked.append(self.path)
            if len(asked) == 2:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps({"name": "Carol", "language": "en", "channel": "email",
                               "address": f"c{len(asked)}@example.com"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    crm = _serve(Flaky)
    t0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
    try:
        world = World(tmp_path, Clock(t0), directory=SimpleNamespace(employees={}))
        url = f"http://127.0.0.1:{crm.server_port}/contact/{{pseudonym}}"
        world.rebuild(contacts=ContactSettings(http=HttpContacts(url=url, timeout_s=2)))
        subjects = tuple(world.pseudonymiser(f"C{i:08d}") for i in range(5))
        (change,) = world.apply([alert(1, t0, actor="E10055", kind="match", severity="critical", subjects=subjects,
                                       categories=("identity",), sensitive=True, record_count=5)])
        world.run()
        incident = change.incident_id
        people.done(world.conn, world.correlator, incident, "draft-customer-notice", "alice", world.clock())
        people.approve(world.conn, world.correlator, incident, "approve-customer-notice", "bob", world.clock())
        world.clock.advance(minutes=5)
        first = world.run()
        step = world.step(incident, "notify-customers")
        assert step.state == "pending" and f"{incident}/notify-customers" in first.waiting
        assert world.conn.execute("SELECT COUNT(*) FROM notices WHERE audience = 'customers'").fetchone() == (0,)
        world.clock.advance(minutes=5)
        world.run()
    finally:
        crm.shutdown()
    step = world.step(incident, "notify-customers")
    assert step.state == "done" and step.result["recipients"] == 5
    assert world.conn.execute("SELECT COUNT(*) FROM notices WHERE audience = 'customers'").fetchone() == (5,)


def test_a_contact_endpoint_answer_with_a_control_character_is_no_contact():
    from auditd.respond.contacts import _contact_from

    answer = {"name": "Eve", "language": "en", "channel": "letter", "address": "1 Road\nKunming"}
    assert _contact_from(answer).address == "1 Road\nKunming"
    assert _contact_from(answer | {"name": "Eve\x1b]0;pwned\x07"}) is None
    assert _contact_from(answer | {"address": "1 Road\x00"}) is None
