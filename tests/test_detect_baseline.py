"""baseline: the learning period, the alert that explains itself in numbers, peers,
hour-of-week, restarts, and a damaged row that costs only its own key."""

from __future__ import annotations

import datetime as dt
import math

import msgspec

from auditd.detect.baseline_kind import Profile, decode, encode
from auditd.detect.state import rule_counters

from behaviour_helpers import T0, commit, ev, memory_conn, rules_from, run

BASELINE = """- rule: records_above_usual
  desc: records in an hour far above the actor's usual
  kind: baseline
  params: {{measure: records, min_days: {min_days}, floor: {floor}{extra}}}
  condition: event.action in (read, export)
  severity: high
  tags: [sandbox]
  samples:
    match:
      - sequence:
          - {{repeat: 8, every: 1d, event: {{user.id: E1, event.action: read, neo.data.record_count: 5}}}}
          - {{user.id: E1, event.action: export, neo.data.record_count: 900}}
"""


def day(n: int, hour: int = 10, minute: int = 0) -> dt.datetime:
    return T0.replace(hour=hour, minute=minute) + dt.timedelta(days=n)


def workday_history(days: int, *, user: str = "E1", roles: tuple[str, ...] = (), per_hour: int = 3,
                    records: int = 5, first: int = 0) -> list:
    """`days` days of work, 09:00-17:00, `per_hour` reads of `records` records an hour."""
    out = []
    for d in range(first, first + days):
        for h in range(9, 17):
            for k in range(per_hour):
                out.append(ev(day(d, h, 5 + 15 * k), f"{user}-h{d}-{h}-{k}", user=user, user_roles=roles,
                              record_count=records))
    return out


def test_the_log_code_is_compact_and_close():
    for x in (0, 1, 2.5, 35, 412, 90_000, 4e9):
        assert abs(decode(encode(x)) - x) <= max(0.001, x * 0.0004)
    assert encode(0) == 0 and encode(1e12) == 65535


def test_no_alert_while_learning_then_an_alert_in_numbers(tmp_path):
    rules, _ = rules_from(tmp_path, BASELINE.format(min_days=5, floor=50, extra=""), memory_conn())
    early = workday_history(3) + [ev(day(3, 11, 10), "spike-early", action="export", record_count=900)]
    assert run(rules, early) == []  # three days of history: still learning
    rules, _ = rules_from(tmp_path, BASELINE.format(min_days=5, floor=50, extra=""), memory_conn())
    assert run(rules, workday_history(7)) == []  # a week of the usual raises nothing
    (alert,) = run(rules, [ev(day(7, 11, 10), "r1", record_count=15), ev(day(7, 11, 20), "spike",
                                                                           action="export", record_count=400)])
    assert alert.reason.startswith("415 records this hour (Mon 11:00); E1's usual around 11:00 ≤ ")
    usual = float(alert.reason.split("≤ ")[1].split(" ")[0])
    assert 15 <= usual <= 50  # 15 records an hour, give or take its noise
    assert "(7 active days of history)" in alert.reason
    assert alert.event_ids == ("r1", "spike")  # the hour's first event and the one that crossed


def test_one_alert_per_bucket_and_late_events_are_history(tmp_path):
    rules, _ = rules_from(tmp_path, BASELINE.format(min_days=2, floor=50, extra=""), memory_conn())
    run(rules, workday_history(3))
    spikes = [ev(day(3, 12, m), f"s{m}", record_count=200) for m in range(0, 50, 10)]
    assert len(run(rules, spikes)) == 1
    assert run(rules, [ev(day(3, 11, 59), "late", record_count=5000)]) == []  # an earlier hour: closed


def test_a_day_without_activity_is_not_a_day_of_zeros(tmp_path):
    """A week's leave must not teach the profile that the actor never works."""
    text = BASELINE.format(min_days=5, floor=1, extra="")  # no floor: the profile alone decides
    rules, _ = rules_from(tmp_path, text, memory_conn())
    run(rules, workday_history(7))
    back = workday_history(1, first=20)  # back after two weeks away, working as before
    assert run(rules, back) == []
    (alert,) = run(rules, [ev(day(21, 10, 5), "more", record_count=50)])  # the bound is still the usual's
    assert "E1's usual around 10:00 ≤ 45 " in alert.reason


def test_peers_in_the_role_raise_the_bound(tmp_path):
    """A clerk whose own history is quiet, in a role whose members pull 60 records an
    hour: 55 is unusual for her but not for the role, so no alert; 400 is both."""
    text = BASELINE.format(min_days=5, floor=50, extra="")
    rules, _ = rules_from(tmp_path, text, memory_conn())
    crowd = []
    for i in range(25):
        crowd += workday_history(6, user=f"P{i}", roles=("store_clerk",), per_hour=3, records=20)
    crowd.sort(key=lambda e: e.timestamp)
    run(rules, crowd + workday_history(6, user="E1", roles=("store_clerk",), per_hour=1, records=3))
    assert run(rules, [ev(day(6, 10, 10), "mild", user_roles=("store_clerk",), record_count=55)]) == []
    (alert,) = run(rules, [ev(day(6, 11, 10), "hot", user_roles=("store_clerk",), record_count=400)])
    assert "peers in role store_clerk ≤ " in alert.reason


def test_night_hours_of_a_day_worker_are_learned_as_quiet(tmp_path):
    rules, _ = rules_from(tmp_path, BASELINE.format(min_days=5, floor=50, extra=""), memory_conn())
    run(rules, workday_history(6))
    night = [ev(day(6, 2, m), f"n{m}", record_count=4) for m in range(0, 60, 4)]  # 60 records at 02:00
    (alert,) = run(rules, night)
    assert alert.reason.startswith("52 records this hour (Sun 02:00); E1's usual around 02:00 ≤ 0 ")
    assert alert.event_ids == ("n0", "n48")


def test_hour_of_week_once_enough_active_days(tmp_path):
    """Mondays are the heavy day; after weekly_after_days the Monday slot knows it."""
    text = BASELINE.format(min_days=5, floor=50, extra=", weekly_after_days: 14")
    rules, _ = rules_from(tmp_path, text, memory_conn())
    history = []
    for d in range(21):
        heavy = (T0 + dt.timedelta(days=d)).weekday() == 0
        history += workday_history(1, first=d, records=40 if heavy else 5)
    alerts = run(rules, history + workday_history(1, first=21, records=40))
    # judged by the hour of the week (14 active days on), heavy Mondays are usual
    assert [a for a in alerts if a.timestamp >= day(14)] == []
    (alert,) = run(rules, [ev(day(22, 11, 5), "tue", record_count=300)])  # a Tuesday far above a Monday
    assert alert.reason.startswith("300 records this hour (Tue 11:00); E1's usual around Tues 11:00 ≤ ")
    bound = float(alert.reason.split("≤ ")[1].split(" ")[0])
    assert 45 <= bound < 300  # the Tuesdays' mean (15) with the hour's spread over every weekday


def test_a_restart_mid_hour_keeps_the_hours_count(tmp_path):
    import sqlite3

    from auditd.store.migrations import migrate

    db = tmp_path / "s.db"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn)
    text = BASELINE.format(min_days=5, floor=50, extra="")
    rules, state = rules_from(tmp_path, text, conn)
    run(rules, workday_history(7))
    assert run(rules, [ev(day(7, 11, 5), "a", record_count=40)]) == []  # under the floor of 50
    commit(conn, state)
    conn.close()
    conn = sqlite3.connect(db, isolation_level=None)
    rules, state = rules_from(tmp_path, text, conn)  # the daemon again
    (alert,) = run(rules, [ev(day(7, 11, 6), "b", record_count=40)])
    assert alert.reason.startswith("80 records this hour (Mon 11:00)") and alert.event_ids == ("a", "b")


def test_a_damaged_row_rebuilds_that_key_and_keeps_the_others(tmp_path, caplog):
    conn = memory_conn()
    text = BASELINE.format(min_days=5, floor=50, extra="")
    rules, state = rules_from(tmp_path, text, conn)
    run(rules, workday_history(7, user="E1") + workday_history(7, user="E2"))
    commit(conn, state)
    conn.execute("UPDATE detector_state SET value = ? WHERE key = 'E1'", (b"\xc1\x00garbage",))
    conn.execute("UPDATE detector_state SET value = ? WHERE key = 'E2'", (msgspec.msgpack.encode(["x", 1]),))
    rules, state = rules_from(tmp_path, text, conn)  # a restart finds the damage
    run(rules, workday_history(7, user="E3"))
    commit(conn, state)
    rules, state = rules_from(tmp_path, text, conn)
    alerts = run(rules, [ev(day(7, 11, 20), "e1", user="E1", record_count=900),
                         ev(day(7, 11, 21), "e2", user="E2", record_count=900),
                         ev(day(7, 11, 22), "e3", user="E3", record_count=900)])
    commit(conn, state)
    assert [a.actor for a in alerts] == ["E3"]  # E1, E2 start afresh (learning again); E3 untouched
    assert "unreadable detector state" in caplog.text
    (row,) = rule_counters(conn)
    assert row[4] == 2  # both damaged rows counted
    rows = dict(conn.execute("SELECT key, value FROM detector_state").fetchall())
    fresh = msgspec.msgpack.Decoder(Profile).decode(rows["E1"])
    assert fresh.days == 0 and fresh.total == 900  # rebuilt from the event that found it


def test_profile_stays_small(tmp_path):
    conn = memory_conn()
    rules, state = rules_from(tmp_path, BASELINE.format(min_days=5, floor=50, extra=""), conn)
    run(rules, workday_history(14))
    commit(conn, state)
    (size,) = conn.execute("SELECT length(value) FROM detector_state WHERE key = 'E1'").fetchone()
    assert size < 900 and not math.isnan(size)


def test_an_event_stamped_far_in_the_future_does_not_blind_the_key(tmp_path):
    # one forged line stamped 2099 opened the key's bucket in 2099: every real event
    # after it was "late" (an earlier bucket) and ignored, the spike included
    rules, _ = rules_from(tmp_path, BASELINE.format(min_days=2, floor=50, extra=""), memory_conn())
    run(rules, workday_history(3))
    forged = ev(dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc), "forged", record_count=1)
    assert run(rules, [forged]) == []
    assert run(rules, workday_history(1, first=3)) == []
    spikes = [ev(day(4, 12, m), f"s{m}", record_count=200) for m in range(0, 50, 10)]
    assert len(run(rules, spikes)) == 1
