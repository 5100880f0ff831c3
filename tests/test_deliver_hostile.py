"""Hostile values on the deliver path, against real receivers on loopback: what a
customer typed into their own name or address, and receivers that misbehave."""

from __future__ import annotations

import dataclasses

import pytest

from auditd.deliver.settings import ChannelSettings
from deliver_helpers import SmtpServer, add_incident, add_notice, deliverer, open_store, outbox_states
from test_deliver_email import email_settings, password_file  # noqa: F401 - a fixture

HOSTILE = {
    "p:000001": ("Eve\r\nReply-To: phish@evil.example", "eve@mail.example"),  # ASCII: the fast path
    "p:000002": ("张三", "张三@mail.example\r\nBcc: x@evil.example"),  # non-ASCII: the library's path
    "p:000003": ("Mallory", "mallory@mail.example\r\nRCPT TO:<x@evil.example>"),
}


@pytest.mark.parametrize("process", [True, False], ids=["child-process", "in-thread"])
def test_a_name_or_address_with_line_breaks_fails_alone_and_injects_no_header(tmp_path, password_file, process):
    conn = open_store(tmp_path / "neo.db")
    incident, _ = add_incident(conn)
    for recipient, (name, address) in HOSTILE.items():
        add_notice(conn, tmp_path, incident_id=incident, step_id="notify-customers", recipient=recipient,
                   name=name, address=address)
    add_notice(conn, tmp_path, incident_id=incident, step_id="notify-customers", recipient="p:000004",
               name="Bob", address="bob@mail.example")
    with SmtpServer(tmp_path) as server:
        settings = email_settings(server, password_file)
        settings = dataclasses.replace(settings, channels=ChannelSettings(
            email=dataclasses.replace(settings.channels.email, process=process)))
        report = deliverer(settings, tmp_path).run(conn)
        received = list(server.received)
    # the good customer's notice is not held hostage by the others in its batch
    assert [r.recipients for r in received] == [["bob@mail.example"]]
    assert report.delivered == 1 and report.failed == 3
    assert outbox_states(conn) == {"delivered": 1, "failed": 3}
    for (error,) in conn.execute("SELECT last_error FROM outbox WHERE state = 'failed'"):
        assert "control characters" in error and "@" not in error and "Eve" not in error
    assert all("evil" not in r.data.decode("utf-8", "replace") for r in received)

