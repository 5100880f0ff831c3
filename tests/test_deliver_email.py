"""E-mail through a real SMTP server on loopback (aiosmtpd: STARTTLS with a certificate
made in the test, AUTH): content, Message-ID and key, queue ids as receipts, retries when
the server refuses, one connection for many messages, and the raw address deleted once
delivered."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path

import pytest

from auditd.config.typed import Duration
from auditd.deliver.message import message_id
from auditd.deliver.settings import ChannelSettings, DeliverSettings, EmailSettings, RetrySettings, Route, Secret
from deliver_helpers import (SMTP_PASSWORD, SMTP_USER, SmtpServer, add_customers, add_incident, add_notice, deliverer,
                             open_store, outbox_states)

FAST_RETRY = RetrySettings(attempts=5, initial=Duration(0.0), max=Duration(0.0), jitter=Duration(0.0))


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "smtp.password"
    path.write_text(SMTP_PASSWORD + "\n")
    path.chmod(0o600)
    return path


def email_settings(server: SmtpServer, password_file: Path, **changes) -> DeliverSettings:
    email = EmailSettings(host="127.0.0.1", port=server.port, security="starttls", username=SMTP_USER,
                          password=Secret(file=password_file), sender="security@neo-retail.example",
                          ca_file=server.cert, timeout_s=10)
    base = DeliverSettings(channels=ChannelSettings(email=email), retry=FAST_RETRY)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("process", [True, False], ids=["child-process", "in-thread"])
def test_customer_notices_arrive_over_starttls_with_auth_each_once_with_its_key(tmp_path, password_file, process):
    conn = open_store(tmp_path / "neo.db")
    incident, fleet_key = add_incident(conn)
    add_customers(conn, tmp_path, 30, incident_id=incident)
    with SmtpServer(tmp_path) as server:
        settings = email_settings(server, password_file)
        settings = dataclasses.replace(settings, channels=ChannelSettings(
            email=dataclasses.replace(settings.channels.email, process=process)))
        d = deliverer(settings, tmp_path)
        report = d.run(conn)
        assert report.delivered == 30 and report.failed == 0
        assert len(server.received) == 30
        keys = set()
        for received in server.received:
            mail = received.message
            key = mail["X-Neo-Idempotency-Key"]
            keys.add(key)
            assert key.startswith(f"{fleet_key}/notify-customers/p:")  # fleet-wide, not the local id
            assert mail["Message-ID"] == message_id(key, "neo-retail.example")
            assert received.recipients == [mail["To"].addresses[0].addr_spec]
            assert "Dear customer" in mail.get_body(("plain",)).get_content()
        assert len(keys) == 30
    receipts = [json.loads(r[0]) for r in conn.execute("SELECT receipt FROM outbox")]
    assert sorted(r["queue_id"] for r in receipts) == [f"Q{i:08d}" for i in range(1, 31)]
    # a second run sends nothing again
    assert d.run(conn).delivered == 0
    assert outbox_states(conn) == {"delivered": 30}


def test_raw_contact_data_is_deleted_once_delivered_and_the_proof_stays(tmp_path, password_file):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 3, incident_id=incident)
    paths = [Path(p) for (p,) in conn.execute("SELECT body_path FROM notices")]
    with SmtpServer(tmp_path) as server:
        report = deliverer(email_settings(server, password_file), tmp_path).run(conn)
    assert report.bodies_deleted == 3
    assert not any(p.exists() for p in paths)
    for sha, receipt, deleted, body_sha in conn.execute(
            "SELECT o.message_sha256, o.receipt, o.body_deleted_at, n.body_sha256 FROM outbox o"
            " JOIN notices n ON n.seq = o.notice_seq"):
        assert len(sha) == 64 and json.loads(receipt)["queue_id"] and deleted and len(body_sha) == 64


def test_refused_three_times_then_delivered_once(tmp_path, password_file):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 1, incident_id=incident)
    with SmtpServer(tmp_path) as server:
        server.handler.refuse_first = 3
        d = deliverer(email_settings(server, password_file), tmp_path)
        runs = 0
        while outbox_states(conn).get("delivered") != 1 and runs < 10:
            d.run(conn)
            runs += 1
        assert server.handler.refused == 3
        assert len(server.received) == 1
    attempts = [r[0] for r in conn.execute("SELECT outcome FROM delivery_attempts ORDER BY seq")]
    assert attempts == ["retry", "retry", "retry", "delivered"]
    errors = [r[0] for r in conn.execute("SELECT error FROM delivery_attempts WHERE outcome = 'retry'")]
    assert all("451" in e and "@" not in e for e in errors)  # the code, never the address


def test_a_connection_lost_after_data_is_sent_again_and_marked_a_possible_repeat(tmp_path, password_file):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 3, incident_id=incident)
    with SmtpServer(tmp_path) as server:
        server.handler.drop_after_data = 1  # the first message is queued but its answer never comes
        d = deliverer(email_settings(server, password_file), tmp_path)
        runs = 0
        while outbox_states(conn).get("delivered") != 3 and runs < 5:
            d.run(conn)
            runs += 1
        keys = [r.message["X-Neo-Idempotency-Key"] for r in server.received]
    assert len(keys) == 4 and len(set(keys)) == 3  # at least once; the receiver can drop the repeat by key
    repeated = next(k for k in keys if keys.count(k) == 2)
    flagged = [k for (k,) in conn.execute("SELECT wire_key FROM outbox WHERE possible_repeat = 1")]
    assert flagged == [repeated]  # only the message whose answer was lost is marked


def escalating(server, password_file, *, attempts: int):
    """E-mail through `server`, `attempts` tries a message, failures told to the security team's route."""
    return email_settings(server, password_file, retry=dataclasses.replace(FAST_RETRY, attempts=attempts),
                          to={"security-team": [Route(channel="email", address="soc@neo-retail.example")]},
                          escalate_to="security-team")


def test_after_the_retry_budget_a_message_fails_is_escalated_and_can_be_retried(tmp_path, password_file):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 1, incident_id=incident)
    with SmtpServer(tmp_path) as server:
        server.handler.refuse_first = 100
        d = deliverer(escalating(server, password_file, attempts=2), tmp_path)
        for _ in range(3):
            d.run(conn)
        row = conn.execute("SELECT state, attempts, escalated_at, last_error FROM outbox WHERE notice_seq = 1"
                           ).fetchone()
        assert row[0] == "failed" and row[1] == 2 and row[2] is not None and "gave up after 2" in row[3]
        # the escalation went to the security team, and names no customer's address
        assert server.received == []  # refused too: the escalation is itself failing through this server
        escalation = conn.execute("SELECT state, kind, body_path FROM outbox WHERE kind = 'delivery-failed'"
                                  ).fetchone()
        assert escalation[1] == "delivery-failed"
        text = Path(escalation[2]).read_text()
        assert "outbox retry 1" in text and "mail.example" not in text
        server.handler.refuse_first = 0
        from auditd.deliver.outbox import retry_failed

        assert retry_failed(conn, [1], dt.datetime.now(dt.timezone.utc)) == 1
        d.run(conn)
        assert conn.execute("SELECT state FROM outbox WHERE id = 1").fetchone()[0] == "delivered"
        assert any(r.recipients == ["p000000@mail.example"] or r.recipients == ["c0@mail.example"]
                   for r in server.received)


def test_a_route_that_fails_for_many_customers_pages_the_security_team_once(tmp_path, password_file):
    """One escalation per failed message meant 30 (or 50,000) messages to the security
    team for one outage, each with a synced file written inside the write lock: now one
    per flush, listing the messages by number, pseudonym and error, no address."""
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 30, incident_id=incident)
    with SmtpServer(tmp_path) as server:
        server.handler.refuse_first = 10_000
        deliverer(escalating(server, password_file, attempts=1), tmp_path).run(conn)
        failed = conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'failed' AND kind = 'notice'"
                              " AND escalated_at IS NOT NULL").fetchone()[0]
        escalations = conn.execute("SELECT body_path, wire_key FROM outbox WHERE kind = 'delivery-failed'").fetchall()
    assert failed == 30 and len(escalations) == 1
    body = json.loads(Path(escalations[0][0]).read_text())
    assert body["subject"] == f"[delivery failed] 30 messages ({incident})"
    listed = [line for line in body["text"].splitlines() if line.startswith("- ")]
    assert len(listed) == 30 and all("recipient p:" in line for line in listed)
    assert "mail.example" not in body["text"] and "neo-auditd outbox retry " in body["text"]


def test_regulator_email_carries_the_report_as_attachments(tmp_path, password_file):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    (report_dir / "initial-r1.json").write_text('{"items": 1}')
    (report_dir / "initial-r1.zh-CN.html").write_text("<h1>初始报告</h1>")
    (report_dir / "initial-r1.en.html").write_text("<h1>Initial report</h1>")
    add_notice(conn, tmp_path, incident_id=incident, step_id="notify-regulator", recipient="regulator",
               audience="regulator", kind="regulator", contact_ref="audience:yunnan-cac",
               attachments=[str(report_dir / "initial-r1.json")], subject="网络安全事件报告", language="zh-CN",
               text="附件为初始报告。")
    with SmtpServer(tmp_path) as server:
        settings = email_settings(server, password_file,
                                  to={"yunnan-cac": [Route(channel="email", address="report@cac.example")]})
        assert deliverer(settings, tmp_path).run(conn).delivered == 1
        mail = server.received[0].message
    assert server.received[0].recipients == ["report@cac.example"]
    names = sorted(part.get_filename() for part in mail.iter_attachments())
    assert names == ["initial-r1.en.html", "initial-r1.json", "initial-r1.zh-CN.html"]
    assert mail["Subject"] == "网络安全事件报告"


def test_the_password_never_reaches_the_log_the_store_or_status(tmp_path, password_file, caplog):
    from auditd.ops.status import collect_status
    from auditd.ops.status_text import render_status

    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    add_customers(conn, tmp_path, 2, incident_id=incident)
    caplog.set_level("DEBUG")
    with SmtpServer(tmp_path) as server:
        d = deliverer(email_settings(server, password_file), tmp_path)
        d.run(conn)
        assert SMTP_PASSWORD not in repr(d.channels.for_route("email", "email").__dict__)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    wrong.chmod(0o600)
    with SmtpServer(tmp_path) as server:  # refused credentials: logged and retried, never the secret
        add_customers(conn, tmp_path, 1, incident_id=incident, step_id="again")
        settings = email_settings(server, password_file)
        settings = dataclasses.replace(settings, channels=ChannelSettings(email=dataclasses.replace(
            settings.channels.email, password=Secret(file=wrong))))
        deliverer(settings, tmp_path).run(conn)
    dump = "\n".join(r for (r,) in conn.execute("SELECT COALESCE(last_error, '') || COALESCE(receipt, '') FROM outbox"))
    assert "authentication refused" in dump
    status = render_status(collect_status(tmp_path / "neo.db", None, dt.datetime.now(dt.timezone.utc)))
    for text in (caplog.text, dump, status, "\n".join(str(v) for v in os.environ.values())):
        assert SMTP_PASSWORD not in text and "not-the-password" not in text


def deliver_problems(tmp_path, text: str) -> str:
    """The located problems of a deliver.yaml holding `text`, one per line."""
    from auditd.config.located import Problems, load_yaml_file
    from auditd.config.typed import convert

    path = tmp_path / "deliver.yaml"
    path.write_text(text)
    problems = Problems()
    doc = load_yaml_file(path, problems)
    convert(DeliverSettings, doc.data, doc, (), problems)
    return "\n".join(str(p) for p in problems.items)


def test_a_secret_in_the_config_text_is_refused(tmp_path):
    text = deliver_problems(tmp_path, "channels:\n  email: {host: 127.0.0.1, username: u, password: hunter2, "
                                      "sender: a@b.example}\n")
    assert "deliver.yaml:2:" in text and "channels.email.password" in text and "never written in the config" in text
    assert "hunter2" not in text


def test_an_empty_escalate_to_is_refused_not_read_as_the_default(tmp_path):
    """`escalate_to: ""` was taken for "not set", so failures went to the security
    audience's route while the operator meant something else: now a located problem."""
    text = deliver_problems(tmp_path, 'to:\n  soc: [{channel: email, address: soc@b.example}]\nescalate_to: ""\n')
    assert "deliver.yaml:3:" in text and "escalate_to: must name a route in deliver.to" in text
