"""Mainland-China working days on the real calendar, the override file, the fallback."""

from __future__ import annotations

import datetime as dt
import logging
import textwrap

import pytest

from auditd.config.located import Problems
from auditd.workdays import (
    FALLBACK,
    OVERRIDE,
    PACKAGE,
    WorkdaySettings,
    WorkingCalendar,
    load_calendar,
    load_overrides,
)

D = dt.date

# 2027 is not in chinese-calendar 1.11.0; a made-up schedule in the shape of a real one
OVERRIDES_2027 = """\
years:
  2027:
    holidays:
      - 2027-01-01
      - 2027-02-05..2027-02-11
    workdays: [2027-02-13]
"""


def write(tmp_path, text: str):
    path = tmp_path / "working-days.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_the_national_day_deadline_falls_on_a_make_up_saturday():
    calendar = WorkingCalendar()
    deadline = calendar.add_working_days(D(2026, 9, 30), 3)
    assert deadline == D(2026, 10, 10) and deadline.weekday() == 5  # a Saturday, worked in lieu
    assert [calendar.is_workday(D(2026, 10, d)) for d in range(1, 13)] == [
        False, False, False, False, False, False, False, True, True, True, False, True]
    assert calendar.working_days_between(D(2026, 9, 30), D(2026, 10, 10)) == 3
    assert calendar.working_days_between(D(2026, 9, 30), D(2026, 10, 7)) == 0
    assert calendar.source_of(2026) == PACKAGE and calendar.fallback_years == ()


@pytest.mark.parametrize("start, end, expected", [
    (D(2026, 11, 2), D(2026, 11, 2), 0),  # the same day: none has passed
    (D(2026, 11, 2), D(2026, 11, 1), 0),  # backwards
    (D(2026, 10, 30), D(2026, 11, 2), 1),  # Friday to Monday: Monday
    (D(2026, 10, 30), D(2026, 11, 6), 5),
    (D(2025, 12, 31), D(2026, 1, 5), 2),  # across a year: 1 January off, the 2nd and the 5th
])
def test_working_days_between(start, end, expected):
    assert WorkingCalendar().working_days_between(start, end) == expected


def test_a_year_the_package_does_not_know_uses_the_override_file(tmp_path):
    problems = Problems()
    calendar = load_calendar(WorkdaySettings(write(tmp_path, OVERRIDES_2027)), problems)
    assert not problems
    assert calendar.source_of(2027) == OVERRIDE and calendar.source_of(2026) == PACKAGE
    assert not calendar.is_workday(D(2027, 1, 1)) and calendar.is_workday(D(2027, 1, 4))
    assert calendar.is_workday(D(2027, 2, 13))  # a Saturday made a working day
    assert not calendar.is_workday(D(2027, 2, 14))  # an ordinary Sunday
    assert calendar.add_working_days(D(2027, 2, 4), 3) == D(2027, 2, 15)
    assert calendar.working_days_between(D(2027, 2, 4), D(2027, 2, 15)) == 3  # the 12th, the 13th, the 15th
    assert calendar.working_days_between(D(2026, 12, 30), D(2027, 1, 4)) == 2  # the 31st and the 4th
    assert calendar.fallback_years == ()


def test_without_override_an_unknown_year_counts_every_day_and_warns(caplog):
    calendar = WorkingCalendar()
    with caplog.at_level(logging.WARNING, logger="neo_auditd.workdays"):
        assert calendar.is_workday(D(2027, 1, 1)) and calendar.is_workday(D(2027, 1, 2))  # a holiday and a Saturday
        assert calendar.add_working_days(D(2026, 12, 31), 3) == D(2027, 1, 3)  # never later than the truth
        calendar.is_workday(D(2027, 6, 1))
    assert calendar.source_of(2027) == FALLBACK and calendar.fallback_years == (2027,)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2027" in warnings[0].getMessage()  # once per year, not per question


def test_the_override_file_wins_for_a_year_the_package_knows(tmp_path):
    path = write(tmp_path, "years:\n  2026:\n    holidays: [2026-11-02]\n")
    calendar = load_calendar(WorkdaySettings(path), Problems())
    assert calendar.source_of(2026) == OVERRIDE and not calendar.is_workday(D(2026, 11, 2))
    assert not calendar.is_workday(D(2026, 10, 10))  # the file knows no make-up day: its year is whole


@pytest.mark.parametrize("text, message", [
    ("years:\n  '27':\n    holidays: []\n", "years.27: expected a year such as 2027"),
    ("years:\n  2027:\n    holidays: [2028-01-01]\n", "years.2027.holidays[0]: 2028-01-01 is not in 2027"),
    ("years:\n  2027:\n    holidays: [soon]\n", "years.2027.holidays[0]: expected a date such as 2027-10-01"),
    ("years:\n  2027:\n    holidays: ['2027-02-11..2027-02-05']\n", "the range ends before it starts"),
    ("years:\n  2027:\n    holidays: [2027-02-13]\n    workdays: [2027-02-13]\n",
     "2027-02-13 is listed both as a holiday and as a working day"),
    ("years:\n  2027:\n    holiday: [2027-02-13]\n", "unknown key 'holiday'"),
])
def test_override_file_problems_are_located(tmp_path, text, message):
    problems = Problems()
    path = write(tmp_path, text)
    assert load_overrides(path, problems) is None
    assert any(message in str(p) and str(p).startswith(f"{path}:") for p in problems.items), problems.items


def test_a_missing_override_file_is_a_problem_of_the_config(tmp_path):
    problems = Problems()
    assert load_calendar(WorkdaySettings(tmp_path / "nope.yaml"), problems) is None
    assert "file not found" in str(problems.items[0])


def test_add_zero_and_negative():
    calendar = WorkingCalendar()
    assert calendar.add_working_days(D(2026, 10, 3), 0) == D(2026, 10, 3)
    with pytest.raises(ValueError):
        calendar.add_working_days(D(2026, 10, 3), -1)
