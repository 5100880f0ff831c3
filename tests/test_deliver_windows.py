"""A failed message never uses up a realert window or a digest: a later message of the
same kind still goes out when the earlier one failed."""

from __future__ import annotations

import datetime as dt
import json

from auditd.config.typed import Duration
from auditd.deliver.settings import ChatTarget, DeliverSettings, DigestSettings, RetrySettings, Route
from deliver_helpers import UTC, HttpReceiver, add_incident, add_notice, deliverer, open_store

ONE_TRY = RetrySettings(attempts=1, initial=Duration(0.0), max=Duration(0.0), jitter=Duration(0.0))


class Clock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def chat_settings(port: int, **extra) -> DeliverSettings:
    target = ChatTarget(service="json", url=f"json://127.0.0.1:{port}/chat")
    return DeliverSettings(retry=ONE_TRY, to={"security-team": [Route(channel="chat", chat=target)]}, **extra)


def security_notice(conn, tmp_path, incident: str, step: str, revision: int = 1) -> int:
    return add_notice(conn, tmp_path, incident_id=incident, step_id=step, recipient="security", audience="security",
                      kind="escalation", channel="chat", contact_ref="audience:security-team", revision=revision,
                      subject=f"{incident} {step}")


def test_a_failed_message_does_not_use_up_the_realert_window(tmp_path):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    up = [False]
    clock = Clock(dt.datetime(2026, 11, 2, 3, 0, tzinfo=UTC))
    with HttpReceiver(status=lambda request: 200 if up[0] else 503) as chat:
        d = deliverer(chat_settings(chat.port, realert={"security": Duration(3600)}), tmp_path, clock=clock)
        security_notice(conn, tmp_path, incident, "contain-account.escalation")
        d.run(conn)  # the chat is down: failed after its one try
        assert conn.execute("SELECT state FROM outbox WHERE id = 1").fetchone()[0] == "failed"
        up[0] = True
        clock.now += dt.timedelta(minutes=5)
        security_notice(conn, tmp_path, incident, "contain-sessions.escalation")
        d.run(conn)  # within the window, but the earlier one failed: this one goes out
        assert [r.json()["title"] for r in chat.requests] == [f"{incident} contain-sessions.escalation"]
        clock.now += dt.timedelta(minutes=5)
        security_notice(conn, tmp_path, incident, "notify-regulator.escalation")
        d.run(conn)  # now a delivered one covers the window: folded into it, not sent
        assert len(chat.requests) == 1
        state, covered = conn.execute("SELECT state, covered_by FROM outbox WHERE id = 3").fetchone()
        assert state == "suppressed" and covered.endswith("/contain-sessions.escalation/security/r1")
        clock.now += dt.timedelta(hours=2)
        security_notice(conn, tmp_path, incident, "contain-exports.escalation")
        d.run(conn)  # the window has passed
        assert len(chat.requests) == 2


def test_a_failed_digest_leaves_its_entries_for_the_next_one(tmp_path):
    conn = open_store(tmp_path / "neo.db")
    up = [False]
    clock = Clock(dt.datetime(2026, 11, 2, 0, 30, tzinfo=UTC))  # 08:30 in Shanghai
    incidents = [add_incident(conn, n, actor=f"E{n:05d}")[0] for n in range(1, 4)]
    with HttpReceiver(status=lambda request: 200 if up[0] else 503) as chat:
        d = deliverer(chat_settings(chat.port, digest=DigestSettings(steps=["digest"], at="09:00")), tmp_path,
                      clock=clock)
        for incident in incidents[:2]:
            add_notice(conn, tmp_path, incident_id=incident, step_id="digest", recipient="security",
                       audience="security", kind="security", channel="chat", contact_ref="audience:security-team",
                       subject=f"[T6] {incident} anomaly")
        d.run(conn)
        assert conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'held'").fetchone()[0] == 2
        clock.now += dt.timedelta(hours=1)  # 09:30: the digest is due, the chat is down
        d.run(conn)
        assert chat.requests == []
        assert conn.execute("SELECT state FROM outbox WHERE kind = 'digest'").fetchone()[0] == "failed"
        assert conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'held'").fetchone()[0] == 2
        add_notice(conn, tmp_path, incident_id=incidents[2], step_id="digest", recipient="security",
                   audience="security", kind="security", channel="chat", contact_ref="audience:security-team",
                   subject=f"[T6] {incidents[2]} anomaly")
        d.run(conn)  # taken in (held for tomorrow's digest)
        assert chat.requests == []
        up[0] = True
        clock.now += dt.timedelta(days=1)  # the next day's digest: all three
        d.run(conn)
        [request] = chat.requests
        message = request.json()["message"]
        for incident in incidents:
            assert f"neo-auditd incidents show {incident}" in message
    rows = conn.execute("SELECT state, receipt FROM outbox WHERE kind != 'digest'").fetchall()
    assert [r[0] for r in rows] == ["delivered"] * 3
    assert all(json.loads(r[1])["digest"].startswith("digest/audience:security-team/") for r in rows)
