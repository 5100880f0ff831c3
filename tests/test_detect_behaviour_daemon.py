"""The behaviour kinds in the real daemon: killed with SIGKILL inside and between
batches, and reloaded with SIGHUP while another rule changes, it raises each windowed
alert exactly once and keeps what it learned."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from behaviour_helpers import daemon_config
from test_detect_state import _committed, _line, _query, _wait

pytestmark = pytest.mark.slow

THRESHOLD = """- rule: reads_in_a_minute
  desc: five reads by one actor within a minute
  kind: threshold
  params: {gte: 5, timespan: 1m, realert: 1s}
  condition: event.action = read and user.id exists
  severity: low
  tags: [sandbox]
  samples:
    match: [{sequence: [{repeat: 5, every: 1s, event: {user.id: E1, event.action: read}}]}]
"""
FIRST_SEEN = """- rule: new_actor_address
  desc: an address new for the actor after 1 s of learning
  kind: first_seen
  params: {field: source.ip, learning: 1s}
  condition: event.action = read
  severity: low
  tags: [sandbox]
  samples:
    match: [{sequence: [{user.id: E1, event.action: read, source.ip: 10.0.0.1},
                        {user.id: E1, event.action: read, source.ip: 10.0.0.2}]}]
"""
OTHER = """- rule: other
  desc: unrelated
  condition: event.action = delete and neo.data.record_count > {n}
  severity: low
  tags: [sandbox]
  samples:
    match: [{{event.action: delete, neo.data.record_count: 100000}}]
"""


def _setup(tmp_path: Path) -> Path:
    return daemon_config(tmp_path, {"threshold.yaml": THRESHOLD, "first_seen.yaml": FIRST_SEEN,
                                    "other.yaml": OTHER.format(n=10)})


def _start(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(config)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def uninterrupted_alert_ids(tmp_path: Path, config: Path, log: Path) -> set[str]:
    """The alerts one uninterrupted replay of the same log raises (its own store)."""
    import sqlite3

    proc = subprocess.run([sys.executable, "-m", "auditd.cli", "replay", "-c", str(config), "--state-dir",
                           str(tmp_path / "control"), str(log)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with sqlite3.connect(tmp_path / "control" / "neo-auditd.db") as conn:
        return {r[0] for r in conn.execute("SELECT alert_id FROM alerts WHERE rule_id = 'reads_in_a_minute'")}


def test_kill_9_in_the_middle_of_windows_raises_each_alert_once(tmp_path):
    config = _setup(tmp_path)
    rng = random.Random(5)
    actors = [f"E{10000 + i}" for i in range(5)]
    planned = [rng.choice(actors) for _ in range(2400)]
    access = tmp_path / "logs" / "access.log"
    access.write_text("".join(_line(n, a) for n, a in enumerate(planned[:1200])))
    written = 1200
    daemon_log = tmp_path / "daemon.log"
    proc = _start(config, daemon_log)
    try:
        for round_ in range(4):
            if round_ == 2:  # more lines while it runs and is killed
                with access.open("a") as fh:
                    fh.writelines(_line(n, a) for n, a in enumerate(planned[1200:], start=1200))
                written = len(planned)
            before = _committed(tmp_path)
            _wait(lambda: _committed(tmp_path) > before or _committed(tmp_path) == written, "progress before the kill")
            time.sleep(rng.uniform(0.0, 0.05))  # sometimes between batches, mostly inside one
            proc.kill()
            proc.wait(timeout=30)
            proc = _start(config, daemon_log)
        _wait(lambda: _committed(tmp_path) == len(planned), "every line committed")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    ids = [r[0] for r in _query(tmp_path, "SELECT alert_id FROM alerts WHERE rule_id = 'reads_in_a_minute'")]
    control = uninterrupted_alert_ids(tmp_path, config, access)
    assert len(control) > 100  # the windows did fill, many times
    assert len(ids) == len(set(ids)) and set(ids) == control  # each alert once, none lost, none extra


def test_sighup_changing_another_rule_keeps_the_learned_values(tmp_path):
    config = _setup(tmp_path)
    access = tmp_path / "logs" / "access.log"
    access.write_text("".join(_line(n, "E1") for n in range(50)))  # all from 10.20.1.5
    proc = _start(config, tmp_path / "daemon.log")
    try:
        _wait(lambda: _committed(tmp_path) == 50, "the first 50 events")
        (tmp_path / "rules.d" / "other.yaml").write_text(OTHER.format(n=77))
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: "reloaded" in (tmp_path / "daemon.log").read_text(), "the reload")
        with access.open("a") as fh:
            fh.writelines(_line(n, "E1") for n in range(50, 60))  # the same address: known
        _wait(lambda: _committed(tmp_path) == 60, "the next events")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert _query(tmp_path, "SELECT alert_id FROM alerts WHERE rule_id = 'new_actor_address'") == []
    rows = _query(tmp_path, "SELECT COUNT(DISTINCT rule_hash) FROM detector_state WHERE rule_id = 'new_actor_address'")
    assert rows == [(1,)]  # one version of the rule's state: kept, not started afresh
