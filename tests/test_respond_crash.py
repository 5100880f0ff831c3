"""kill -9 in the middle of a playbook, then a restart: no step fires twice, and a step
that fell due while the daemon was down fires once, marked late."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from respond_helpers import UTC, Clock, World, alert

T0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
TESTS = Path(__file__).resolve().parent

RUN_DUE = textwrap.dedent("""
    import datetime as dt, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from respond_helpers import Clock, World
    from auditd.respond.settings import ContainAction
    world = World(Path({tmp!r}), Clock(dt.datetime.fromisoformat({now!r})))
    world.rebuild(contain={{"disable-account": ContainAction(command=[sys.executable, {action!r}], timeout_s=600)}})
    world.run()
""")

# the containment action: says it started, then takes its time (the daemon is killed meanwhile)
ACTION = textwrap.dedent("""
    import time
    with open({marker!r}, "a") as f:
        f.write("started\\n")
    time.sleep(120)
""")


def _run_due(tmp_path: Path, now: dt.datetime, action: Path) -> subprocess.Popen:
    code = RUN_DUE.format(tests=str(TESTS), tmp=str(tmp_path), now=now.isoformat(), action=str(action))
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_kill_9_mid_playbook_then_restart(tmp_path):
    marker = tmp_path / "action-started"
    action = tmp_path / "action.py"
    action.write_text(ACTION.format(marker=str(marker)))
    world = World(tmp_path, Clock(T0))
    (change,) = world.apply([alert(1, T0)])
    incident = change.incident_id

    daemon = _run_due(tmp_path, T0, action)
    deadline = time.monotonic() + 120
    while not marker.exists():  # the playbook is planned and the contain action is running
        assert daemon.poll() is None, "the job ended before its action started"
        assert time.monotonic() < deadline, "the contain action never started"
        time.sleep(0.05)
    os.killpg(daemon.pid, signal.SIGKILL)  # the daemon and its action, as systemd would on a crash
    daemon.wait()

    contain = world.step(incident, "contain-account")
    assert contain.state == "running"  # claimed before it ran: the claim survived the kill
    assert world.step(incident, "notify-security").state == "pending"  # due in 15 min, not fired yet

    # two hours later the daemon starts again: what fell due while it was down fires now
    later = T0 + dt.timedelta(hours=2)
    world.clock.now = later
    restarted = _run_due(tmp_path, later, action)
    assert restarted.wait(timeout=120) == 0
    notify = world.step(incident, "notify-security")
    assert notify.state == "done" and notify.late is True and notify.fired_at == later
    contain = world.step(incident, "contain-account")
    assert contain.state == "failed" and "interrupted" in contain.reason  # outcome unknown: a person decides
    assert marker.read_text().count("started") == 1  # never run a second time by itself

    # and once more: nothing fires twice
    again = _run_due(tmp_path, later + dt.timedelta(minutes=1), action)
    assert again.wait(timeout=120) == 0
    notices = world.conn.execute("SELECT COUNT(*) FROM notices WHERE incident_id = ? AND step_id = 'notify-security'",
                                 (incident,)).fetchone()[0]
    assert notices == 1
    assert marker.read_text().count("started") == 1
    fired = world.conn.execute(
        "SELECT COUNT(*) FROM incident_timeline WHERE incident_id = ? AND kind = 'step'"
        " AND data LIKE '%\"step\":\"notify-security\"%' AND data LIKE '%\"event\":\"fired\"%'",
        (incident,)).fetchone()[0]
    assert fired == 1
