"""The departed-accounts sweep: live accounts past 3 working days, from the directory,
an account feed and stored logins; deterministic alerts through the real correlator."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from auditd.correlate import CorrelateSettings, Correlator
from auditd.detect.departed_sweep import (
    Login,
    SweepSettings,
    deadline_of,
    departed_ids,
    logins_since,
    sweep_departed_accounts,
)
from auditd.entitlement import load_account_feed
from auditd.event import AccessEvent
from auditd.store.sqlite import Store
from auditd.workdays import WorkingCalendar
from directory_helpers import directory_from

SH = ZoneInfo("Asia/Shanghai")
DIRECTORY = """\
regions: [{id: R-KM}]
stores: [{id: S011, region: R-KM}]
roles: [{id: clerk, grants: [{categories: [identity], actions: [read]}]}]
employees:
  - {id: E1, name: 国庆前离职, roles: [clerk], store: S011, status: departed, departure: "2026-09-30T18:00:00"}
  - {id: E2, name: 按时注销, roles: [clerk], store: S011, status: departed, departure: 2026-09-30,
     account_enabled: false, account_disabled_at: "2026-10-09T10:00:00"}
  - {id: E3, name: 注销晚了, roles: [clerk], store: S011, status: departed, departure: 2026-09-30,
     account_enabled: false, account_disabled_at: "2026-10-12T09:00:00"}
  - {id: E4, name: 还没走, roles: [clerk], store: S011, departure: 2026-12-31}
  - {id: E5, name: 看台账, roles: [clerk], store: S011, status: departed, departure: 2026-09-30}
  - {id: E6, name: 在职, roles: [clerk], store: S011}
"""


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=SH)


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return directory_from(tmp_path_factory, DIRECTORY)


CALENDAR = WorkingCalendar()


def sweep(directory, now, **kw):
    return {a.actor: a for a in sweep_departed_accounts(directory, CALENDAR, at(now), **kw)}


def test_the_deadline_is_the_third_working_day_after_the_last_day(directory):
    deadline = deadline_of(directory.employees["E1"], CALENDAR, 3)
    assert (deadline.last_day, deadline.day) == (dt.date(2026, 9, 30), dt.date(2026, 10, 10))
    assert deadline.breach_at == at("2026-10-11T00:00")


def test_nothing_before_the_deadline_is_over(directory):
    assert sweep(directory, "2026-10-10T23:59") == {}


def test_accounts_live_past_the_deadline(directory):
    found = sweep(directory, "2026-10-11T00:00")  # a Sunday: the grace is over, whatever the day
    # E2 went in time; E3 is still enabled then (the directory dates its disabling the 12th); E4, E6 work here
    assert set(found) == {"E1", "E3", "E5"}
    alert = found["E1"]
    assert (alert.rule_id, alert.rule_kind, alert.severity) == ("departed_account_live_past_grace", "departed", "high")
    assert alert.reason.startswith("account_still_enabled: E1 left at 2026-09-30T18:00+08:00; the account had to go "
                                   "by the end of 2026-10-10 (3 working days); still enabled per the HR directory")
    assert alert.reason.endswith("; 3 working day(s) since leaving")
    assert alert.timestamp == at("2026-10-11T00:00") and alert.event_ids == ()
    later = sweep(directory, "2026-10-13T09:00")
    assert set(later) == {"E1", "E3", "E5"}
    assert later["E3"].reason.startswith("account_disabled_late: ")
    assert "disabled only at 2026-10-12T09:00+08:00 per the HR directory" in later["E3"].reason
    assert later["E1"].reason.endswith("; 5 working day(s) since leaving")


def test_a_repeated_sweep_gives_the_same_alerts(directory):
    first = sweep(directory, "2026-10-13T09:00")
    again = sweep(directory, "2026-10-20T09:00")
    assert {k: a.alert_id for k, a in first.items()} == {k: a.alert_id for k, a in again.items()}


def test_a_shorter_grace(directory):
    found = sweep(directory, "2026-10-09T09:00", settings=SweepSettings(grace_working_days=1))
    assert set(found) == {"E1", "E2", "E3", "E5"}  # deadline the 8th; E2 is disabled only at 10:00 on the 9th


def test_the_account_feed_wins_over_the_directory(directory, tmp_path):
    feed_path = tmp_path / "accounts.csv"
    feed_path.write_text(
        "user_id,enabled,as_of\n"
        "E5,true,2026-10-12T08:00:00\n"
        "E5,false,2026-10-13T08:00:00\n"
        "E1,false,2026-10-09T08:00:00\n"
        "E1,maybe,2026-10-09T09:00:00\n", encoding="utf-8")
    feed = load_account_feed(feed_path)
    assert feed.problems == [f"{feed_path}:5: enabled must be true or false, got 'maybe'"]
    found = sweep(directory, "2026-10-12T09:00", feed=feed)
    assert set(found) == {"E3", "E5"}  # E1 disabled in time per the feed; E3 late per the directory
    assert "still enabled at 2026-10-12T08:00+08:00 per the account feed" in found["E5"].reason
    later = sweep(directory, "2026-10-14T09:00", feed=feed)
    assert later["E5"].reason.startswith("account_disabled_late: ")
    assert later["E5"].alert_id == found["E5"].alert_id  # the same breach, the same alert


def test_a_json_lines_feed(tmp_path):
    path = tmp_path / "accounts.jsonl"
    path.write_text('{"user_id": "E1", "enabled": false, "as_of": "2026-10-09T08:00:00Z"}\n\nnot json\n',
                    encoding="utf-8")
    feed = load_account_feed(path)
    state = feed.state_at("E1", at("2026-10-10T00:00"))
    assert state is not None and state.enabled is False and state.as_of == dt.datetime(2026, 10, 9, 8, tzinfo=dt.timezone.utc)
    assert feed.problems == [f"{path}:3: expected an object with user_id, enabled and as_of"]
    assert feed.state_at("E1", at("2026-10-09T00:00")) is None


def test_a_login_after_the_deadline_betrays_a_live_account(directory):
    logins = {"E2": [Login(at("2026-10-08T09:00"), "ev-early"), Login(at("2026-10-12T09:00"), "ev-late")]}
    found = sweep(directory, "2026-10-12T10:00", logins=logins)
    assert found["E2"].reason.startswith("account_used_after_deadline: ")
    assert "1 successful login(s) after the deadline, the first at 2026-10-12T09:00+08:00" in found["E2"].reason
    assert found["E2"].event_ids == ("ev-late",)


def login(user: str, when: str, outcome: str = "success", n: int = 0) -> AccessEvent:
    return AccessEvent(timestamp=at(when).astimezone(dt.timezone.utc), action="login", outcome=outcome,
                       user_id=user, event_id=f"{user}-{when}-{n}")


def test_sweep_alerts_through_the_correlator_never_double(directory, tmp_path):
    store = Store(tmp_path / "neo.db").open()
    with store.transaction() as conn:
        store.insert_events(conn, "crm", [login("E2", "2026-10-12T09:00"), login("E2", "2026-10-12T09:05", "denied"),
                                   login("E6", "2026-10-12T09:00"), login("E2", "2026-10-01T09:00")])
    now = at("2026-10-13T09:00")
    ids = departed_ids(directory, now)
    assert ids == ["E1", "E2", "E3", "E5"]
    seen = logins_since(store.conn, ids, at("2026-10-01T12:00")).logins
    assert {k: [x.event_id for x in v] for k, v in seen.items()} == {"E2": ["E2-2026-10-12T09:00-0"]}
    correlator = Correlator(CorrelateSettings(), clock=lambda: now)
    for _ in range(3):  # the hourly job, and a restart
        alerts = sweep_departed_accounts(directory, CALENDAR, now, logins=seen)
        with store.transaction() as conn:
            correlator.apply(conn, alerts)
    assert store.conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 4
    rows = store.conn.execute("SELECT actor, tier FROM incidents ORDER BY actor").fetchall()
    assert rows == [("E1", "T5"), ("E2", "T5"), ("E3", "T5"), ("E5", "T5")]
    store.close()


def test_the_scheduled_job_applies_its_alerts_on_its_own_connection(directory, tmp_path):
    from auditd.jobs.departed_sweep import run_departed_sweep
    from auditd.entitlement.settings import DepartedSettings

    store = Store(tmp_path / "neo.db").open()
    with store.transaction() as conn:
        store.insert_events(conn, "crm", [login("E2", "2026-10-12T09:00")])
    feed = tmp_path / "accounts.jsonl"
    feed.write_text('{"user_id": "E5", "enabled": false, "as_of": "2026-10-09T08:00:00"}\n', encoding="utf-8")
    now = at("2026-10-13T09:00")
    correlator = Correlator(CorrelateSettings(), clock=lambda: now)
    job = dict(directory=directory, calendar=CALENDAR, correlator=correlator, now=now,
               settings=DepartedSettings(account_feed=feed))
    changes = run_departed_sweep(store.path, **job)
    assert sorted(c.actor for c in changes) == ["E1", "E2", "E3"]  # E5 disabled in time per the feed
    assert run_departed_sweep(store.path, **job) == []  # the next hour: nothing new
    missing = dict(job, settings=DepartedSettings(account_feed=tmp_path / "gone.csv", use_logins=False))
    assert [c.actor for c in run_departed_sweep(store.path, **missing)] == ["E5"]  # feed unreadable: the directory
    assert store.conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0] == 4
    store.close()


def test_the_hourly_job_reads_only_the_segments_written_since_its_last_run(directory, tmp_path, caplog,
                                                                         tmp_path_factory):
    """Decoding 14 days of events every hour took minutes of the pipeline's interpreter
    on a busy system: a run reads what the last one did not, unless the leavers it looks
    for changed (then the whole look-back, once)."""
    from auditd.jobs.departed_sweep import run_departed_sweep

    caplog.set_level("DEBUG", logger="neo_auditd.departed")
    store = Store(tmp_path / "neo.db").open()
    for n in range(3):  # three batches of logins before the first run: three segments
        with store.transaction() as conn:
            store.insert_events(conn, "crm", [login("E6", "2026-10-12T09:00", n=n)])
    now = at("2026-10-13T09:00")
    correlator = Correlator(CorrelateSettings(), clock=lambda: now)
    job = dict(directory=directory, calendar=CALENDAR, correlator=correlator)

    def segments_read() -> list[int]:
        read = [r.segments for r in caplog.records if r.getMessage() == "logins read"]
        caplog.clear()
        return read

    run_departed_sweep(store.path, now=now, **job)
    assert segments_read() == [3]
    with store.transaction() as conn:  # E2, a leaver the directory calls disabled, logs in after the deadline
        store.insert_events(conn, "crm", [login("E2", "2026-10-13T09:30")])
    later = at("2026-10-13T10:00")
    changes = run_departed_sweep(store.path, now=later, **job)
    assert segments_read() == [1]  # the new segment only, and it is enough to find the login
    assert [c.actor for c in changes] == ["E2"]
    assert store.conn.execute("SELECT COUNT(*) FROM incidents WHERE actor = 'E2'").fetchone()[0] == 1
    assert run_departed_sweep(store.path, now=at("2026-10-13T11:00"), **job) == [] and segments_read() == [0]
    # a leaver more (the directory changed): the whole look-back again, once
    more = directory_from(tmp_path_factory, DIRECTORY + '  - {id: E7, name: 又一个, roles: [clerk], store: S011, '
                                                       'status: departed, departure: 2026-09-30}\n')
    run_departed_sweep(store.path, now=later, **dict(job, directory=more))
    assert segments_read() == [4]
    store.close()
