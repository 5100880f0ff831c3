"""Webhooks, SMS and push gateways against a real HTTP server on loopback; chat through
Apprise to that server's json:// service, and the URLs built for DingTalk, WeCom, Feishu
and Slack checked against Apprise's own parsing; letters and portal files; rate limits."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import apprise
import pytest

from auditd.config.typed import Duration
from auditd.deliver.channels.chat import build_url
from auditd.deliver.channels.http import verify
from auditd.deliver.secrets import SecretValue
from auditd.deliver.settings import (ChannelSettings, ChatTarget, DeliverSettings, GatewaySettings, LetterSettings,
                                     RetrySettings, Route, Secret)
from deliver_helpers import HttpReceiver, add_customers, add_incident, add_notice, deliverer, open_store, outbox_states

FAST = RetrySettings(attempts=3, initial=Duration(0.0), max=Duration(0.0), jitter=Duration(0.0))
HOOK_SECRET = "whsec-7f3a9c1e"


def test_webhook_is_signed_timestamped_and_keyed(tmp_path, monkeypatch):
    monkeypatch.setenv("NEO_SITE_HMAC", HOOK_SECRET)
    conn = open_store(tmp_path / "neo.db")
    incident, fleet_key = add_incident(conn)
    add_notice(conn, tmp_path, incident_id=incident, step_id="announce", recipient="public.zh-CN",
               audience="public", kind="announcement", channel="webhook", contact_ref="audience:public",
               subject="关于个人信息安全事件的公告", text="公告正文")
    with HttpReceiver() as site:
        settings = DeliverSettings(retry=FAST, to={"public": [Route(channel="webhook", url=site.url + "/announce",
                                                                   secret=Secret(env="NEO_SITE_HMAC"))]})
        assert deliverer(settings, tmp_path).run(conn).delivered == 1
        [request] = site.requests
    headers = {k.lower(): v for k, v in request.headers.items()}
    key = headers["x-neo-idempotency-key"]
    assert key == f"{fleet_key}/announce/public.zh-CN/r1" == request.json()["key"]
    assert verify(HOOK_SECRET, headers["x-neo-timestamp"], request.body, headers["x-neo-signature"])
    assert not verify("another-secret", headers["x-neo-timestamp"], request.body, headers["x-neo-signature"])
    assert not verify(HOOK_SECRET, headers["x-neo-timestamp"], request.body + b" ", headers["x-neo-signature"])
    assert request.json()["subject"] == "关于个人信息安全事件的公告"
    receipt = json.loads(conn.execute("SELECT receipt FROM outbox").fetchone()[0])
    assert receipt == {"http_status": 200, "response_id": "R000001"}


def test_sms_and_push_gateways_get_the_text_the_number_and_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("NEO_SMS_TOKEN", "sms-token-1")
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_notice(conn, tmp_path, incident_id=incident, step_id="notify-customers", recipient="p:1", channel="sms",
               address="13800000004", text="您的个人信息可能被泄露。")
    add_notice(conn, tmp_path, incident_id=incident, step_id="notify-customers", recipient="p:2", channel="push",
               address="device-token-2", text="Your data may have been exposed.")
    with HttpReceiver() as sms, HttpReceiver() as push:
        channels = ChannelSettings(sms=GatewaySettings(url=sms.url + "/send", token=Secret(env="NEO_SMS_TOKEN")),
                                   push=GatewaySettings(url=push.url + "/push"))
        assert deliverer(DeliverSettings(channels=channels, retry=FAST), tmp_path).run(conn).delivered == 2
        [s], [p] = sms.requests, push.requests
    assert s.json()["to"] == "13800000004" and "您的个人信息可能被泄露" in s.json()["text"]
    assert s.headers["Authorization"] == "Bearer sms-token-1"
    assert s.json()["reference"] == s.headers["X-Neo-Idempotency-Key"] and s.json()["reference"].endswith("/p:1/r1")
    assert p.json()["to"] == "device-token-2" and "Authorization" not in p.headers


def test_a_gateway_refusing_for_good_fails_at_once_and_a_busy_one_is_retried(tmp_path):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 2, incident_id=incident, channel="sms")
    answers = iter([400, 503, 200])
    with HttpReceiver(status=lambda request: next(answers)) as sms:
        channels = ChannelSettings(sms=GatewaySettings(url=sms.url + "/send"))
        deliverer(DeliverSettings(channels=channels, retry=FAST), tmp_path).run(conn)
        assert len(sms.requests) == 1
    assert outbox_states(conn) == {"failed": 1, "delivered": 1}
    outcomes = [r[0] for r in conn.execute("SELECT outcome FROM delivery_attempts ORDER BY seq")]
    assert outcomes == ["failed", "retry", "delivered"]


def test_security_team_chat_through_apprise_json_to_loopback(tmp_path):
    conn = open_store(tmp_path / "neo.db")
    incident, fleet_key = add_incident(conn)
    add_notice(conn, tmp_path, incident_id=incident, step_id="notify-security", recipient="security",
               audience="security", kind="security", channel="chat", contact_ref="audience:security-team",
               subject=f"[T4] {incident} Tell the security team", text=f"Details: neo-auditd incidents show {incident}")
    with HttpReceiver() as chat:
        target = ChatTarget(service="json", url=f"json://127.0.0.1:{chat.port}/chat")
        settings = DeliverSettings(retry=FAST, to={"security-team": [Route(channel="chat", chat=target)]})
        assert deliverer(settings, tmp_path).run(conn).delivered == 1
        [request] = chat.requests
    body = request.json()
    assert body["title"] == f"[T4] {incident} Tell the security team"
    assert f"neo-auditd incidents show {incident}" in body["message"]
    assert request.headers["X-Neo-Idempotency-Key"] == f"{fleet_key}/notify-security/security/r1"
    assert body["message"].endswith(f"ref: {fleet_key}/notify-security/security/r1")
    receipt = json.loads(conn.execute("SELECT receipt FROM outbox").fetchone()[0])
    assert receipt == {"apprise": "sent", "service": "json"}


@pytest.mark.parametrize("service, tokens, plugin, check", [
    ("dingtalk", {"token": "a1b2c3d4e5"}, "NotifyDingTalk", lambda p: p.token == "a1b2c3d4e5" and p.secret is None),
    ("dingtalk", {"token": "a1b2c3d4e5", "secret": "SEC9f8e7d"}, "NotifyDingTalk",
     lambda p: p.token == "a1b2c3d4e5" and p.secret == "SEC9f8e7d"),
    ("wecom", {"token": "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"}, "NotifyWeComBot",
     lambda p: p.key == "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"),
    ("feishu", {"token": "7c2f1e0b-aaaa-bbbb-cccc-1234567890ab"}, "NotifyFeishu",
     lambda p: p.token == "7c2f1e0b-aaaa-bbbb-cccc-1234567890ab"),
    ("slack", {"token": "T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"}, "NotifySlack",
     lambda p: (p.token_a, p.token_b, p.token_c) == ("T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ")
     and p.channels == ["#security"]),
])
def test_chat_urls_are_what_apprise_parses_them_to_be(service, tokens, plugin, check):
    target = ChatTarget(service=service, token=Secret(env="X"), secret=Secret(env="Y") if "secret" in tokens else None,
                        channel="#security" if service == "slack" else None)
    url = build_url(target, SecretValue(tokens["token"], "env X"),
                    SecretValue(tokens["secret"], "env Y") if "secret" in tokens else None, None)
    parsed = apprise.Apprise.instantiate(url, asset=apprise.AppriseAsset(app_id="neo-auditd"))
    assert type(parsed).__name__ == plugin
    assert check(parsed)
    assert tokens["token"].split("/")[-1][:4] not in parsed.url(privacy=True).split("?")[0] or service == "slack"


def test_a_chat_robot_gets_at_most_its_rate_and_the_rest_waits_pending(tmp_path):
    conn = open_store(tmp_path / "neo.db")
    for n in range(1, 26):
        incident, _ = add_incident(conn, n, actor=f"E{n:05d}")
        add_notice(conn, tmp_path, incident_id=incident, step_id="notify-security", recipient="security",
                   audience="security", kind="security", channel="chat", contact_ref="audience:security-team")
    now = [1000.0]
    with HttpReceiver() as chat:
        target = ChatTarget(service="json", url=f"json://127.0.0.1:{chat.port}/robot", rate_per_minute=20)
        settings = DeliverSettings(retry=FAST, to={"security-team": [Route(channel="chat", chat=target)]})
        d = deliverer(settings, tmp_path)
        d.monotonic = lambda: now[0]
        d.run(conn)
        assert len(chat.requests) == 20 and outbox_states(conn) == {"delivered": 20, "pending": 5}
        now[0] += 30
        d.run(conn)
        assert len(chat.requests) == 20  # the window has not moved yet
        now[0] += 31
        d.run(conn)
        assert len(chat.requests) == 25 and outbox_states(conn) == {"delivered": 25}
    attempts = conn.execute("SELECT COUNT(*) FROM delivery_attempts").fetchone()[0]
    assert attempts == 25  # held back is not an attempt


def test_letters_are_one_printable_file_per_recipient(tmp_path):
    from auditd.deliver.channels.files import weasyprint_available

    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    for i in range(3):
        add_notice(conn, tmp_path, incident_id=incident, step_id="notify-customers", recipient=f"p:{i}",
                   channel="letter", address=f"云南省昆明市示例路 {i} 号", name="郭军敏", language="zh-CN",
                   subject="关于您的个人信息", text="尊敬的客户：……")
    settings = DeliverSettings(retry=FAST, channels=ChannelSettings(letter=LetterSettings(spool=tmp_path / "spool")))
    assert deliverer(settings, tmp_path).run(conn).delivered == 3
    receipts = [json.loads(r[0]) for r in conn.execute("SELECT receipt FROM outbox")]
    paths = {Path(r["path"]) for r in receipts}
    assert len(paths) == 3 and all(p.parent.parent == tmp_path / "spool" for p in paths)
    fmt = "pdf" if weasyprint_available() else "html"
    for receipt in receipts:
        path = Path(receipt["path"])
        assert receipt["format"] == fmt and path.suffix == f".{fmt}" and oct(path.stat().st_mode)[-3:] == "600"
        data = path.read_bytes()
        assert data.startswith(b"%PDF") if fmt == "pdf" else "云南省昆明市示例路" in data.decode()


def test_letters_are_pdf_here(tmp_path):
    """scripts/test.sh installs WeasyPrint, Pango, a CJK font and pdftotext: letters are PDFs,
    with the Chinese text and the key in them."""
    from auditd.deliver.channels.files import LetterChannel, weasyprint_available
    from auditd.deliver.message import Outgoing

    if not weasyprint_available() or not shutil.which("pdftotext"):
        missing = "WeasyPrint cannot load Pango (Debian: libpango-1.0-0 libpangoft2-1.0-0)" \
            if not weasyprint_available() else "pdftotext (Debian: poppler-utils)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: scripts/test.sh installs it as root; CI never skips this")
        pytest.skip(f"{missing} is not installed and scripts/test.sh could not install it (not root?)")
    channel = LetterChannel(tmp_path)
    results = []
    message = Outgoing(outbox_id=1, wire_key="FI-1/notify-customers/p:1/r1", route="letter", channel="letter",
                       audience="customers", kind="notice", incident_id="INC-1", language="zh-CN",
                       subject="关于您的个人信息", text="尊敬的客户：我们发现了一起安全事件。", html="",
                       address="云南省昆明市示例路 3 号", name="郭军敏")
    channel.send_batch([message], lambda m, r: results.append(r))
    path = Path(results[0].receipt["path"])
    assert path.read_bytes().startswith(b"%PDF")
    text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout
    assert "示例路" in text and "FI-1/notify-customers/p:1/r1" in text


def test_an_unconfigured_channel_fails_and_says_what_to_configure(tmp_path):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 1, incident_id=incident, channel="sms")
    deliverer(DeliverSettings(retry=FAST), tmp_path).run(conn)
    state, error = conn.execute("SELECT state, last_error FROM outbox").fetchone()
    assert state == "failed" and "deliver.channels.sms" in error


def test_a_secret_with_a_line_break_or_control_character_is_refused_at_load(tmp_path, monkeypatch):
    """A gateway token from the environment with an embedded newline reached http.client,
    whose ValueError made every message retry as 'channel error: ValueError' and fail."""
    from auditd.deliver.secrets import SecretError, read_secret
    from auditd.deliver.settings import Secret

    monkeypatch.setenv("NEO_TEST_TOKEN", "abc\ndef")
    with pytest.raises(SecretError, match="NEO_TEST_TOKEN holds a line break"):
        read_secret(Secret(env="NEO_TEST_TOKEN"))
    monkeypatch.setenv("NEO_TEST_TOKEN", "  abc-def\n")  # surrounding blanks: trimmed, as before
    assert read_secret(Secret(env="NEO_TEST_TOKEN")).reveal() == "abc-def"
    token = tmp_path / "token"
    token.write_bytes(b"abc\x00def\n")
    token.chmod(0o600)
    with pytest.raises(SecretError, match="control character"):
        read_secret(Secret(file=str(token)))
    assert "abc" not in str(pytest.raises(SecretError, read_secret, Secret(file=str(token))).value)
