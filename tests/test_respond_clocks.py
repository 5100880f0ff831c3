"""The legal clocks on an injected clock: a 较大 (T3) incident walked through its playbook."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from auditd.correlate import Dismiss, Merge, SetCII, SetLoss, Transition, changelog
from auditd.ops.status import overdue_steps
from auditd.respond import people
from auditd.respond.due import Due
from auditd.respond.engine import CONSUMER
from auditd.workdays import WorkingCalendar

from respond_helpers import UTC, ZONE, Clock, World, alert

T0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai, a Monday


@pytest.fixture
def world(tmp_path):
    return World(tmp_path, Clock(T0))


def _open_t5(world: World) -> str:
    """A least-privilege violation: T5, discovered at T0."""
    (change,) = world.apply([alert(1, T0 - dt.timedelta(minutes=5))])
    assert change.tier == "T5"
    return change.incident_id


def test_a_relatively_major_incident_walks_its_playbook_on_the_clocks(world):
    incident = _open_t5(world)
    world.run()
    assert world.step(incident, "triage").playbook == "T5"
    assert world.step(incident, "notify-regulator") is None

    # an hour later the loss is known: the loss band makes it T3 (较大); its steps are added
    # with clocks from the original discovery, not from the re-grade
    world.clock.advance(hours=1)
    world.apply(actions=[SetLoss(incident_id=incident, who="alice", yuan=6_000_000, why="finance estimate")])
    world.run()
    regulator = world.step(incident, "notify-regulator")
    assert regulator.playbook == "T3"
    assert regulator.due_at == T0 + dt.timedelta(hours=4)
    assert world.step(incident, "notify-customers").due_at == T0 + dt.timedelta(hours=72)
    assert world.step(incident, "report-police") is None  # no criminal band: no police step
    # the shorter of two clocks for the same step wins (T3's security team 15 min)
    assert world.step(incident, "notify-security").state == "done"

    # the initial report was rendered on its step, cause unknown and marked so
    report = world.step(incident, "report-initial")
    assert report.state == "review" and report.result["cause_known"] is False
    document = json.loads(open(report.result["paths"]["json"], encoding="utf-8").read())
    assert document["cause_known"] is False and document["items"]["grade"]["tier"] == "T3"

    # nobody approves in time: at the deadline the regulator step is overdue and escalates
    world.clock.now = T0 + dt.timedelta(hours=4, minutes=1)
    result = world.run()
    assert f"{incident}/notify-regulator->responder" in result.escalated
    assert world.step(incident, "notify-regulator").escalations == 1
    assert overdue_steps(world.conn, world.clock()) >= 1
    escalation = world.conn.execute(
        "SELECT audience, kind FROM notices WHERE incident_id = ? AND step_id = 'notify-regulator.escalation'",
        (incident,)).fetchall()
    assert escalation == [("responder", "escalation")]
    # the next rung half an hour later (the T3 ladder's interval), not before
    world.clock.advance(minutes=10)
    assert not [e for e in world.run().escalated if "notify-regulator" in e]
    world.clock.advance(minutes=21)
    assert f"{incident}/notify-regulator->security" in world.run().escalated

    # four eyes: alice submits the report, alice cannot approve it, bob can
    people.done(world.conn, world.correlator, incident, "report-initial", "alice", world.clock())
    with pytest.raises(people.StepError, match="four eyes"):
        people.approve(world.conn, world.correlator, incident, "approve-initial", "alice", world.clock())
    people.approve(world.conn, world.correlator, incident, "approve-initial", "bob", world.clock())
    world.run()
    sent = world.step(incident, "notify-regulator")
    assert sent.state == "done" and sent.late is True
    assert sent.result["attachments"] and sent.result["attachments"][0].endswith(".json")

    # handling ends: the closing report falls due 30 days after the resolution
    world.apply(actions=[Transition(incident_id=incident, who="alice", status="triaged", why="analysed"),
                         Transition(incident_id=incident, who="alice", status="resolved", why="contained, traced")])
    resolved_at = world.clock()
    assert world.step(incident, "notify-regulator-closing").due_at is None  # not before the resolution
    world.run()
    assert world.step(incident, "notify-regulator-closing").due_at == resolved_at + dt.timedelta(days=30)
    assert world.step(incident, "report-closing").state == "review"  # rendered at once, for review

    # every step left a trace on the incident's timeline, and the chain holds
    from auditd.correlate import get_incident

    detail = get_incident(world.conn, incident)
    events = [(e.data.get("step"), e.data.get("event")) for e in detail.timeline if e.kind == "step"]
    assert ("approve-initial", "approved") in events and ("notify-regulator", "escalated") in events
    assert detail.timeline_verified


def test_the_cii_flag_puts_the_regulator_clock_at_one_hour(world):
    incident = _open_t5(world)
    world.apply(actions=[SetLoss(incident_id=incident, who="alice", yuan=6_000_000, why="estimate")])
    world.run()
    assert world.step(incident, "notify-regulator").due_at == T0 + dt.timedelta(hours=4)
    world.clock.advance(minutes=20)
    world.apply(actions=[SetCII(incident_id=incident, who="alice", cii=True, why="the payment system is CII")])
    world.run()
    assert world.step(incident, "notify-regulator").due_at == T0 + dt.timedelta(hours=1)
    assert world.step(incident, "report-initial").due_at == T0 + dt.timedelta(minutes=40)


def test_a_criminal_band_adds_the_police_step(world):
    subjects = tuple(f"p:{i:032x}" for i in range(3000))  # insider: 2,500 records of other PI
    (change,) = world.apply([alert(1, T0, kind="match", severity="critical", subjects=subjects, record_count=3000)])
    assert change.tier == "T4" and change.band is not None
    world.run()
    police = world.step(change.incident_id, "report-police")
    assert police is not None and police.due_at == T0 + dt.timedelta(hours=24)
    assert world.step(change.incident_id, "notify-regulator").due_at == T0 + dt.timedelta(hours=24)


def test_a_merge_moves_the_clocks_to_the_earlier_discovery(world):
    first = _open_t5(world)
    world.clock.advance(hours=6)
    (second,) = world.apply([alert(2, world.clock(), actor="E10056")])
    world.run()
    assert world.step(second.incident_id, "decide-art57").due_at == world.clock() + dt.timedelta(hours=24)
    world.apply(actions=[Merge(incident_id=first, into=second.incident_id, who="alice", why="same export")])
    world.run()
    assert world.step(second.incident_id, "decide-art57").due_at == T0 + dt.timedelta(hours=24)
    assert world.step(first, "decide-art57").state == "cancelled"


def test_dismissing_cancels_the_open_steps(world):
    incident = _open_t5(world)
    world.run()
    world.apply(actions=[Dismiss(incident_id=incident, who="alice", reason="false_positive", why="test account")])
    world.run()
    from auditd.respond import steps

    assert {r.state for r in steps.of_incident(world.conn, incident)} <= {"cancelled", "done"}
    assert overdue_steps(world.conn, world.clock() + dt.timedelta(days=5)) == 0


def test_each_change_is_planned_once_and_nothing_fires_twice(world):
    incident = _open_t5(world)
    world.run()
    again = world.run()
    assert again.changes == 0 or all(not f.startswith(incident) for f in again.fired)
    assert changelog.pending(world.conn, CONSUMER) <= len(again.fired) + 2  # only its own traces remain
    count = world.conn.execute("SELECT COUNT(*) FROM notices WHERE incident_id = ?", (incident,)).fetchone()[0]
    world.run()
    assert world.conn.execute("SELECT COUNT(*) FROM notices WHERE incident_id = ?", (incident,)).fetchone()[0] == count


def test_working_days_skip_the_spring_festival_and_count_a_make_up_saturday():
    calendar = WorkingCalendar()
    friday = dt.datetime(2026, 2, 13, 10, 0, tzinfo=ZONE)  # the Friday before the 2026 Spring Festival
    assert Due.from_config("1wd").after(friday, calendar, ZONE) == dt.datetime(2026, 2, 14, 10, 0, tzinfo=ZONE)
    assert Due.from_config("2 working days").after(friday, calendar, ZONE) == dt.datetime(2026, 2, 24, 10, 0,
                                                                                          tzinfo=ZONE)
    assert Due.from_config("3wd").after(friday, calendar, ZONE) == dt.datetime(2026, 2, 25, 10, 0, tzinfo=ZONE)


def test_a_working_day_step_of_a_t5_incident_uses_the_calendar(tmp_path):
    friday = dt.datetime(2026, 2, 13, 10, 0, tzinfo=ZONE).astimezone(UTC)
    world = World(tmp_path, Clock(friday))
    (change,) = world.apply([alert(1, friday)])
    world.run()
    assert world.step(change.incident_id, "triage").due_at == dt.datetime(2026, 2, 14, 10, 0, tzinfo=ZONE)


@pytest.mark.parametrize("text, expected", [
    ("15m", Due(900.0)), ("4h", Due(14400.0)), ("30d", Due(30 * 86400.0)), ("3wd", Due(working_days=3)),
    ("1 working day", Due(working_days=1)), (90, Due(5400.0)),
])
def test_due_times_parse(text, expected):
    assert Due.from_config(text) == expected


@pytest.mark.parametrize("text", ["4 hours", "-1h", "1.5wd", "soon", True])
def test_bad_due_times_are_refused(text):
    with pytest.raises(ValueError):
        Due.from_config(text)


def test_an_important_change_after_the_initial_report_adds_a_follow_up(world):
    subjects = tuple(f"p:{i:032x}" for i in range(10))
    (change,) = world.apply([alert(1, T0, kind="match", severity="critical", sensitive=True, subjects=subjects,
                                   categories=("property",))])
    world.run()
    assert world.step(change.incident_id, "report-initial").state == "review"
    world.clock.advance(hours=2)
    world.apply(actions=[SetCII(incident_id=change.incident_id, who="ciso", cii=True, why="payments are CII")])
    world.run()
    followup = world.step(change.incident_id, "report-followup-1")
    assert followup is not None and followup.due_at == world.clock() + dt.timedelta(hours=24)
    assert followup.state == "review" and followup.result["report"] == "followup"
    assert world.step(change.incident_id, "report-followup-2") is None  # one change, one follow-up
