"""first_seen, off_hours and enumeration, with the events' times as the clock."""

from __future__ import annotations

import datetime as dt
import ipaddress
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditd.enrich.enricher import Enricher
from auditd.enrich.pseudonym import Pseudonymiser
from auditd.detect.novelty_kinds import subnet
from auditd.event import AccessEvent
from auditd.store.migrations import migrate
from auditd.workdays import WorkingCalendar

from behaviour_helpers import T0, ZONE, commit, ev, memory_conn, minutes, rules_from, run

FIRST_SEEN = """- rule: new_category
  desc: a data category new for the actor after learning
  kind: first_seen
  params: {{field: {field}, learning: 3d{extra}}}
  condition: event.action = read
  severity: medium
  tags: [sandbox]
  samples:
    match:
      - sequence:
          - {{repeat: 4, every: 1d, event: {{user.id: E1, event.action: read, neo.data.categories: [order]}}}}
          - {{user.id: E1, event.action: read, neo.data.categories: [location]}}
"""
OFF_HOURS = """- rule: off_hours
  desc: outside the shift, or on a rest day
  kind: off_hours
  params: {params}
  condition: event.action = read
  severity: medium
  tags: [sandbox]
  samples:
    match: [{{user.id: E1, event.action: read, neo.actor.off_shift: true}}]
"""
ENUMERATION = """- rule: walk
  desc: consecutive ids
  kind: threshold
  params: {gte: 10, distinct: neo.resource.seq_offset, partition_by: neo.resource.seq_block, timespan: 30m,
           max_partitions: 4}
  condition: event.action = read
  severity: high
  tags: [sandbox]
  samples:
    match:
      - sequence:
          - {repeat: 10, event: {user.id: E1, event.action: read, neo.resource.seq_block: b1,
                                 neo.resource.seq_offset: "{n}"}}
"""


def days(n: float) -> dt.timedelta:
    return dt.timedelta(days=n)


def test_first_seen_learns_then_alerts_once_per_new_value(tmp_path):
    rules, _ = rules_from(tmp_path, FIRST_SEEN.format(field="neo.data.categories", extra=""), memory_conn())
    learning = [ev(days(d), f"l{d}", categories=("order",) if d % 2 else ("identity", "order")) for d in range(3)]
    assert run(rules, learning + [ev(days(2.9), "loc-early", categories=("contact",))]) == []  # learnt, no alert
    assert run(rules, [ev(days(3.5), "c", categories=("contact", "order"))]) == []  # known since the learning
    (alert,) = run(rules, [ev(days(4), "loc", categories=("location", "order"))])
    assert alert.reason == ("neo.data.categories 'location' new for user.id E1 "
                            "(3 value(s) known from 4 day(s) of history)")
    assert run(rules, [ev(days(4.1), "loc2", categories=("location",))]) == []  # known now


def test_first_seen_learning_runs_from_each_keys_own_first_event(tmp_path):
    rules, _ = rules_from(tmp_path, FIRST_SEEN.format(field="neo.data.categories", extra=""), memory_conn())
    run(rules, [ev(days(0), "a0", categories=("order",))])
    newcomer = [ev(days(5), "n0", user="E2", categories=("order",)), ev(days(6), "n1", user="E2",
                                                                       categories=("location",))]
    assert run(rules, newcomer) == []  # E2 started on day 5: still learning on day 6
    assert [a.actor for a in run(rules, [ev(days(5), "a1", categories=("location",))])] == ["E1"]


def test_first_seen_subnets_and_state_across_a_restart(tmp_path):
    db = tmp_path / "s.db"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn)
    text = FIRST_SEEN.format(field="source.ip", extra=", transform: subnet")
    rules, state = rules_from(tmp_path, text, conn)
    run(rules, [ev(days(d), f"h{d}", source_ip="10.20.1.15") for d in range(5)])
    commit(conn, state)
    conn.close()
    conn = sqlite3.connect(db, isolation_level=None)
    rules, _ = rules_from(tmp_path, text, conn)
    assert run(rules, [ev(days(6), "same-net", source_ip="10.20.1.200")]) == []
    (alert,) = run(rules, [ev(days(6), "new-net", source_ip="10.88.7.20")])
    assert "source.ip '10.88.7.0/24' new for user.id E1" in alert.reason
    assert run(rules, [ev(days(6), "not-an-ip", source_ip="ec2.amazonaws.com")]) == []


def test_first_seen_cap_restarts_learning_instead_of_alerting_on_noise(tmp_path):
    text = FIRST_SEEN.format(field="labels.user_agent", extra=", max_values: 5")
    rules, _ = rules_from(tmp_path, text, memory_conn())
    noisy = [ev(days(4 + i / 100), f"u{i}", labels={"user_agent": f"agent/{i}"}) for i in range(12)]
    alerts = run(rules, [ev(days(0), "u", labels={"user_agent": "agent/base"})] + noisy)
    assert len(alerts) == 4  # new ones alert up to the cap of 5 values, then the key learns afresh
    assert run(rules, [ev(days(4.5), "u-again", labels={"user_agent": "agent/99"})]) == []


def test_first_seen_param_errors_are_located(tmp_path):
    from auditd.config.located import Problems
    from auditd.detect import load_rules

    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "r.yaml").write_text(FIRST_SEEN.format(field="user.name", extra=", transform: subnet"))
    problems = Problems()
    load_rules([folder], problems)
    assert any("r.yaml:4:" in str(p) and "params.transform: 'subnet' needs an address field" in str(p)
               for p in problems.items), [str(p) for p in problems.items]


def test_off_hours_is_one_alert_per_episode_with_the_count(tmp_path):
    rules, _ = rules_from(tmp_path, OFF_HOURS.format(params="{shift: true, realert: 4h}"), memory_conn())
    night = T0.replace(hour=2)
    events = [ev(night + minutes(m), f"n{m}", actor_off_shift=True) for m in range(0, 60, 5)]
    events.insert(3, ev(night + minutes(11), "known-shift", actor_off_shift=False))
    (first,) = run(rules, events)
    assert first.event_ids == ("n0",) and "outside the actor's shift" in first.reason
    (second,) = run(rules, [ev(night + minutes(4 * 60 + 1), "later", actor_off_shift=True)])
    assert second.reason.endswith("; 11 more off-hours event(s) since the last alert")
    assert run(rules, [ev(night, "unknown", actor_off_shift=None, user="E9")]) == []  # no shift known


def test_off_hours_rest_days_follow_the_mainland_calendar(tmp_path):
    params = "{shift: false, rest_days: true, realert: 1m}"
    rules, _ = rules_from(tmp_path, OFF_HOURS.format(params=params), memory_conn(), calendar=WorkingCalendar())
    national_day = dt.datetime(2026, 10, 1, 10, 0, tzinfo=ZONE)
    make_up_saturday = dt.datetime(2026, 10, 10, 10, 0, tzinfo=ZONE)
    plain_sunday = dt.datetime(2026, 10, 11, 10, 0, tzinfo=ZONE)
    plain_tuesday = dt.datetime(2026, 10, 13, 10, 0, tzinfo=ZONE)
    alerts = run(rules, [ev(national_day, "holiday"), ev(make_up_saturday, "makeup"),
                         ev(plain_sunday, "sunday"), ev(plain_tuesday, "tuesday")])
    assert [a.event_ids for a in alerts] == [("holiday",), ("sunday",)]
    assert "2026-10-01, a rest day in mainland China" in alerts[0].reason


def test_off_hours_fixed_hours_for_actors_the_directory_does_not_know(tmp_path):
    params = "{shift: true, hours: '08:00-20:00 mon-fri', group_by: [labels.access_key_id]}"
    rules, _ = rules_from(tmp_path, OFF_HOURS.format(params=params), memory_conn())
    key = {"access_key_id": "AKIAEXAMPLE"}
    late = T0.replace(hour=23)
    (alert,) = run(rules, [ev(T0, "day", labels=key), ev(late, "night", labels=key)])
    assert alert.event_ids == ("night",) and "outside the hours 08:00-20:00" in alert.reason
    assert run(rules, [ev(late, "keyless")]) == []  # no credential: nothing to key on


def walk_events(first: int, n: int, *, user: str = "E1", step_s: int = 15, stride: int = 1) -> list[AccessEvent]:
    return [AccessEvent(timestamp=(T0 + dt.timedelta(seconds=step_s * k)).astimezone(dt.timezone.utc),
                        action="read", user_id=user, event_id=f"{user}-{k}", resource_type="customer",
                        resource_id=f"C{first + stride * k:08d}", subject_ids=(f"C{first + stride * k:08d}",))
            for k in range(n)]


def test_enumeration_finds_consecutive_ids_through_the_enricher_without_keeping_them(tmp_path):
    enricher = Enricher(None, Pseudonymiser(b"k" * 32))
    walk = walk_events(51_200 + 3, 14)
    enricher.enrich(walk)
    assert all(e.resource_seq_block and "51" not in e.resource_seq_block for e in walk)
    assert {e.resource_seq_block for e in walk} == {walk[0].resource_seq_block}
    assert [e.resource_seq_offset for e in walk] == list(range(3, 17))
    assert not any(e.resource_id.startswith("C000") for e in walk)  # pseudonymised as before
    rules, _ = rules_from(tmp_path, ENUMERATION, memory_conn())
    (alert,) = run(rules, walk)
    assert alert.event_ids == tuple(f"E1-{k}" for k in range(10))
    assert alert.reason == ("10 distinct neo.resource.seq_offset of one neo.resource.seq_block within 30m "
                            "for user.id E1 (threshold 10)")


def test_scattered_ids_are_no_walk(tmp_path):
    enricher = Enricher(None, Pseudonymiser(b"k" * 32))
    store_customers = walk_events(17, 200, stride=40)  # one store's customers: every 40th id
    enricher.enrich(store_customers)
    rules, _ = rules_from(tmp_path, ENUMERATION, memory_conn())
    assert run(rules, store_customers) == []


def test_a_walk_is_found_among_other_work_and_state_stays_bounded(tmp_path):
    enricher = Enricher(None, Pseudonymiser(b"k" * 32))
    scattered = walk_events(100_000, 60, stride=997)  # 60 blocks: more than max_partitions
    walk = walk_events(64 * 300, 10, step_s=20)
    for k, e in enumerate(walk):
        e.event_id = f"w{k}"
    mixed = sorted(scattered + walk, key=lambda e: e.timestamp)
    enricher.enrich(mixed)
    conn = memory_conn()
    rules, state = rules_from(tmp_path, ENUMERATION, conn)
    (alert,) = run(rules, mixed)
    assert alert.event_ids == tuple(f"w{k}" for k in range(10))
    commit(conn, state)
    (value,) = [v for (v,) in conn.execute("SELECT value FROM detector_state")]
    assert len(value) < 600  # four windows at most, however many blocks were visited


def test_a_slow_walk_outside_the_window_is_no_walk(tmp_path):
    enricher = Enricher(None, Pseudonymiser(b"k" * 32))
    slow = walk_events(64 * 10, 20, step_s=400)  # one id every 6'40": 10 ids take an hour
    enricher.enrich(slow)
    rules, _ = rules_from(tmp_path, ENUMERATION, memory_conn())
    assert run(rules, slow) == []


@pytest.mark.parametrize("rid", ["ABC", "C-12-x", "", "C" + "9" * 30])
def test_ids_that_are_not_numbers_get_no_block(rid):
    enricher = Enricher(None, Pseudonymiser(b"k" * 32))
    event = AccessEvent(timestamp=T0, action="read", resource_type="customer", resource_id=rid)
    enricher.enrich([event])
    assert event.resource_seq_block is None and event.resource_seq_offset is None


def test_ids_get_no_block_unless_a_loaded_rule_reads_one(tmp_path):
    """The block costs a regex and a pseudonym per record: only a rule set that names
    `neo.resource.seq_*` asks for it, and the daemon's enricher follows the rules."""
    with_walks, _ = rules_from(tmp_path, ENUMERATION, memory_conn())
    assert with_walks.reads("neo.resource.seq_")
    other = tmp_path / "other"
    other.mkdir()
    without, _ = rules_from(other, OFF_HOURS.format(params="{shift: true}"), memory_conn())
    assert not without.reads("neo.resource.seq_")
    plain = Enricher(None, Pseudonymiser(b"k" * 32), id_blocks=False)
    walk = walk_events(64 * 5, 3)
    plain.enrich(walk)
    assert [(e.resource_seq_block, e.resource_seq_offset) for e in walk] == [(None, None)] * 3
    assert not any(e.resource_id.startswith("C000") for e in walk)  # still pseudonymised


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.lists(st.sampled_from(["0", "1", "00", "01", "9", "99", "255", "256", "010", "1000", "a", " 1", "١", "+1", ""]),
             min_size=3, max_size=5).map(".".join),
    st.ip_addresses().map(str), st.text(max_size=20)))
def test_the_fast_subnet_of_an_address_is_what_ipaddress_gives(value):
    """`subnet` reads a dotted quad as text (the per-event path); it must agree with the
    ipaddress module on every input, odd ones included (leading zeros, other digits)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        expected = None
    else:
        expected = str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))
    assert subnet(value) == expected


def test_a_first_event_stamped_far_in_the_future_does_not_keep_the_key_learning(tmp_path):
    # the learning period ran from the key's first event *as it arrived*: one forged line
    # stamped 2099 left the key learning until 2099, and nothing new of it alerted
    rules, _ = rules_from(tmp_path, FIRST_SEEN.format(field="neo.data.categories", extra=""), memory_conn())
    forged = ev(dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc), "f", categories=("order",))
    assert run(rules, [forged] + [ev(days(d), f"l{d}", categories=("order",)) for d in range(4)]) == []
    (alert,) = run(rules, [ev(days(4), "loc", categories=("location",))])
    assert "'location' new for user.id E1" in alert.reason


def test_an_off_hours_alert_stamped_far_in_the_future_does_not_silence_the_key(tmp_path):
    rules, _ = rules_from(tmp_path, OFF_HOURS.format(params="{shift: true}"), memory_conn())
    forged = ev(dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc), "f", actor_off_shift=True)
    assert len(run(rules, [forged])) == 1
    assert len(run(rules, [ev(days(1), "real", actor_off_shift=True)])) == 1
