"""Alerts into incidents: episodes, counting, idempotence, grading, ids, transactions."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditd.correlate import (
    CorrelateError, CorrelateSettings, Correlator, IllegalTransition, IncidentChange, Note, SetTier,
    Transition, UnknownIncident, act, get_incident, list_incidents, verify_timeline,
)
from auditd.store.migrations import migrate
from auditd.correlate.settings import TierSettings
from auditd.detect.alert import Alert

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 28, 17, 30, tzinfo=UTC)  # 2026-11-29 01:30 in Shanghai
NOW = dt.datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def fixed_clock() -> dt.datetime:
    return NOW


def make_alert(n: int, *, actor: str | None = "E10023", minutes: float = 0, rule_id: str = "bulk-view",
               rule_kind: str = "threshold", severity: str = "medium", subjects: tuple[str, ...] = (),
               categories: tuple[str, ...] = ("identity",), sensitive: bool = False,
               record_count: int = 1) -> Alert:
    return Alert(
        alert_id=f"alert-{n}", rule_id=rule_id, rule_kind=rule_kind, severity=severity,
        title=f"{rule_id} by {actor}", timestamp=T0 + dt.timedelta(minutes=minutes),
        event_ids=(f"event-{n}",), actor=actor, subject_ids=subjects, categories=categories,
        sensitive=sensitive, record_count=record_count,
    )


def new_store() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")  # the write order must hold up under it
    migrate(conn)
    return conn


@pytest.fixture
def conn() -> sqlite3.Connection:
    return new_store()


@pytest.fixture
def correlator() -> Correlator:
    return Correlator(CorrelateSettings(), fixed_clock)


def apply(correlator: Correlator, conn: sqlite3.Connection, alerts: list[Alert]) -> list[IncidentChange]:
    """As the pipeline does: one transaction around the batch."""
    conn.execute("BEGIN")
    try:
        changes = correlator.apply(conn, alerts)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return changes


def count(conn: sqlite3.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# --- episodes ---------------------------------------------------------------------------


def test_alerts_within_the_gap_join_one_incident_and_a_later_one_opens_another(conn, correlator):
    # gap 4h, measured from the incident's last alert: 0h, 3h, 6.5h chain; 11h is beyond
    apply(correlator, conn, [make_alert(1, minutes=0), make_alert(2, minutes=180)])
    apply(correlator, conn, [make_alert(3, minutes=390)])
    changes = apply(correlator, conn, [make_alert(4, minutes=660)])
    incidents = sorted(list_incidents(conn), key=lambda i: i.incident_id)
    assert [i.alert_count for i in incidents] == [3, 1]
    assert changes[0].opened and changes[0].incident_id == incidents[1].incident_id
    first = incidents[0]
    assert first.first_seen == T0 and first.last_seen == T0 + dt.timedelta(minutes=390)
    assert first.discovered_at == NOW


def test_each_actor_has_its_own_episode(conn, correlator):
    changes = apply(correlator, conn, [
        make_alert(1, actor="E1"), make_alert(2, actor="E2"), make_alert(3, actor="E1", minutes=5),
    ])
    assert sorted((c.actor, c.alert_count) for c in changes) == [("E1", 2), ("E2", 1)]


def test_alerts_without_an_actor_group_by_rule(conn, correlator):
    changes = apply(correlator, conn, [
        make_alert(1, actor=None, rule_id="ip-scan"), make_alert(2, actor=None, rule_id="ip-scan"),
        make_alert(3, actor=None, rule_id="other"),
    ])
    assert sorted(c.alert_count for c in changes) == [1, 2]


def test_a_dismissed_incident_takes_no_more_alerts(conn, correlator):
    (first,) = apply(correlator, conn, [make_alert(1)])
    act(conn, Transition(incident_id=first.incident_id, status="dismissed", who="alice", why="test account"), clock=fixed_clock)
    (second,) = apply(correlator, conn, [make_alert(2, minutes=1)])
    assert second.opened and second.incident_id != first.incident_id
    assert get_incident(conn, first.incident_id).summary.alert_count == 1


def test_a_late_alert_within_the_gap_widens_the_episode_backwards(conn, correlator):
    apply(correlator, conn, [make_alert(1, minutes=120)])
    (change,) = apply(correlator, conn, [make_alert(2, minutes=0)])
    assert not change.opened
    assert get_incident(conn, change.incident_id).summary.first_seen == T0


# --- counting and idempotence -----------------------------------------------------------


def test_an_export_that_names_no_customers_affects_as_many_as_it_carried(conn, correlator):
    """57,312 records and no subject ids (the application lists them only up to 50):
    57,312 customers affected, not 0; two rules on the one export count it once."""
    export = dict(record_count=57_312, categories=("identity",), severity="high")
    (change,) = apply(correlator, conn, [
        make_alert(1, rule_id="bulk_export", **export),
        Alert(**{**{f: getattr(make_alert(1, **export), f) for f in Alert.__struct_fields__},
                 "alert_id": "alert-1b", "rule_id": "export_band", "severity": "critical"}),
    ])
    assert change.affected_count == 57_312 and change.affected_added == 57_312
    detail = get_incident(conn, change.incident_id)
    assert detail.summary.affected_count == 57_312 and detail.affected_subjects == ()
    # a list that names 3 of the 10 customers it returned: 3 pseudonyms and 7 unnamed
    (change,) = apply(correlator, conn, [make_alert(2, minutes=1, subjects=("p:a", "p:b", "p:c"), record_count=10)])
    assert change.affected_added == 10 and change.affected_count == 57_322


def test_distinct_customers_are_counted_once_across_alerts_and_batches(conn, correlator):
    apply(correlator, conn, [make_alert(1, subjects=("p:a", "p:b")), make_alert(2, subjects=("p:b", "p:c"))])
    (change,) = apply(correlator, conn, [make_alert(3, minutes=1, subjects=("p:a", "p:d"))])
    assert change.affected_added == 1 and change.affected_count == 4
    detail = get_incident(conn, change.incident_id)
    assert detail.summary.affected_count == 4
    assert detail.affected_subjects == ("p:a", "p:b", "p:c", "p:d")


def test_the_same_alert_twice_is_a_no_op(conn, correlator):
    alerts = [make_alert(1, subjects=("p:a",)), make_alert(2, subjects=("p:b",))]
    (change,) = apply(correlator, conn, alerts + [alerts[0]])  # repeated inside the batch too
    timeline_rows = count(conn, "incident_timeline")
    assert change.alerts_added == 2
    assert apply(correlator, conn, alerts) == []  # a replay after a restart
    assert count(conn, "alerts") == 2 and count(conn, "incident_timeline") == timeline_rows
    assert get_incident(conn, change.incident_id).summary.alert_count == 2


def test_one_timeline_entry_per_batch_not_per_alert(conn, correlator):
    (change,) = apply(correlator, conn, [make_alert(n, minutes=n) for n in range(50)])
    apply(correlator, conn, [make_alert(n, minutes=n) for n in range(50, 80)])
    kinds = [e.kind for e in get_incident(conn, change.incident_id).timeline]
    assert kinds == ["opened", "alerts_added", "alerts_added"]
    added = get_incident(conn, change.incident_id).timeline[2].data
    assert added["alerts"] == 30 and added["alert_count"] == 80


def test_evidence_lists_the_alerts_event_ids_in_time_order(conn, correlator):
    (change,) = apply(correlator, conn, [make_alert(2, minutes=2), make_alert(1, minutes=1)])
    detail = get_incident(conn, change.incident_id)
    assert detail.evidence_event_ids == ("event-1", "event-2")
    assert detail.alert_ids == ("alert-1", "alert-2")


def test_timeline_entries_carry_no_customer_identifiers(conn, correlator):
    subjects = tuple(f"p:{n:04d}" for n in range(30))
    (change,) = apply(correlator, conn, [
        make_alert(1, subjects=subjects, categories=("location",), sensitive=True, severity="critical"),
    ])
    rows = conn.execute("SELECT data FROM incident_timeline WHERE incident_id = ?", (change.incident_id,))
    text = " ".join(row[0] for row in rows)
    assert not any(s in text for s in subjects)


# --- tiers ------------------------------------------------------------------------------


def test_tier_rules_of_the_first_cut(conn, correlator):
    by_actor = {c.actor: c for c in apply(correlator, conn, [
        make_alert(1, actor="E1"),
        make_alert(2, actor="E2", rule_kind="entitlement"),
        make_alert(3, actor="E3", rule_kind="departed"),
        make_alert(4, actor="E4", severity="critical", sensitive=True, categories=("property",)),
        make_alert(5, actor="E5", severity="critical", sensitive=False),
        make_alert(6, actor="E6", severity="high"),
        make_alert(7, actor="E7", severity="low"),
    ])}
    # a severity is the tier it stands for: critical a suspected leak, high a violation
    assert {actor: c.tier for actor, c in by_actor.items()} == {
        "E1": "T6", "E2": "T5", "E3": "T5", "E4": "T4", "E5": "T4", "E6": "T5", "E7": "T6",
    }
    # the headline, then what happened: the title of the alert that set the grade
    assert by_actor["E4"].title == "Suspected leak: bulk-view by E4"
    assert by_actor["E3"].title == "Activity by departed employee: bulk-view by E3"
    assert by_actor["E6"].title == "bulk-view by E6"


def test_tier_is_raised_but_never_lowered_automatically(conn, correlator):
    (change,) = apply(correlator, conn, [make_alert(1)])
    assert change.tier == "T6"
    (change,) = apply(correlator, conn, [make_alert(2, minutes=1, rule_kind="entitlement")])
    assert (change.previous_tier, change.tier, change.tier_raised) == ("T6", "T5", True)
    (change,) = apply(correlator, conn, [make_alert(3, minutes=2, severity="critical", sensitive=True)])
    assert change.tier == "T4"
    (change,) = apply(correlator, conn, [make_alert(4, minutes=3)])  # a T6-grade alert
    assert change.tier == "T4" and not change.tier_raised
    kinds = [e.kind for e in get_incident(conn, change.incident_id).timeline]
    assert kinds.count("tier_changed") == 2


def test_a_persons_lower_tier_holds_until_the_grade_climbs_past_its_old_high(conn, correlator):
    (change,) = apply(correlator, conn, [make_alert(1, rule_kind="entitlement")])
    act(conn, SetTier(incident_id=change.incident_id, tier="T6", who="alice", why="approved ticket found later"), clock=fixed_clock)
    (change,) = apply(correlator, conn, [make_alert(2, minutes=1, rule_kind="entitlement")])
    assert change.tier == "T6"  # the same grade again does not undo her decision
    (change,) = apply(correlator, conn, [make_alert(3, minutes=2, severity="critical", sensitive=True)])
    assert change.tier == "T4" and change.tier_raised


def test_reaching_a_criminal_band_grades_a_suspected_leak(conn, correlator):
    # location: 50 records in art. 5(3), halved for an insider: 25 distinct customers
    first = [make_alert(1, subjects=tuple(f"p:{n}" for n in range(24)), categories=("location",))]
    (change,) = apply(correlator, conn, first)
    assert change.tier == "T6" and change.band is None
    (change,) = apply(correlator, conn, [make_alert(2, minutes=1, subjects=("p:0", "p:24"), categories=("location",))])
    assert change.affected_count == 25
    assert (change.tier, change.band, change.band_reached) == ("T4", "location-property", True)
    (change,) = apply(correlator, conn, [make_alert(3, minutes=2, subjects=("p:25",), categories=("location",))])
    assert change.band == "location-property" and not change.band_reached  # reached once
    kinds = [e.kind for e in get_incident(conn, change.incident_id).timeline]
    assert kinds.count("band_reached") == 1


def test_one_alerts_record_count_counts_towards_the_band(conn, correlator):
    (change,) = apply(correlator, conn, [make_alert(1, categories=("order",), record_count=250)])
    assert change.band == "transaction-health" and change.tier == "T4"


def test_operator_tier_overrides_by_rule_id(conn):
    settings = CorrelateSettings(tiers=TierSettings(by_rule={"bulk-view": "T5"}))
    (change,) = apply(Correlator(settings, fixed_clock), conn, [make_alert(1)])
    assert change.tier == "T5"


# --- status -----------------------------------------------------------------------------


def test_legal_transitions_record_who_and_why(conn, correlator):
    (change,) = apply(correlator, conn, [make_alert(1, rule_kind="entitlement")])
    incident_id = change.incident_id
    for status in ("contained", "notified", "resolved", "closed"):  # T5 contains before triage
        summary = act(conn, Transition(incident_id=incident_id, status=status, who="alice", why=f"step {status}"), clock=fixed_clock)
        assert summary.status == status
    changes = [e for e in get_incident(conn, incident_id).timeline if e.kind == "status_changed"]
    assert [(e.who, e.data["from"], e.data["to"]) for e in changes][:2] == [
        ("alice", "open", "contained"), ("alice", "contained", "notified"),
    ]
    assert changes[0].data["why"] == "step contained"


@pytest.mark.parametrize("path, illegal", [
    ((), "resolved"),  # open -> resolved skips triage
    ((), "closed"),
    (("triaged", "resolved"), "open"),  # no way back
    (("dismissed",), "triaged"),  # final
    (("triaged", "resolved", "closed"), "resolved"),  # final
    (("triaged", "contained", "notified"), "dismissed"),  # people were told: not a false positive
])
def test_illegal_transitions_are_refused_and_change_nothing(conn, correlator, path, illegal):
    (change,) = apply(correlator, conn, [make_alert(1)])
    for status in path:
        act(conn, Transition(incident_id=change.incident_id, status=status, who="alice", why="ok"), clock=fixed_clock)
    entries = len(get_incident(conn, change.incident_id).timeline)
    with pytest.raises(IllegalTransition):
        act(conn, Transition(incident_id=change.incident_id, status=illegal, who="alice", why="try"), clock=fixed_clock)
    detail = get_incident(conn, change.incident_id)
    assert detail.summary.status == (path[-1] if path else "open")
    assert len(detail.timeline) == entries and detail.timeline_verified


def test_a_transition_needs_who_why_a_known_status_and_incident(conn, correlator):
    (change,) = apply(correlator, conn, [make_alert(1)])
    with pytest.raises(CorrelateError, match="why is required"):
        act(conn, Transition(incident_id=change.incident_id, status="triaged", who="alice", why="  "), clock=fixed_clock)
    with pytest.raises(CorrelateError, match="unknown status 'done'"):
        act(conn, Transition(incident_id=change.incident_id, status="done", who="alice", why="x"), clock=fixed_clock)
    with pytest.raises(UnknownIncident):
        act(conn, Transition(incident_id="INC-20000101-0001", status="triaged", who="alice", why="x"), clock=fixed_clock)


def test_a_transition_inside_a_pipeline_transaction_does_not_commit_it(conn, correlator):
    (change,) = apply(correlator, conn, [make_alert(1)])
    conn.execute("BEGIN")
    act(conn, Transition(incident_id=change.incident_id, status="triaged", who="alice", why="x"), clock=fixed_clock)
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    assert get_incident(conn, change.incident_id).summary.status == "open"


# --- timeline hash chain ----------------------------------------------------------------


def chained_incident(conn: sqlite3.Connection, correlator: Correlator) -> str:
    (change,) = apply(correlator, conn, [make_alert(1, subjects=("p:a",))])
    apply(correlator, conn, [make_alert(2, minutes=1, rule_kind="entitlement")])
    act(conn, Transition(incident_id=change.incident_id, status="triaged", who="alice", why="looking"), clock=fixed_clock)
    act(conn, Note(incident_id=change.incident_id, who="alice", text="called the store manager"), clock=fixed_clock)
    return change.incident_id


def test_an_untouched_timeline_verifies(conn, correlator):
    incident_id = chained_incident(conn, correlator)
    assert verify_timeline(conn, incident_id) == (True, None)
    assert len(get_incident(conn, incident_id).timeline) == 6


def test_the_timeline_refuses_updates_and_deletes(conn, correlator):
    incident_id = chained_incident(conn, correlator)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE incident_timeline SET who = 'mallory' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM incident_timeline WHERE incident_id = ?", (incident_id,))


def drop_guards(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TRIGGER incident_timeline_no_update")
    conn.execute("DROP TRIGGER incident_timeline_no_delete")


@pytest.mark.parametrize("tamper, first_bad", [
    ("UPDATE incident_timeline SET data = replace(data, 'looking', 'nothing') WHERE seq = 5", 5),
    ("UPDATE incident_timeline SET who = 'bob' WHERE seq = 5", 5),
    ("UPDATE incident_timeline SET at = '2026-01-01T00:00:00.000000+00:00' WHERE seq = 2", 2),
    ("DELETE FROM incident_timeline WHERE seq = 3", 3),
    ("DELETE FROM incident_timeline WHERE seq = 6", 6),  # cut off the end
    ("UPDATE incident_timeline SET data = '{' WHERE seq = 4", 4),
])
def test_tampering_with_the_timeline_is_found(conn, correlator, tamper, first_bad):
    incident_id = chained_incident(conn, correlator)
    drop_guards(conn)
    conn.execute(tamper)
    assert verify_timeline(conn, incident_id) == (False, first_bad)
    detail = get_incident(conn, incident_id)  # a broken incident can still be read
    assert not detail.timeline_verified and detail.timeline_first_bad_seq == first_bad


def test_a_rehashed_entry_breaks_the_link_to_the_next(conn, correlator):
    incident_id = chained_incident(conn, correlator)
    drop_guards(conn)
    conn.execute("UPDATE incident_timeline SET who = 'bob', hash = ? WHERE seq = 5", ("f" * 64,))
    assert verify_timeline(conn, incident_id) == (False, 5)
    conn.execute("UPDATE incident_timeline SET prev_hash = ? WHERE seq = 6", ("f" * 64,))
    assert verify_timeline(conn, incident_id) == (False, 5)


# --- ids and transactions ---------------------------------------------------------------


def replay_log() -> list[Alert]:
    alerts = []
    for n in range(60):
        actor = f"E{n % 7}"
        alerts.append(make_alert(n, actor=actor, minutes=n * 37, subjects=(f"p:{n % 11}",)))
    alerts.insert(20, make_alert(999, actor="E3", minutes=5))  # one arrives late
    return alerts


def test_two_replays_into_fresh_stores_give_the_same_ids_however_batches_are_cut():
    log = replay_log()
    results = []
    for cut in (len(log), 7, 1):
        conn, correlator = new_store(), Correlator(CorrelateSettings(), fixed_clock)
        for start in range(0, len(log), cut):
            apply(correlator, conn, log[start:start + cut])
        results.append(conn.execute(
            "SELECT alert_id, incident_id FROM alerts ORDER BY alert_id").fetchall())
    assert results[0] == results[1] == results[2]
    ids = {incident_id for _, incident_id in results[0]}
    assert min(ids) == "INC-20261129-0001" and len(ids) > 7


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2000), st.integers(0, 9)),
                   min_size=1, max_size=40),
    cuts=st.sets(st.integers(1, 39)),
)
def test_batch_cuts_never_change_the_outcome(steps, cuts):
    # random actors, times (out of order too) and subjects; one batch vs. random cuts
    log = [make_alert(n, actor=f"E{actor}", minutes=minute, subjects=(f"p:{subject}",))
           for n, (actor, minute, subject) in enumerate(steps)]
    outcomes = []
    for bounds in ([0, len(log)], sorted({0, len(log), *(c for c in cuts if c < len(log))})):
        conn, correlator = new_store(), Correlator(CorrelateSettings(), fixed_clock)
        for start, end in zip(bounds, bounds[1:]):
            apply(correlator, conn, log[start:end])
        outcomes.append((
            conn.execute("SELECT alert_id, incident_id FROM alerts ORDER BY alert_id").fetchall(),
            conn.execute("SELECT incident_id, alert_count, affected_count, first_seen, last_seen"
                         " FROM incidents ORDER BY incident_id").fetchall(),
        ))
    assert outcomes[0] == outcomes[1]


def test_incident_ids_take_the_shanghai_date_of_the_opening_alert(conn, correlator):
    early = dt.datetime(2026, 11, 28, 15, 59, tzinfo=UTC)  # 23:59 in Shanghai
    alert = Alert(alert_id="x", rule_id="r", rule_kind="match", severity="low", title="t",
                  timestamp=early, event_ids=("e",), actor="E1")
    changes = apply(correlator, conn, [alert, make_alert(1, actor="E2")])
    assert {c.actor: c.incident_id for c in changes} == {
        "E1": "INC-20261128-0001", "E2": "INC-20261129-0001",
    }


def test_apply_in_a_rolled_back_transaction_leaves_nothing(conn, correlator):
    apply(correlator, conn, [make_alert(1, subjects=("p:a",))])
    before = {t: count(conn, t) for t in ("incidents", "alerts", "incident_subjects",
                                          "incident_timeline", "incident_counters")}
    conn.execute("BEGIN")
    changes = correlator.apply(conn, [
        make_alert(2, minutes=1, subjects=("p:b",), rule_kind="entitlement"),
        make_alert(3, actor="E9", subjects=("p:c",)),
    ])
    assert len(changes) == 2 and conn.in_transaction  # nothing committed under our feet
    conn.execute("ROLLBACK")
    assert {t: count(conn, t) for t in before} == before
    assert list_incidents(conn)[0].tier == "T6"


def test_apply_outside_a_transaction_is_refused(conn, correlator):
    with pytest.raises(CorrelateError, match="inside the caller's"):
        correlator.apply(conn, [make_alert(1)])
    assert count(conn, "alerts") == 0


def test_a_naive_alert_time_is_refused(conn, correlator):
    alert = make_alert(1)
    naive = Alert(**{**{f: getattr(alert, f) for f in alert.__struct_fields__},
                     "timestamp": dt.datetime(2026, 11, 29, 9, 0)})
    with pytest.raises(CorrelateError, match="naive"):
        apply(correlator, conn, [naive])
