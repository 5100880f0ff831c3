"""threshold and sequence: window edges, distinct values, realert, restarts and reloads,
with the events' own times as the clock."""

from __future__ import annotations

import pytest

from auditd.config.located import Problems
from auditd.detect import load_rules

from behaviour_helpers import commit, ev, memory_conn, minutes, rules_from, run

THRESHOLD = """- rule: three_exports
  desc: three exports by one actor within ten minutes
  kind: threshold
  params: {{gte: 3, timespan: 10m{extra}}}
  condition: event.action = export
  severity: high
  tags: [sandbox]
  samples:
    match:
      - sequence: [{{repeat: 3, event: {{user.id: E1, event.action: export}}}}]
"""
DISTINCT = """- rule: many_customers
  desc: four distinct customers within five minutes
  kind: threshold
  params: {gte: 4, timespan: 5m, distinct: neo.data.subject_ids}
  condition: event.action = read
  severity: medium
  tags: [sandbox]
  samples:
    match:
      - sequence: [{repeat: 4, event: {user.id: E1, event.action: read, neo.data.subject_ids: ["p{n}"]}}]
"""
SEQUENCE = """- rule: search_then_export
  desc: two searches then an export within thirty minutes
  kind: sequence
  params:
    timespan: 30m
    ordered: {ordered}
    steps:
      - {{name: searches, where: {{event.action: search}}, count: 2}}
      - {{name: export, where: {{event.action: export}}}}
  condition: event.action in (search, export)
  severity: medium
  tags: [sandbox]
  samples:
    match:
      - sequence: [{{repeat: 2, event: {{user.id: E1, event.action: search}}}}, {{user.id: E1, event.action: export}}]
"""
OTHER = """- rule: other
  desc: unrelated
  condition: event.action = delete and neo.data.record_count > {n}
  severity: low
  tags: [sandbox]
  samples:
    match: [{{event.action: delete, neo.data.record_count: 100000}}]
"""


def exports(*offsets: float, user: str = "E1", prefix: str = "x") -> list:
    return [ev(minutes(m), f"{prefix}{i}", user=user, action="export") for i, m in enumerate(offsets)]


def test_threshold_counts_the_window_inclusive_of_its_edge(tmp_path):
    conn = memory_conn()
    rules, _ = rules_from(tmp_path, THRESHOLD.format(extra=""), conn)
    (alert,) = run(rules, exports(0, 5, 10))  # the third exactly ten minutes after the first
    assert alert.event_ids == ("x0", "x1", "x2")
    assert alert.reason == "3 events within 10m for user.id E1 (threshold 3)"
    conn2 = memory_conn()
    rules, _ = rules_from(tmp_path, THRESHOLD.format(extra=""), conn2)
    assert run(rules, exports(0, 5, 10.02)) == []  # a second later: the first left the window
    assert len(run(rules, exports(14, prefix="y"))) == 1  # 5, 10.02, 14: three within ten minutes


def test_threshold_counts_per_group_key(tmp_path):
    rules, _ = rules_from(tmp_path, THRESHOLD.format(extra=""), memory_conn())
    mixed = exports(0, 1, user="E1", prefix="a") + exports(2, 3, user="E2", prefix="b")
    assert run(rules, mixed) == []
    (alert,) = run(rules, exports(4, user="E2", prefix="c"))
    assert alert.actor == "E2" and alert.event_ids == ("b0", "b1", "c0")


def test_after_an_alert_the_key_is_quiet_for_the_realert_window(tmp_path):
    rules, _ = rules_from(tmp_path, THRESHOLD.format(extra=", realert: 1h"), memory_conn())
    assert len(run(rules, exports(0, 1, 2))) == 1
    assert run(rules, exports(3, 4, 5, 30, 31, 32, prefix="q")) == []  # within the hour: quiet
    assert len(run(rules, exports(61, 62, 63, prefix="r"))) == 1


def test_distinct_values_count_once_however_often_they_recur(tmp_path):
    rules, _ = rules_from(tmp_path, DISTINCT, memory_conn())
    same = [ev(minutes(i * 0.1), f"s{i}", subject_ids=("p1", "p2")) for i in range(10)]
    assert run(rules, same) == []
    (alert,) = run(rules, [ev(minutes(1), "t1", subject_ids=("p3",)), ev(minutes(1.5), "t2", subject_ids=("p4",))])
    assert "4 distinct neo.data.subject_ids within 5m" in alert.reason
    assert alert.event_ids[-2:] == ("t1", "t2") and "s9" in alert.event_ids


def test_distinct_values_leave_the_window(tmp_path):
    rules, _ = rules_from(tmp_path, DISTINCT, memory_conn())
    spread = [ev(minutes(2 * i), f"d{i}", subject_ids=(f"p{i}",)) for i in range(6)]  # one every 2 min
    assert run(rules, spread) == []  # never four within five minutes


def test_a_restart_in_the_middle_of_a_window_resumes_it_and_raises_the_same_alert_once(tmp_path):
    db = tmp_path / "state.db"
    import sqlite3

    from auditd.store.migrations import migrate

    def connect():
        conn = sqlite3.connect(db, isolation_level=None)
        migrate(conn)
        return conn

    # the run without a restart, for the alert id to expect
    straight, _ = rules_from(tmp_path, THRESHOLD.format(extra=""), memory_conn())
    (expected,) = run(straight, exports(0, 1, 2))

    conn = connect()
    rules, state = rules_from(tmp_path, THRESHOLD.format(extra=""), conn)
    assert run(rules, exports(0, 1)) == []
    commit(conn, state)
    (lost,) = run(rules, [ev(minutes(2), "x2", action="export")])
    assert lost.alert_id == expected.alert_id
    state.discard()  # that batch's transaction failed (kill -9 before its commit): the alert with it
    conn.close()

    conn = connect()  # the daemon again: new rule set, state from the store
    rules, state = rules_from(tmp_path, THRESHOLD.format(extra=""), conn)
    (again,) = run(rules, [ev(minutes(2), "x2", action="export")])  # the batch read again
    commit(conn, state)
    assert again.alert_id == expected.alert_id and again.event_ids == expected.event_ids
    assert run(rules, [ev(minutes(3), "x3", action="export")]) == []  # the window was emptied


def test_a_reload_that_changes_another_rule_keeps_the_window(tmp_path):
    conn = memory_conn()
    rules, state = rules_from(tmp_path, THRESHOLD.format(extra=""), conn, extra={"other.yaml": OTHER.format(n=5)})
    run(rules, exports(0, 1))
    commit(conn, state)
    reloaded, state = rules_from(tmp_path, THRESHOLD.format(extra=""), conn, extra={"other.yaml": OTHER.format(n=9)})
    assert len(run(reloaded, exports(2, prefix="z"))) == 1  # two remembered + this one
    changed, _ = rules_from(tmp_path, THRESHOLD.format(extra=", group_by: [source.ip]"), conn)
    assert run(changed, exports(3, prefix="w")) == []  # this rule changed: it starts afresh


def test_sequence_needs_its_steps_in_order_within_the_timespan(tmp_path):
    rules, _ = rules_from(tmp_path, SEQUENCE.format(ordered="true"), memory_conn())
    searches = [ev(minutes(0), "s0", action="search"), ev(minutes(1), "s1", action="search")]
    (alert,) = run(rules, searches + [ev(minutes(29), "e0", action="export")])
    assert alert.event_ids == ("s0", "s1", "e0")
    assert alert.reason == "2× searches then export within 30m for user.id E1"
    rules, _ = rules_from(tmp_path, SEQUENCE.format(ordered="true"), memory_conn())
    assert run(rules, [ev(minutes(0), "e0", action="export")] + [  # the export came first
        ev(minutes(1), "s0", action="search"), ev(minutes(2), "s1", action="search")]) == []
    rules, _ = rules_from(tmp_path, SEQUENCE.format(ordered="true"), memory_conn())
    assert run(rules, searches + [ev(minutes(30.5), "e0", action="export")]) == []  # the first search too early


def test_unordered_sequence_takes_any_order(tmp_path):
    rules, _ = rules_from(tmp_path, SEQUENCE.format(ordered="false"), memory_conn())
    alerts = run(rules, [ev(minutes(0), "e0", action="export"), ev(minutes(1), "s0", action="search"),
                         ev(minutes(2), "s1", action="search")])
    assert [sorted(a.event_ids) for a in alerts] == [["e0", "s0", "s1"]]


@pytest.mark.parametrize("params, message", [
    ("{gte: 1, timespan: 10m}", "params.gte: must be at least 2"),
    # a window keeps up to gte entries per key: 100,000,000 let one flooded key grow without bound
    ("{gte: 100000000, timespan: 10m}", "params.gte: must be at most 10,000"),
    ("{gte: 3}", "params.timespan: missing required key 'timespan'"),
    ("{gte: 3, timespan: 10m, distinct: neo.data.subjects}", "params.distinct: unknown field 'neo.data.subjects'"),
    ("{gte: 3, timespan: 10m, group_by: [user.idd]}", "params.group_by[0]: unknown field 'user.idd'"),
    ("{gte: 3, timespan: soon}", "params.timespan: expected a duration"),
])
def test_bad_params_are_located_errors(tmp_path, params, message):
    folder = tmp_path / "rules"
    folder.mkdir()
    text = THRESHOLD.replace("{{gte: 3, timespan: 10m{extra}}}", params).replace("{{", "{").replace("}}", "}")
    (folder / "r.yaml").write_text(text)
    problems = Problems()
    load_rules([folder], problems)
    assert problems, "expected a problem"
    shown = [str(p) for p in problems.items]
    assert any(message in s and "r.yaml:4:" in s for s in shown), shown


def test_bad_sequence_steps_are_located_errors(tmp_path):
    folder = tmp_path / "rules"
    folder.mkdir()
    bad = SEQUENCE.format(ordered="true").replace("{name: export, where: {event.action: export}}",
                                                  "{name: searches, where: {event.acton: export}}")
    (folder / "r.yaml").write_text(bad)
    problems = Problems()
    load_rules([folder], problems)
    shown = " | ".join(str(p) for p in problems.items)
    assert "params.steps[1].where: unknown field 'event.acton'" in shown
    twice = SEQUENCE.format(ordered="true").replace("{name: export,", "{name: searches,")
    (folder / "r.yaml").write_text(twice)
    problems = Problems()
    load_rules([folder], problems)
    assert any("params.steps: step name 'searches' is used twice" in str(p) or
               "params.steps[1].name: step name 'searches' is used twice" in str(p) for p in problems.items), \
        [str(p) for p in problems.items]


def test_sample_sequences_run_on_fresh_state(tmp_path):
    from auditd.detect.testing import run_samples

    rules, _ = rules_from(tmp_path, THRESHOLD.format(extra="") + DISTINCT, memory_conn())
    run(rules, exports(0, 1))  # state the daemon built: samples must not see it
    results = run_samples(rules)
    assert [r.ok for r in results] == [True, True], results


def test_an_alert_stamped_far_in_the_future_does_not_silence_the_key(tmp_path):
    # hostile log lines stamped 2099 made the key alert "in 2099": its quiet time
    # (realert) then ran until 2099, and no real burst of the key alerted again
    import datetime as dt

    future = dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc)
    BURST = ["search", "search", "export", "export", "export", "read", "read", "read", "read"]
    for text in (THRESHOLD.format(extra=""), DISTINCT, SEQUENCE.format(ordered="true")):
        rules, _ = rules_from(tmp_path, text, memory_conn())
        forged = [ev(future + minutes(i), f"f{i}", action=a, subject_ids=(f"x{i}",))
                  for i, a in enumerate(BURST)]
        assert run(rules, forged)  # the forged burst alerts, at its own time
        real = [ev(minutes(i), f"r{i}", action=a, subject_ids=(f"p{i}",))
                for i, a in enumerate(BURST)]
        assert run(rules, real), text.splitlines()[0]  # the real burst still alerts
