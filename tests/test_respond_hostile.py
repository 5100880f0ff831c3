"""Hostile input on the respond path: contact files, export manifests and contact
endpoints that a careless operator or a hostile system could produce."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from auditd.config.located import Problems
from auditd.enrich.pseudonym import create_key_file
from auditd.respond.contacts import ContactError, load_contacts, read_manifests
from auditd.respond.settings import ContactSettings, HttpContacts, ManifestSettings

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
    class Trickling(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(200):
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    crm = _serve(Trickling)
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

