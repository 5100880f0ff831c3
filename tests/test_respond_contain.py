"""Contain actions: values from log lines reach the command as data, never as code; a
command that hangs is killed at its timeout, and the step fails and escalates; a webhook
gets the same JSON (a real HTTP server on loopback)."""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from auditd.correlate import get_incident
from auditd.respond.contain import run_command
from auditd.respond.settings import ContainAction, Webhook

from respond_helpers import UTC, Clock, World, alert

T0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
HOSTILE = ["E1; rm -rf {canary}", "$(touch {canary}.pwned)", "`touch {canary}.pwned2`", "E1\nNEO_TIER=T1",
           "E1' && touch '{canary}.pwned3"]

RECORDER = """
import json, os, sys
out = {"argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items() if k.startswith("NEO_")},
       "stdin": json.loads(sys.stdin.read())}
with open(sys.argv[1], "a", encoding="utf-8") as f:
    f.write(json.dumps(out) + "\\n")
"""


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_user_id_reaches_the_command_as_data(tmp_path, hostile):
    canary = tmp_path / "canary"
    canary.write_text("still here")
    actor = hostile.format(canary=canary)
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    record = tmp_path / "record.jsonl"
    world = World(tmp_path, Clock(T0))
    world.rebuild(contain={"disable-account": ContainAction(command=[sys.executable, str(script), str(record)],
                                                            timeout_s=20)})
    (change,) = world.apply([alert(1, T0, actor=actor)])
    world.run()
    assert world.step(change.incident_id, "contain-account").state == "done"
    (seen,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert seen["argv"] == [str(record)]  # the configured argv, nothing spliced in
    assert seen["env"]["NEO_ACTOR"] == actor and seen["stdin"]["actor"] == actor
    assert seen["env"]["NEO_TIER"] == "T5"  # a newline in the value did not set another variable
    assert canary.read_text() == "still here"
    assert not list(tmp_path.glob("canary.pwned*"))
    entries = [e for e in get_incident(world.conn, change.incident_id).timeline
               if e.kind == "step" and e.data.get("step") == "contain-account"]
    assert entries[-1].data["event"] == "done" and entries[-1].data["exit_status"] == 0


def test_a_command_that_hangs_is_killed_at_its_timeout_and_the_step_fails_and_escalates(tmp_path):
    marker = tmp_path / "child-alive"
    # the command starts a child that would outlive it, then hangs; the whole group dies
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w').write('x')"
    script = tmp_path / "hang.py"
    script.write_text(f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {child!r}])\n"
                      "time.sleep(60)\n")
    world = World(tmp_path, Clock(T0))
    world.rebuild(contain={"disable-account": ContainAction(command=[sys.executable, str(script)], timeout_s=1.0)})
    (change,) = world.apply([alert(1, T0)])
    result = world.run()
    step = world.step(change.incident_id, "contain-account")
    assert step.state == "failed" and step.open, step.result
    assert step.result.get("timed_out") is True, step.result
    assert step.result["timed_out"] is True and "timed out" in step.reason
    assert f"{change.incident_id}/contain-account" in result.failed
    assert step.escalations == 1  # at once, not only when it falls overdue
    (audience,) = world.conn.execute("SELECT audience FROM notices WHERE step_id = 'contain-account.escalation'"
                                     ).fetchone()
    assert audience == "security"  # the step's own first rung (escalate_to)
    import time

    time.sleep(4)
    assert not marker.exists(), "the hanging command's child survived the kill"


def test_a_failing_command_records_its_exit_status(tmp_path):
    result = run_command([sys.executable, "-c", "import sys; sys.exit(3)"], {"incident_id": "X"}, 20)
    assert not result.ok and result.detail["exit_status"] == 3


def test_a_missing_program_is_a_failure_not_a_crash(tmp_path):
    result = run_command([str(tmp_path / "nope")], {"incident_id": "X"}, 5)
    assert not result.ok and "cannot start" in result.detail["error"]


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_webhook_gets_the_incident_as_json(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        world = World(tmp_path, Clock(T0))
        url = f"http://127.0.0.1:{server.server_port}/revoke"
        world.rebuild(contain={"disable-account": ContainAction(webhook=Webhook(url), timeout_s=5)})
        (change,) = world.apply([alert(1, T0, actor="$(reboot)")])
        world.run()
    finally:
        server.shutdown()
    assert _Hook.received[-1]["actor"] == "$(reboot)"
    assert _Hook.received[-1]["incident_id"] == change.incident_id
    assert world.step(change.incident_id, "contain-account").result == {"http_status": 204}


def test_an_unconfigured_action_waits_for_a_person(tmp_path):
    from auditd.respond import people

    world = World(tmp_path, Clock(T0))
    (change,) = world.apply([alert(1, T0)])
    world.run()
    assert world.step(change.incident_id, "contain-account").state == "pending"
    people.done(world.conn, world.correlator, change.incident_id, "contain-account", "alice", T0,
                note="disabled in the IAM console")
    assert world.step(change.incident_id, "contain-account").closed_by == "alice"
