"""Hostile values on the deliver path, against real receivers on loopback: what a
customer typed into their own name or address, and receivers that misbehave."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from auditd.config.typed import Duration
from auditd.deliver.channels.files import _file_name
from auditd.deliver.settings import (ChannelSettings, DeliverSettings, EmailSettings, GatewaySettings, LetterSettings,
                                     RetrySettings)
from deliver_helpers import (HttpReceiver, SmtpServer, add_customers, add_incident, add_notice, deliverer, open_store,
                             outbox_states)
from test_deliver_email import email_settings, password_file  # noqa: F401 - a fixture

SLOW_RETRY = RetrySettings(attempts=5, initial=Duration(3600.0), max=Duration(3600.0), jitter=Duration(0.0))
FAST_RETRY = RetrySettings(attempts=5, initial=Duration(0.0), max=Duration(0.0), jitter=Duration(0.0))

HOSTILE = {
    "p:000001": ("Eve\r\nReply-To: phish@evil.example", "eve@mail.example"),  # ASCII: the fast path
    "p:000002": ("张三", "张三@mail.example\r\nBcc: x@evil.example"),  # non-ASCII: the library's path
    "p:000003": ("Mallory", "mallory@mail.example\r\nRCPT TO:<x@evil.example>"),
}


def _mail(conn, tmp_path, password_file, *, process: bool):
    """One deliver run over a real SMTP server on loopback: its report and what arrived."""
    with SmtpServer(tmp_path) as server:
        settings = email_settings(server, password_file)
        settings = dataclasses.replace(settings, channels=ChannelSettings(
            email=dataclasses.replace(settings.channels.email, process=process)))
        report = deliverer(settings, tmp_path).run(conn)
        return report, list(server.received)


@pytest.mark.parametrize("process", [True, False], ids=["child-process", "in-thread"])
def test_a_name_or_address_with_line_breaks_fails_alone_and_injects_no_header(tmp_path, password_file, process):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    for recipient, (name, address) in HOSTILE.items():
        add_notice(conn, tmp_path, incident_id=incident, step_id="notify-customers", recipient=recipient,
                   name=name, address=address)
    add_notice(conn, tmp_path, incident_id=incident, step_id="notify-customers", recipient="p:000004",
               name="Bob", address="bob@mail.example")
    report, received = _mail(conn, tmp_path, password_file, process=process)
    # the good customer's notice is not held hostage by the others in its batch
    assert [r.recipients for r in received] == [["bob@mail.example"]]
    assert report.delivered == 1 and report.failed == 3
    assert outbox_states(conn) == {"delivered": 1, "failed": 3}
    for (error,) in conn.execute("SELECT last_error FROM outbox WHERE state = 'failed'"):
        assert "control characters" in error and "@" not in error and "Eve" not in error
    assert all("evil" not in r.data.decode("utf-8", "replace") for r in received)


@pytest.mark.parametrize("process", [True, False], ids=["child-process", "in-thread"])
def test_a_chinese_name_with_an_ideographic_space_is_sent_a_unicode_line_separator_is_not(
        tmp_path, password_file, process):
    """Printable text of any script is a name; what would end a line (U+2028, NEL) is not."""
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    people = {"p:000001": ("张\u3000三", "zhang@mail.example"),
              "p:000002": ("Trudy\u2028Bcc: x@evil.example", "trudy@mail.example"),
              "p:000003": ("Nel\x85Bcc: x@evil.example", "nel@mail.example")}
    for recipient, (name, address) in people.items():
        add_notice(conn, tmp_path, incident_id=incident, step_id="notify-customers", recipient=recipient,
                   name=name, address=address)
    report, received = _mail(conn, tmp_path, password_file, process=process)
    assert [r.recipients for r in received] == [["zhang@mail.example"]]
    assert report.delivered == 1 and report.failed == 2
    assert all("evil" not in r.data.decode("utf-8", "replace") for r in received)


class Trickler:
    """A raw HTTP receiver on loopback that reads the request, then answers one byte at a
    time, slower than any timeout would notice per read (a slowloris in reverse)."""

    def __init__(self, every_s: float = 0.2):
        self.every_s = every_s
        self.requests = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/send"
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(client,), daemon=True).start()

    def _answer(self, client: socket.socket) -> None:
        with client:
            try:
                client.recv(1 << 16)
                self.requests += 1
                for byte in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 60_000:
                    if self.stopped.is_set():
                        return
                    client.sendall(bytes([byte]))
                    time.sleep(self.every_s)
            except OSError:
                pass

    def close(self) -> None:
        self.stopped.set()
        self.server.close()


def test_a_gateway_that_trickles_its_answer_times_out_and_holds_up_nothing(tmp_path):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 2, incident_id=incident, channel="sms")
    gateway = Trickler()
    try:
        channels = ChannelSettings(sms=GatewaySettings(url=gateway.url, timeout_s=1.0))
        d = deliverer(DeliverSettings(channels=channels, retry=SLOW_RETRY), tmp_path)
        reports: list = []
        started = time.monotonic()
        runner = threading.Thread(target=lambda: reports.append(d.run(open_store(tmp_path / "neo.db"))), daemon=True)
        runner.start()
        runner.join(20)
        took = time.monotonic() - started
    finally:
        gateway.close()
    assert reports, "the deliver run was still waiting for the gateway's answer after 20 s"
    assert took < 8  # two messages, each given up after its 1 s timeout
    assert reports[0].retried == 2 and outbox_states(conn) == {"pending": 2}
    errors = [e for (e,) in conn.execute("SELECT last_error FROM outbox")]
    assert all("Timeout" in e for e in errors), errors


def test_a_webhook_answer_that_comes_too_late_makes_the_resend_a_possible_repeat(tmp_path):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 2, incident_id=incident, channel="sms")
    slow = iter([True])

    def answer(request):  # takes the first message, but answers after the sender gave up
        if next(slow, False):
            time.sleep(2.0)
        return 200

    with HttpReceiver(status=answer) as gateway:
        channels = ChannelSettings(sms=GatewaySettings(url=gateway.url + "/send", timeout_s=1.0))
        d = deliverer(DeliverSettings(channels=channels, retry=FAST_RETRY), tmp_path)
        for _ in range(3):
            d.run(conn)
        time.sleep(1.5)  # the slow handler records its request
        keys = [r.headers["X-Neo-Idempotency-Key"] for r in gateway.requests]
    assert outbox_states(conn) == {"delivered": 2}
    assert len(keys) == 3 and len(set(keys)) == 2
    repeated = next(k for k in keys if keys.count(k) == 2)
    flagged = [k for (k,) in conn.execute("SELECT wire_key FROM outbox WHERE possible_repeat = 1")]
    assert flagged == [repeated]  # sent twice, and on record as a possible repeat


def _letters(tmp_path, n=1):
    conn = open_store(tmp_path / "neo.db")
    incident, fleet_key = add_incident(conn)
    for i in range(n):
        add_notice(conn, tmp_path, incident_id=incident, step_id="notify-customers", recipient=f"p:{i}",
                   channel="letter", address=f"云南省昆明市示例路 {i} 号", name="郭军敏")
    settings = DeliverSettings(retry=SLOW_RETRY, channels=ChannelSettings(
        letter=LetterSettings(spool=tmp_path / "spool", format="html")))
    return conn, deliverer(settings, tmp_path), [f"{fleet_key}/notify-customers/p:{i}/r1" for i in range(n)]


def test_a_letter_folder_that_is_a_link_gets_no_letter(tmp_path):
    conn, d, _ = _letters(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / dt.date.today().isoformat()).symlink_to(elsewhere)
    report = d.run(conn)
    assert list(elsewhere.iterdir()) == []  # the customer's name and address did not go where the link points
    assert report.delivered == 0 and outbox_states(conn) == {"pending": 1}
    (error,) = conn.execute("SELECT last_error FROM outbox").fetchone()
    assert "link" in error and "示例路" not in error


def test_a_fifo_where_a_letter_is_written_blocks_nothing(tmp_path):
    conn, d, [key] = _letters(tmp_path)
    folder = tmp_path / "spool" / dt.date.today().isoformat()
    folder.mkdir(parents=True)
    os.mkfifo(folder / f".{_file_name(key)}.html.{os.getpid()}.tmp")  # the temporary name this run takes
    os.symlink(tmp_path / "neo.db", folder / f"{_file_name(key)}.html")  # the letter's own name: replaced
    reports: list = []
    runner = threading.Thread(target=lambda: reports.append(d.run(open_store(tmp_path / "neo.db"))), daemon=True)
    runner.start()
    runner.join(20)
    assert reports, "the deliver run was still blocked on the FIFO after 20 s"
    assert reports[0].delivered == 1
    letter = folder / f"{_file_name(key)}.html"
    assert not letter.is_symlink() and "示例路" in letter.read_text(encoding="utf-8")
    assert stat.S_ISREG(os.lstat(letter).st_mode) and oct(os.lstat(letter).st_mode)[-3:] == "600"


def _deliver_through(gateway: type[BaseHTTPRequestHandler], conn, tmp_path, *, timeout_s: float):
    """One deliver run whose SMS channel is `gateway`, served on loopback for the run."""
    gateway.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), gateway)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/send"
        channels = ChannelSettings(sms=GatewaySettings(url=url, timeout_s=timeout_s))
        return deliverer(DeliverSettings(channels=channels, retry=SLOW_RETRY), tmp_path).run(conn)
    finally:
        server.shutdown()


class _ClosingGateway(BaseHTTPRequestHandler):
    """An HTTP/1.0 gateway: no Content-Length, the answer ends when it closes the connection."""

    received: list[bytes] = []

    def do_POST(self):  # noqa: N802
        self.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"message_id": f"M{len(self.received)}"}).encode())

    def log_message(self, *args):
        pass


def test_a_gateway_that_closes_after_each_answer_delivers_each_message_once(tmp_path):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 3, incident_id=incident, channel="sms")
    report = _deliver_through(_ClosingGateway, conn, tmp_path, timeout_s=2.0)
    assert report.delivered == 3 and len(_ClosingGateway.received) == 3
    receipts = sorted(json.loads(r)["response_id"] for (r,) in conn.execute("SELECT receipt FROM outbox"))
    assert receipts == ["M1", "M2", "M3"]


@pytest.mark.parametrize("process", [True, False], ids=["child-process", "in-thread"])
def test_an_smtp_server_that_trickles_its_replies_times_out_and_holds_up_nothing(tmp_path, process):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 2, incident_id=incident)
    server = socket.create_server(("127.0.0.1", 0))
    stopped = threading.Event()

    def greet(client: socket.socket) -> None:  # "220 " and then a byte every 0.2 s: never a whole line
        with client:
            try:
                for byte in b"220 " + b"x" * 60_000:
                    if stopped.is_set():
                        return
                    client.sendall(bytes([byte]))
                    time.sleep(0.2)
            except OSError:
                pass

    def accept() -> None:
        while not stopped.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=greet, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    email = EmailSettings(host="127.0.0.1", port=server.getsockname()[1], security="none", timeout_s=1.0,
                          sender="security@neo-retail.example", process=process)
    d = deliverer(DeliverSettings(channels=ChannelSettings(email=email), retry=SLOW_RETRY), tmp_path)
    reports: list = []
    try:
        runner = threading.Thread(target=lambda: reports.append(d.run(open_store(tmp_path / "neo.db"))), daemon=True)
        runner.start()
        runner.join(20)
    finally:
        stopped.set()
        server.close()
    assert reports, "the deliver run was still waiting for the SMTP server's greeting after 20 s"
    assert reports[0].retried == 2 and outbox_states(conn) == {"pending": 2}


class _Verbose(BaseHTTPRequestHandler):
    """A kept-alive gateway whose every answer is 100 KB (more than a sender reads of it)."""

    protocol_version = "HTTP/1.1"
    received: list[bytes] = []

    def do_POST(self):  # noqa: N802
        self.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        answer = json.dumps({"id": f"R{len(self.received)}", "log": "x" * 100_000}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        try:
            self.wfile.write(answer)
        except OSError:  # the sender read what it needed and hung up
            pass

    def log_message(self, *args):
        pass


def test_a_gateway_with_long_answers_gets_each_message_once_and_each_is_delivered(tmp_path):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 4, incident_id=incident, channel="sms")
    report = _deliver_through(_Verbose, conn, tmp_path, timeout_s=5.0)
    assert report.delivered == 4 and report.retried == 0
    assert len(_Verbose.received) == 4  # none sent, taken, and recorded as a failure to be sent again
