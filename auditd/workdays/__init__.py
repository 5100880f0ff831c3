"""Mainland-China working days: statutory holidays off, make-up weekend days on.

    calendar = load_calendar(settings.working_days, problems)
    calendar.working_days_between(dt.date(2026, 9, 30), dt.date(2026, 10, 10))  # 3
    calendar.add_working_days(dt.date(2026, 9, 30), 3)                          # 2026-10-10

Used for the departed-staff grace ("within 3 working days") and, later, by playbooks'
working-day due times.
"""

from auditd.workdays.calendar import FALLBACK, OVERRIDE, PACKAGE, WorkingCalendar
from auditd.workdays.coverage import YearCoverage, coverage, coverage_warning, uncovered, years_ahead
from auditd.workdays.overrides import YearOverride, load_overrides
from auditd.workdays.settings import WorkdaySettings, load_calendar

__all__ = ["FALLBACK", "OVERRIDE", "PACKAGE", "WorkdaySettings", "WorkingCalendar", "YearCoverage", "YearOverride",
           "coverage", "coverage_warning", "load_calendar", "load_overrides", "uncovered", "years_ahead"]
