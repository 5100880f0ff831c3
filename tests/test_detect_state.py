"""Detector state: store-backed, committed with the batch, keyed by rule and content,
capped; proved with a small counting kind (tests/counting_kind.py)."""

from __future__ import annotations

import collections
import datetime as dt
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from auditd.config.located import Problems
from auditd.detect import KindContext, load_rules
from auditd.detect.state import StateStore, rule_counters, rule_state_hash
from auditd.event import AccessEvent
from auditd.store.migrations import migrate

from behaviour_helpers import daemon_config
from counting_kind import WITH_COUNT, CountParams

TESTS = Path(__file__).resolve().parent
T0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=dt.timezone.utc)

COUNT_RULE = """- rule: count_reads
  desc: counts every read per actor, alerting at every {every}th
  kind: test_count
  params: {{every: {every}{extra}}}
  condition: event.action = read
  severity: low
  tags: [sandbox]
  samples:
    match: [{{'@timestamp': '2026-11-02T10:00:00+08:00', event.action: read}}]
"""
OTHER_RULE = """- rule: other
  desc: an unrelated rule
  condition: event.action = export and neo.data.record_count > {n}
  severity: low
  tags: [sandbox]
  samples:
    match: [{{'@timestamp': '2026-11-02T10:00:00+08:00', event.action: export, neo.data.record_count: 100000}}]
"""


def memory_conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    return conn


def events(actors: list[str]) -> list[AccessEvent]:
    return [AccessEvent(timestamp=T0 + dt.timedelta(seconds=i), action="read", user_id=a, event_id=f"e{i}")
            for i, a in enumerate(actors)]


def ruleset(tmp_path: Path, state: StateStore, *, every: int = 3, extra: str = "", other: int = 10):
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "count.yaml").write_text(COUNT_RULE.format(every=every, extra=extra))
    (tmp_path / "rules" / "other.yaml").write_text(OTHER_RULE.format(n=other))
    problems = Problems()
    rules = load_rules([tmp_path / "rules"], problems, context=KindContext(state=state), kinds=WITH_COUNT)
    problems.raise_if_any()
    return rules


def commit(conn: sqlite3.Connection, state: StateStore) -> None:
    conn.execute("BEGIN IMMEDIATE")
    state.flush(conn)
    conn.execute("COMMIT")


def stored_counts(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT key, value FROM detector_state WHERE rule_id = 'count_reads'")
    return {key: msgspec.msgpack.decode(value) for key, value in rows}


def test_state_is_written_only_at_flush_and_a_failed_batch_is_forgotten(tmp_path):
    conn, state = memory_conn(), StateStore()
    state.bind(conn)
    rules = ruleset(tmp_path, state)
    alerts = rules.evaluate_all(events(["E1", "E1", "E2"]))
    assert stored_counts(conn) == {}  # nothing until the batch's transaction
    commit(conn, state)
    assert stored_counts(conn) == {"E1": 2, "E2": 1} and alerts == []
    rules.evaluate_all(events(["E1", "E1"]))  # a batch whose transaction then fails
    state.discard()
    alerts = rules.evaluate_all(events(["E1"]))  # the batch again, after the rollback
    commit(conn, state)
    assert stored_counts(conn) == {"E1": 3, "E2": 1}
    assert [a.reason for a in alerts] == ["event 3 of E1"]


def test_a_reload_that_changes_another_rule_keeps_this_rules_state(tmp_path):
    conn, state = memory_conn(), StateStore()
    state.bind(conn)
    first = ruleset(tmp_path, state)
    first.evaluate_all(events(["E1", "E1"]))
    commit(conn, state)
    reloaded_state = StateStore()  # a reload builds a new runtime, bound to the same store
    reloaded_state.bind(conn)
    second = ruleset(tmp_path, reloaded_state, other=99)  # only the unrelated rule changed
    alerts = second.evaluate_all(events(["E1"]))
    assert [a.reason for a in alerts] == ["event 3 of E1"]
    changed_state = StateStore()
    changed_state.bind(conn)
    third = ruleset(tmp_path, changed_state, every=2)  # this rule changed: it starts afresh
    assert [a.reason for a in third.evaluate_all(events(["E1", "E1"]))] == ["event 2 of E1"]


def test_the_hash_follows_what_decides_the_state_and_ignores_the_cap():
    a = rule_state_hash("test_count", ("cond",), CountParams(every=3, max_keys=10))
    assert a == rule_state_hash("test_count", ("cond",), CountParams(every=3, max_keys=99))
    assert a != rule_state_hash("test_count", ("cond",), CountParams(every=4))
    assert a != rule_state_hash("test_count", ("other",), CountParams(every=3))


def test_keys_over_the_cap_are_evicted_oldest_first_and_counted(tmp_path):
    conn, state = memory_conn(), StateStore()
    state.bind(conn)
    rules = ruleset(tmp_path, state, extra=", max_keys: 3")
    for actor in ["E1", "E2", "E3", "E4", "E5"]:  # one batch each: E1 is the oldest
        rules.evaluate_all(events([actor]))
        commit(conn, state)
    rules.evaluate_all(events(["E3"]))
    commit(conn, state)
    assert sorted(stored_counts(conn)) == ["E3", "E4", "E5"]
    (rule_id, _, keys, evicted, bad), = rule_counters(conn)
    assert (rule_id, keys, evicted, bad) == ("count_reads", 3, 2, 0)


def test_an_unreadable_row_rebuilds_that_key_only_and_is_reported(tmp_path, caplog):
    conn, state = memory_conn(), StateStore()
    state.bind(conn)
    rules = ruleset(tmp_path, state)
    rules.evaluate_all(events(["E1", "E2", "E2"]))
    commit(conn, state)
    conn.execute("UPDATE detector_state SET value = ? WHERE key = 'E1'", (b"\xc1garbage",))
    conn.execute("UPDATE detector_state SET value = ? WHERE key = 'E2'", (msgspec.msgpack.encode("two"),))
    fresh = StateStore()
    fresh.bind(conn)
    rules = ruleset(tmp_path, fresh)
    rules.evaluate_all(events(["E1", "E2"]))
    commit(conn, fresh)
    assert stored_counts(conn) == {"E1": 1, "E2": 1}
    assert "unreadable detector state" in caplog.text
    assert rule_counters(conn)[0][4] == 2


def test_flush_refuses_to_write_outside_a_transaction(tmp_path):
    conn, state = memory_conn(), StateStore()
    state.bind(conn)
    ruleset(tmp_path, state).evaluate_all(events(["E1"]))
    with pytest.raises(RuntimeError, match="inside the batch"):
        state.flush(conn)


# -- the real daemon, killed -------------------------------------------------------------

def _line(n: int, actor: str) -> str:
    return json.dumps({
        "ts": f"2026-11-02T10:{n // 3600 % 60:02d}:{n // 60 % 60:02d}.{n % 1000:03d}+08:00", "app": "crm",
        "host": "h1", "req": f"r-{n:08d}", "emp": {"id": actor, "name": "x"}, "ip": "10.20.1.5",
        "op": "order.view", "res": {"type": "order", "id": f"O{n:09d}", "store": "S011"},
        "subjects": [f"C{n:08d}"], "count": 1, "fields": ["items"], "masked": True, "result": "ok",
    }) + "\n"


def _setup(tmp_path: Path, every: int) -> Path:
    return daemon_config(tmp_path, {"count.yaml": COUNT_RULE.format(every=every, extra=""),
                                    "other.yaml": OTHER_RULE.format(n=10)})


def _start(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TESTS / "counting_kind.py"), str(config)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _query(tmp_path: Path, sql: str):
    db = tmp_path / "state" / "neo-auditd.db"
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []


def _committed(tmp_path: Path) -> int:
    rows = _query(tmp_path, "SELECT COALESCE(SUM(count), 0) FROM event_segments")
    return rows[0][0] if rows else 0


def _wait(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_kill_9_between_and_inside_batches_leaves_exact_counts_and_no_alert_twice(tmp_path):
    every = 10
    config = _setup(tmp_path, every)
    rng = random.Random(7)
    actors = [f"E{10000 + i}" for i in range(7)]
    planned = [rng.choice(actors) for _ in range(6000)]
    access = tmp_path / "logs" / "access.log"
    access.write_text("".join(_line(n, a) for n, a in enumerate(planned[:3000])))
    daemon_log = tmp_path / "daemon.log"
    kills = 0
    proc = _start(config, daemon_log)
    try:
        for round_ in range(6):
            if round_ == 3:  # more lines while it runs and is killed
                with access.open("a") as fh:
                    fh.writelines(_line(n, a) for n, a in enumerate(planned[3000:], start=3000))
            before = _committed(tmp_path)
            _wait(lambda: _committed(tmp_path) > before, "progress before the kill")
            time.sleep(rng.uniform(0.0, 0.05))  # sometimes between batches, mostly inside one
            proc.kill()
            proc.wait(timeout=30)
            kills += 1
            proc = _start(config, daemon_log)
        _wait(lambda: _committed(tmp_path) == len(planned), "every line committed")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert kills == 6
    expected = collections.Counter(planned)
    counts = {key: msgspec.msgpack.decode(value)
              for key, value in _query(tmp_path, "SELECT key, value FROM detector_state")}
    assert counts == dict(expected)
    alerts = _query(tmp_path, "SELECT alert_id FROM alerts WHERE rule_id = 'count_reads'")
    assert len(alerts) == sum(n // every for n in expected.values())
    assert _committed(tmp_path) == len(planned)  # and no event twice


@pytest.mark.slow
def test_sighup_with_an_unrelated_rule_changed_keeps_the_count(tmp_path):
    config = _setup(tmp_path, every=1000)
    access = tmp_path / "logs" / "access.log"
    access.write_text("".join(_line(n, "E1") for n in range(100)))
    proc = _start(config, tmp_path / "daemon.log")
    try:
        _wait(lambda: _committed(tmp_path) == 100, "the first 100 events")
        (tmp_path / "rules.d" / "other.yaml").write_text(OTHER_RULE.format(n=77))
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: "reloaded" in (tmp_path / "daemon.log").read_text(), "the reload")
        with access.open("a") as fh:
            fh.writelines(_line(n, "E1") for n in range(100, 150))
        _wait(lambda: _committed(tmp_path) == 150, "the next 50 events")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    counts = {key: msgspec.msgpack.decode(value)
              for key, value in _query(tmp_path, "SELECT key, value FROM detector_state")}
    assert counts == {"E1": 150}


def test_evictions_show_in_status_and_metrics(tmp_path):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from auditd.ops.metrics import Metrics
    from auditd.ops.status import collect_status
    from auditd.ops.status_text import render_status
    from auditd.store.sqlite import Store

    store = Store(tmp_path / "neo.db").open()
    state = StateStore()
    state.bind(store.conn)
    rules = ruleset(tmp_path, state, extra=", max_keys: 2")
    for actor in ["E1", "E2", "E3", "E4"]:
        rules.evaluate_all(events([actor]))
        with store.transaction() as conn:
            state.flush(conn)
    status = collect_status(store.path, None, dt.datetime.now(dt.timezone.utc))
    (row,) = status.rule_state
    assert (row.rule_id, row.keys, row.evicted) == ("count_reads", 2, 2)
    assert "count_reads" in render_status(status) and "raise the rule's max_keys" in render_status(status)
    metrics = Metrics(store.path)
    port = metrics.start_http("127.0.0.1", 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        metrics.stop()
        store.close()
    samples = {(s.name, s.labels.get("rule")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("neo_auditd_rule_state_evicted_total", "count_reads")] == 2
    assert samples[("neo_auditd_rule_state_keys", "count_reads")] == 2


def test_a_rule_with_a_set_in_its_condition_keeps_its_state_hash_across_processes() -> None:
    """The repr of a frozenset follows the hash seed: the state of `in (a, b)` rules was
    dropped at every restart and differed between the daemons of a fleet."""
    import os
    import subprocess
    import sys

    code = ("from auditd.detect.state import rule_state_hash\nfrom auditd.detect.resolve import FieldTest\n"
            "print(rule_state_hash('threshold', FieldTest('event.action', 'action', 'str', 'in', "
            "frozenset({'read', 'export', 'search', 'list'})), None))")
    hashes = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert len(hashes) == 1
