"""As-of semantics: who an employee was at a moment; and shift hours."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from auditd.config.located import Problems
from auditd.directory import Schedule, load_directory
from directory_helpers import directory_from

SH = ZoneInfo("Asia/Shanghai")
DIRECTORY = """\
regions: [{id: R-KM}]
stores: [{id: S011, region: R-KM}]
roles:
  - id: store_clerk
    grants: [{categories: [identity], actions: [read], scope: own_store}]
  - id: store_manager
    grants:
      - {categories: [identity], actions: [read, export], scope: own_store}
      - {categories: [property], actions: [read], scope: own_store, purpose_required: true}
employees:
  - id: E1
    name: 周杰
    store: S011
    hire_date: 2022-04-18
    roles:
      - {role: store_clerk, from: 2022-04-18, until: 2026-11-01}
      - {role: store_manager, from: 2026-11-02}
  - {id: E2, name: 赵敏, roles: [store_manager], store: S011, status: departed,
     departure: "2026-11-02T18:00:00", account_enabled: false, account_disabled_at: "2026-11-04T10:30:00+08:00"}
  - {id: E3, name: 吕萍, roles: [store_clerk], store: S011, status: departed, departure: 2026-10-31}
  - {id: E4, name: 郭颖, roles: [store_clerk], store: S011, status: suspended}
  - {id: E5, name: 新人, roles: [store_clerk], store: S011, hire_date: 2026-11-09, departure: 2027-01-31}
"""


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return directory_from(tmp_path_factory, DIRECTORY)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=SH)


def roles(view) -> list[str]:
    return [r.id for r in view.roles]


def test_a_role_changed_yesterday(directory):
    # until 2026-11-01 (a date) includes that whole day; the new role starts the next morning
    assert roles(directory.employee_as_of("E1", at("2026-11-01T23:59:59"))) == ["store_clerk"]
    assert roles(directory.employee_as_of("E1", at("2026-11-02T00:00:00"))) == ["store_manager"]
    today = directory.employee_as_of("E1", at("2026-11-03T10:00"))
    assert today.status == "active" and not today.departed
    assert [g.purpose_required for g in today.grants_for("property", "read")] == [True]
    assert today.grants_for("property", "export") == ()


def test_departure_at_18_00(directory):
    before = directory.employee_as_of("E2", at("2026-11-02T17:59"))
    after = directory.employee_as_of("E2", at("2026-11-02T18:01"))
    assert (before.status, before.departed, roles(before)) == ("active", False, ["store_manager"])
    assert (after.status, after.departed, roles(after)) == ("departed", True, [])
    assert directory.employee_as_of("E2", at("2026-11-02T18:00")).departed  # from 18:00 itself
    assert after.name == "赵敏" and after.store == "S011" and after.region == "R-KM"


def test_a_departure_date_alone_means_the_end_of_that_day(directory):
    assert not directory.employee_as_of("E3", at("2026-10-31T23:59")).departed
    assert directory.employee_as_of("E3", at("2026-11-01T00:00")).departed


def test_the_account_was_live_until_it_was_disabled(directory):
    assert directory.employee_as_of("E2", at("2026-11-03T09:00")).account_enabled
    assert not directory.employee_as_of("E2", at("2026-11-04T10:30")).account_enabled
    assert directory.employee_as_of("E3", at("2026-11-10T09:00")).account_enabled  # never disabled


def test_suspended_not_yet_hired_and_unknown(directory):
    suspended = directory.employee_as_of("E4", at("2026-11-02T10:00"))
    assert suspended.status == "suspended" and roles(suspended) == ["store_clerk"]  # the check denies on status
    assert directory.employee_as_of("E5", at("2026-11-08T10:00")).status == "not_yet_hired"
    assert roles(directory.employee_as_of("E5", at("2026-11-08T10:00"))) == []
    assert directory.employee_as_of("E5", at("2026-11-09T00:00")).status == "active"
    assert directory.employee_as_of("E404", at("2026-11-02T10:00")) is None
    assert directory.employee_as_of(None, at("2026-11-02T10:00")) is None


def test_times_in_any_zone_compare_as_instants(directory):
    utc = dt.datetime(2026, 11, 2, 9, 59, tzinfo=dt.timezone.utc)  # 17:59 in Shanghai
    assert not directory.employee_as_of("E2", utc).departed
    assert directory.employee_as_of("E2", utc + dt.timedelta(minutes=2)).departed


def test_transitions_tell_which_days_change(directory):
    e2 = directory.employees["E2"]
    day = at("2026-11-02T00:00").timestamp()
    assert e2.changes_between(day, day + 86400)  # the 18:00 departure
    assert not e2.changes_between(day + 86400, day + 2 * 86400)
    # a change exactly at the start is already in force there: not inside
    assert not e2.changes_between(at("2026-11-02T18:00").timestamp(), day + 86400)


@pytest.mark.parametrize("text, local, on", [
    ("09:00-18:00 mon-fri", "2026-11-02T09:00", True),  # Monday
    ("09:00-18:00 mon-fri", "2026-11-02T17:59", True),
    ("09:00-18:00 mon-fri", "2026-11-02T18:00", False),
    ("09:00-18:00 mon-fri", "2026-11-07T10:00", False),  # Saturday
    ("22:00-06:00 mon", "2026-11-02T23:00", True),
    ("22:00-06:00 mon", "2026-11-03T05:59", True),  # Monday's night shift, on Tuesday morning
    ("22:00-06:00 mon", "2026-11-03T23:00", False),
    ("08:30-17:00 sat-mon", "2026-11-08T12:00", True),  # Sunday, inside a wrapping day range
    ("00:00-24:00", "2026-11-04T03:00", True),
])
def test_schedule_covers(text, local, on):
    assert Schedule.from_config(text).covers(dt.datetime.fromisoformat(local)) is on


def test_schedule_spans_of_a_day_include_last_nights_tail():
    night = Schedule.from_config({"hours": "22:00-06:00", "days": ["mon"]})
    spans = night.intervals_on(dt.date(2026, 11, 3), SH)  # Tuesday
    assert spans == ((at("2026-11-02T22:00").timestamp(), at("2026-11-03T06:00").timestamp()),)
    assert night.intervals_on(dt.date(2026, 11, 4), SH) == ()


@pytest.mark.parametrize("bad, message", [
    ("9-18", "expected hours such as"),
    ("０８:00-20:00", "expected hours such as"),  # full-width digits: accepted until a hostile trial
    ("25:00-26:00", "no such time of day"),
    ("09:00-18:00 someday", "unknown day 'someday'"),
    ({"hours": "09:00-18:00", "weekdays": "mon"}, "unknown key 'weekdays'"),
    (42, "expected hours such as"),
])
def test_bad_schedules_say_why(bad, message):
    with pytest.raises(ValueError, match=message):
        Schedule.from_config(bad)


def test_a_bad_shift_in_the_file_is_located(tmp_path):
    problems = Problems()
    path = tmp_path / "directory.yaml"
    path.write_text("shifts: {late: '13:00-21:30 tue-sunday'}\n", encoding="utf-8")
    assert load_directory(path, problems) is None
    assert [str(p) for p in problems.items] == [f"{path}:1:16: shifts.late: unknown day 'sunday' "
                                                "(valid: mon, tue, wed, thu, fri, sat, sun)"]
