"""Sentry reporting: the scrubber alone, then a real SDK sending to a real local server."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk

from auditd.enrich.pseudonym import create_key_file
from auditd.ops.sentry import (
    FILTERED,
    init_sentry,
    is_secret_key,
    make_scrubber,
    scrub,
    scrub_event,
    scrub_text,
)

PHONE = "13812345678"
ID_CARD = "11010519491231002X"
EMAIL = "zhang.san@example.com.cn"
CARD = "6222021234567890123"


# --- scrub_text: patterns in free text ---------------------------------------------

@pytest.mark.parametrize("text", [
    "13812345678", "138 1234 5678", "138-1234-5678", "+8613812345678", "+86 138 1234 5678",
    "+86-138-1234-5678", "8613812345678", "008613812345678", "(+86)13812345678",
    "19912345678",
])
def test_mobile_numbers_in_every_spelling(text: str) -> None:
    assert scrub_text(f"call {text} now") == "call [Filtered:phone] now"


@pytest.mark.parametrize("text, kind", [
    ("11010519491231002X", "id-card"), ("11010519491231002x", "id-card"),
    ("110105194912310021", "id-card"),
    ("zhang.san+vip@example.com.cn", "email"), ("a@b.co", "email"),
    ("6222021234567890123", "bank-card"), ("4111111111111", "bank-card"),
    ("6222 0212 3456 7890", "bank-card"), ("6222-0212-3456-7890-123", "bank-card"),
])
def test_identity_numbers_emails_and_cards(text: str, kind: str) -> None:
    assert scrub_text(f"value: {text}.") == f"value: [Filtered:{kind}]."


@pytest.mark.parametrize("text", [
    "source.ip 10.1.2.3 and 192.168.100.200",  # customers' IPv4 is not PI here
    "order 20241129 qty 12", "employee E10023", "port 9200",
    "1381234567",  # ten digits: not a mobile number
    "trace 4bf92f3577b34da6a3ce929d0e0e4736",  # digit runs inside hex ids are not cards
    "2026-11-29T10:00:00+08:00",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert scrub_text(text) == text


@pytest.mark.parametrize("text, expected", [
    ("smtp://alerts:s3cret@mail.corp.example:587 refused",
     "smtp://[Filtered]@mail.corp.example:587 refused"),
    ("http://public@127.0.0.1:9000/1", "http://[Filtered]@127.0.0.1:9000/1"),
    ("login password=hunter2&next=/", "login password=[Filtered]&next=/"),
    ("{'api_key': 'abc123', 'n': 1}", "{'api_key': '[Filtered]', 'n': 1}"),
    ('{"refresh_token": "zzz"}', '{"refresh_token": "[Filtered]"}'),
])
def test_inline_secrets(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


def test_bearer_tokens() -> None:
    cleaned = scrub_text("sent header Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")
    assert "eyJ" not in cleaned and FILTERED in cleaned


# --- scrub: keys and structure -----------------------------------------------------

def test_secret_and_customer_keys_are_filtered_at_any_depth() -> None:
    data = {
        "smtp": {"host": "mail.corp.example", "password": "pw", "timeout_s": 5},
        "headers": {"Authorization": "Basic abc", "Cookie": "sid=1", "Accept": "*/*"},
        "sentryDsn": "http://k@host/1", "hmac_key": "k", "accessToken": "t",
        "customer": {"name": "张三", "mobile": "x", "idCard": "y", "address": "北京市"},
        "rows": [{"phone_number": "z", "order_id": "O-1"}],
    }
    assert scrub(data) == {
        "smtp": {"host": "mail.corp.example", "password": FILTERED, "timeout_s": 5},
        "headers": {"Authorization": FILTERED, "Cookie": FILTERED, "Accept": "*/*"},
        "sentryDsn": FILTERED, "hmac_key": FILTERED, "accessToken": FILTERED,
        "customer": {"name": FILTERED, "mobile": FILTERED, "idCard": FILTERED,
                     "address": FILTERED},
        "rows": [{"phone_number": FILTERED, "order_id": "O-1"}],
    }


def test_values_keys_and_numbers_are_searched() -> None:
    data = {"note": f"customer {PHONE} called", PHONE: "O-1", "n": int(PHONE),
            "t": ("x", f"mail {EMAIL}"), "b": f"{ID_CARD}".encode(), "f": 1.5, "none": None}
    assert scrub(data) == {"note": "customer [Filtered:phone] called",
                           "[Filtered:phone]": "O-1", "n": FILTERED,
                           "t": ("x", "mail [Filtered:email]"), "b": "[Filtered:id-card]",
                           "f": 1.5, "none": None}


def test_two_keys_redacted_alike_are_both_kept() -> None:
    assert scrub({PHONE: 1, "13912345678": 2}) == {"[Filtered:phone]": 1, "[Filtered:phone]'": 2}


def test_scrub_does_not_change_its_input_and_survives_cycles() -> None:
    data: dict[str, Any] = {"phone": PHONE, "list": [PHONE]}
    data["self"] = data
    cleaned = scrub(data)
    assert data["phone"] == PHONE and data["list"] == [PHONE]
    assert cleaned["self"] == "[Circular]" and cleaned["list"] == ["[Filtered:phone]"]


def test_chinese_text_and_field_names() -> None:
    assert scrub_text(f"客户手机号{PHONE}，身份证{ID_CARD}。") == \
        "客户手机号[Filtered:phone]，身份证[Filtered:id-card]。"
    assert scrub({"姓名": "张三", "手机号": "x", "订单号": "O-1"}) == \
        {"姓名": FILTERED, "手机号": FILTERED, "订单号": "O-1"}


def test_customer_field_hook_adds_deployment_names() -> None:
    scrubber = make_scrubber(["member-alias", "wechatId"])
    assert scrubber({"memberAlias": "x", "wechat_id": "y", "name": "z", "sku": "s"}) == {
        "memberAlias": FILTERED, "wechat_id": FILTERED, "name": FILTERED, "sku": "s"}
    assert scrub({"wechat_id": "y"}) == {"wechat_id": "y"}  # the default does not know it


def test_secret_key_names() -> None:
    for key in ("password", "SMTP_PASSWORD", "client_secret", "api_key", "apiKey", "dsn",
                "Authorization", "set-cookie", "session_id", "refreshToken"):
        assert is_secret_key(key), key
    for key in ("host", "port", "timeout_s", "order_id", "user.id", "event.action"):
        assert not is_secret_key(key), key


def test_scrub_event_keeps_sdk_metadata_but_not_user_contexts() -> None:
    event = {
        "sdk": {"name": "sentry.python", "version": "2.75.0"},
        "contexts": {"runtime": {"name": "CPython", "version": "3.11.7"},
                     "customer": {"name": "张三", "note": f"tel {PHONE}"}},
        "extra": {"name": "李四"},
        "message": f"mail {EMAIL}",
    }
    assert scrub_event(event) == {
        "sdk": {"name": "sentry.python", "version": "2.75.0"},
        "contexts": {"runtime": {"name": "CPython", "version": "3.11.7"},
                     "customer": {"name": FILTERED, "note": "tel [Filtered:phone]"}},
        "extra": {"name": FILTERED},
        "message": "mail [Filtered:email]",
    }


def test_without_a_dsn_nothing_starts() -> None:
    assert init_sentry(None, "test", None) is False
    assert init_sentry("", "test", None) is False


# --- end to end: the real SDK posts envelopes to a real local server ---------------

@dataclass
class Received:
    path: str
    content_encoding: str
    body: bytes  # decompressed


@dataclass
class FakeSentry:
    port: int
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/1"


def _decode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # only present when the SDK chose it, i.e. when it is installed
        return brotli.decompress(body)
    assert encoding in ("", "identity"), f"unexpected Content-Encoding {encoding!r}"
    return body


@pytest.fixture
def fake_sentry() -> Iterator[FakeSentry]:
    holder: list[FakeSentry] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length", "0"))
            encoding = self.headers.get("Content-Encoding", "")
            body = _decode(self.rfile.read(length), encoding)
            holder[0].requests.append(Received(self.path, encoding, body))
            holder[0].arrived.set()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(FakeSentry(port=server.server_address[1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def sentry_client(fake_sentry: FakeSentry, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSentry]:
    # Never through a proxy: the only network in these tests is 127.0.0.1.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert init_sentry(fake_sentry.dsn, "test", "neo-auditd@0.0.0-test")
    try:
        yield fake_sentry
    finally:
        sentry_sdk.get_client().close(timeout=2)


class CustomerLookupError(Exception):
    pass


def _look_up_customer(order_id: str) -> None:
    phone = "13812345678"
    contact = {"mobile": "+86 138 1234 5678", "email": "zhang.san@example.com.cn"}
    id_card = "11010519491231002X"
    logging.getLogger("auditd.test").warning("calling customer %s about %s", phone, order_id)
    sentry_sdk.add_breadcrumb(category="sms", message=f"texted {phone}, id {id_card}",
                              data={"to": phone, "card": CARD})
    raise CustomerLookupError(f"no account for mobile {phone} ({contact['email']})")


def _envelope_items(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    lines = body.split(b"\n")
    items = []
    index = 1  # line 0 is the envelope header
    while index < len(lines) and lines[index]:
        header = json.loads(lines[index])
        if "length" in header:
            payload_start = sum(len(line) + 1 for line in lines[:index + 1])
            payload = body[payload_start:payload_start + header["length"]]
            consumed = payload.count(b"\n") + 1
        else:
            payload = lines[index + 1]
            consumed = 1
        items.append((header, payload))
        index += 1 + consumed
    return items


def test_reported_exception_arrives_without_personal_information(sentry_client: FakeSentry) -> None:
    try:
        _look_up_customer("O-20261129-0001")
    except CustomerLookupError:
        sentry_sdk.capture_exception()
    sentry_sdk.flush(timeout=5)
    assert sentry_client.arrived.wait(5), "no envelope reached the local server"

    envelopes = [r for r in sentry_client.requests if r.path == "/api/1/envelope/"]
    assert envelopes, [r.path for r in sentry_client.requests]
    raw = b"\n".join(r.body for r in envelopes)

    assert b"CustomerLookupError" in raw
    for secret in (b"13812345678", b"138 1234 5678", b"1381234", ID_CARD.encode(),
                   EMAIL.encode(), CARD.encode(), b"zhang.san"):
        assert secret not in raw, secret

    events = [json.loads(payload) for envelope in envelopes
              for header, payload in _envelope_items(envelope.body) if header["type"] == "event"]
    assert len(events) == 1
    event = events[0]
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "CustomerLookupError"
    assert exception["value"] == ("no account for mobile [Filtered:phone] "
                                  "([Filtered:email])")
    frames = exception["stacktrace"]["frames"]
    assert frames[-1]["function"] == "_look_up_customer"  # where it happened is kept...
    assert all("vars" not in frame for frame in frames)  # ...what the frames held is not
    crumbs = {c.get("category"): c for c in event["breadcrumbs"]["values"]}
    assert crumbs["sms"]["message"] == "texted [Filtered:phone], id [Filtered:id-card]"
    assert crumbs["sms"]["data"] == {"to": "[Filtered:phone]", "card": "[Filtered:bank-card]"}
    assert crumbs["auditd.test"]["message"] == "calling customer %s about %s"  # the template, not its values
    assert event["sdk"]["name"].startswith("sentry.python")  # SDK metadata kept


def test_a_failing_scrubber_drops_the_event_instead_of_sending_it_raw(
        fake_sentry: FakeSentry, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_scrubber(obj: Any) -> Any:
        raise RuntimeError("scrubber bug")

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert init_sentry(fake_sentry.dsn, "test", None, broken_scrubber)
    try:
        try:
            _look_up_customer("O-2")
        except CustomerLookupError:
            sentry_sdk.capture_exception()
        sentry_sdk.flush(timeout=5)
    finally:
        sentry_sdk.get_client().close(timeout=2)
    raw = b"\n".join(r.body for r in fake_sentry.requests)
    assert PHONE.encode() not in raw
    assert b"CustomerLookupError" not in raw
    # The SDK reports the drop, which shows the event was made and stopped by the scrubber.
    assert b'"reason":"callback_error"' in raw


# --- the daemon's own pipeline failing on an event that carries a phone number --------

def test_pipeline_failure_on_an_event_with_a_phone_number_reaches_sentry_without_it(
        sentry_client: FakeSentry, tmp_path: Any) -> None:
    """A store failure while a batch is processed: its frames hold the raw log line.

    Without the scrubber the number does arrive (checked by hand with an identity
    scrubber), through the frame locals of the pipeline.
    """
    from pathlib import Path

    from auditd.pipeline import Pipeline
    from auditd.runtime import load_runtime
    from auditd.opening import open_store
    from auditd.sources.base import Batch, Checkpoint

    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "config.yaml").write_text(
        "state_dir: state\nsources:\n  - name: crm\n    paths: [access.log]\n    format: neo-crm\n"
        "pseudonym:\n  key_file: pseudonym.key\n")
    runtime = load_runtime(Path(tmp_path / "config.yaml"))
    store, quarantine = open_store(runtime)
    # retail systems often key customers by mobile number: the raw line carries one
    record = ('{"ts":"2026-11-02T10:00:00.000+08:00","app":"crm","host":"crm-web-01","req":"r-1",'
              '"emp":{"id":"E10001","name":"x"},"ip":"10.20.1.5","op":"customer.view",'
              f'"res":{{"type":"customer","id":"{PHONE}","store":"S011"}},"subjects":["{PHONE}"],'
              '"count":1,"fields":["phone"],"masked":false,"result":"ok"}').encode()
    batch = Batch("crm", "access.log", "fp", [record], [0], Checkpoint("crm", "fp", "access.log", len(record) + 1))
    store.conn.execute("DROP TABLE event_segments")  # the disk lost the table under us
    try:
        with pytest.raises(Exception) as info:
            Pipeline(runtime, store, quarantine).handle(batch)
        sentry_sdk.capture_exception(info.value)
        sentry_sdk.flush(timeout=5)
    finally:
        store.close()
    assert sentry_client.arrived.wait(5)
    body = b"".join(r.body for r in sentry_client.requests)
    assert b"OperationalError" in body and b"event_segments" in body
    assert PHONE.encode() not in body and b"1381234" not in body


# --- the daemon itself crashing mid-batch, reported by a real SDK to a real server ----------

PLANTED = {
    "customer id": "C9F3KX7Q2",  # looks like any other id: no pattern can know it is a customer's
    "phone": "13912345678",
    "name": "王小明",
    "raw line": "r-PLANTED-77f3",  # a request id that only the raw log line carries
}


def _planted_line() -> bytes:
    return (json.dumps({
        "ts": "2026-11-02T10:00:00.000+08:00", "app": "crm", "host": "crm-web-01", "req": PLANTED["raw line"],
        "emp": {"id": "E10001", "name": PLANTED["name"]}, "ip": "10.20.1.5", "op": "customer.view",
        "res": {"type": "customer", "id": PLANTED["customer id"], "store": "S011"},
        "subjects": [PLANTED["customer id"], PLANTED["phone"]], "count": 2, "fields": ["name", "phone"],
        "masked": False, "result": "ok"}, ensure_ascii=False) + "\n").encode()


@pytest.mark.slow
def test_a_daemon_crashing_mid_batch_reports_it_without_the_batch(fake_sentry: FakeSentry, tmp_path: Any) -> None:
    """The store loses a table under the running daemon; the next batch (raw ids, a phone
    number, a name) fails inside its transaction and the daemon exits. Its report arrives,
    and no planted value is in any envelope. Today's main sends them in frame variables."""
    import os
    import sqlite3
    import subprocess
    import sys
    import time

    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "logs").mkdir()
    log_file = tmp_path / "logs" / "access.log"
    log_file.write_bytes(b"")
    (tmp_path / "config.yaml").write_text(
        "state_dir: state\nsources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n"
        "    poll_interval_s: 0.1\npseudonym:\n  key_file: pseudonym.key\n"
        f"ops:\n  metrics: {{enabled: false}}\n  sentry: {{dsn: '{fake_sentry.dsn}', environment: test}}\n")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = "127.0.0.1"
    db = tmp_path / "state" / "neo-auditd.db"
    out = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(tmp_path / "config.yaml")],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # past the start-up, into the loop
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute("DROP TABLE event_segments")  # the disk lost the table under it
        with open(log_file, "ab") as fh:
            fh.write(_planted_line())
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    daemon_log = (tmp_path / "daemon.log").read_text(errors="replace")
    assert code not in (0, None), daemon_log[-2000:]
    assert fake_sentry.arrived.wait(10), "no envelope reached the local server\n" + daemon_log[-2000:]

    bodies = [r.body for r in fake_sentry.requests if r.path == "/api/1/envelope/"]
    events = [json.loads(payload) for body in bodies for header, payload in _envelope_items(body)
              if header["type"] == "event"]
    assert [e["exception"]["values"][-1]["type"] for e in events] == ["OperationalError"]
    assert "event_segments" in events[0]["exception"]["values"][-1]["value"]  # the cause is kept
    raw = b"\n".join(bodies)
    for what, value in PLANTED.items():
        assert value.encode() not in raw, f"the planted {what} reached Sentry"
        assert json.dumps(value).encode()[1:-1] not in raw, f"the planted {what} reached Sentry (escaped)"


# --- what the hooks do with each kind of record ---------------------------------------------


def test_error_messages_lose_quoted_values_and_long_text_is_cut() -> None:
    from auditd.ops.sentry import MAX_TEXT_CHARS, scrub_message

    assert scrub_message("KeyError: 'C9F3KX7Q2'") == "KeyError: '[Filtered]'"
    assert scrub_message('no employee "王小明" in S011') == 'no employee "[Filtered]" in S011'
    long = "x" * 100 + "a" * 100_000 + "@"  # minutes of backtracking for the old e-mail pattern
    assert scrub_text(long) == "x" * 100 + "a" * (MAX_TEXT_CHARS - 100) + "…[truncated]"


def test_the_secret_assignment_pattern_reads_each_key_once() -> None:
    assert scrub_text("db_password=hunter2 user=alice") == "db_password=[Filtered] user=alice"
    assert scrub_text("password" * 500 + "=x") == "password" * 500 + "=[Filtered]"
    assert scrub_text("name=bob; sessionId: abc") == "name=bob; sessionId: [Filtered]"


def test_events_keep_no_frame_variables_log_parameters_or_request_bodies() -> None:
    event = {
        "exception": {"values": [{"type": "KeyError", "value": "'C9F3KX7Q2'", "stacktrace": {"frames": [
            {"function": "handle", "lineno": 3, "vars": {"batch": "raw line C9F3KX7Q2"}}]}}]},
        "threads": {"values": [{"stacktrace": {"frames": [{"function": "run", "vars": {"x": "C9F3KX7Q2"}}]}}]},
        "logentry": {"message": "no assignee for %s", "params": ["C9F3KX7Q2"], "formatted": "no assignee for C9F3KX7Q2"},
        "request": {"url": "http://127.0.0.1/x", "data": "C9F3KX7Q2", "cookies": "s=1"},
    }
    cleaned = scrub_event(event)
    assert "C9F3KX7Q2" not in json.dumps(cleaned)
    assert cleaned["exception"]["values"][0]["stacktrace"]["frames"] == [{"function": "handle", "lineno": 3}]
    assert cleaned["logentry"] == {"message": "no assignee for %s", "formatted": "no assignee for %s"}
    assert cleaned["request"] == {"url": "http://127.0.0.1/x"}


def test_log_breadcrumbs_and_sentry_logs_carry_the_template_only() -> None:
    from auditd.ops.sentry import scrub_breadcrumb, scrub_log

    record = logging.LogRecord("auditd", logging.WARNING, __file__, 1, "no assignee for %s", ("C9F3KX7Q2",), None)
    crumb = {"type": "log", "category": "auditd", "message": record.getMessage(), "data": {}}
    assert scrub_breadcrumb(crumb, {"log_record": record})["message"] == "no assignee for %s"
    log = {"body": "no assignee for C9F3KX7Q2", "attributes": {
        "sentry.message.template": "no assignee for %s", "sentry.message.parameter.0": "C9F3KX7Q2",
        "logger.name": "auditd"}}
    assert scrub_log(log) == {"body": "no assignee for %s", "attributes": {
        "sentry.message.template": "no assignee for %s", "logger.name": "auditd"}}
