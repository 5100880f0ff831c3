"""Due times: a span after an anchor (the discovery, or the resolution), in minutes,
hours, calendar days or mainland-China working days.

    Due.from_config("4h")  Due.from_config("15m")  Due.from_config("30d")
    Due.from_config("3wd") Due.from_config("3 working days")

A working-day due time is the same local time (Asia/Shanghai by default) on the n-th
working day after the anchor's local date: statutory holidays are skipped and make-up
weekend days count (``auditd.workdays``). Where the calendar knows neither the year
nor an override, every day counts, so such a deadline can only come early.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from auditd.workdays import WorkingCalendar

_UNITS = {"m": 60, "min": 60, "h": 3600, "d": 86400}
# The legal clocks run hours to 30 days; a due time past a year is a typo, and one past
# datetime's range would stop every playbook's clock at run time.
MAX_SECONDS, MAX_WORKING_DAYS = 366 * 86400, 250
_TOO_FAR = "a due time is at most a year (366d, or 250wd)"
_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|wd|working days?)\s*", re.IGNORECASE)


@dataclass(frozen=True, slots=True, order=True)
class Due:
    seconds: float = 0.0  # a calendar span, or 0
    working_days: int = 0  # counted on the working-day calendar (never both)

    @classmethod
    def from_config(cls, value: Any) -> "Due":
        if isinstance(value, bool):
            raise ValueError("expected a due time such as '15m', '4h', '30d' or '3wd'")
        if isinstance(value, (int, float)):
            if value < 0:
                raise ValueError("a due time cannot be negative")
            if not value * 60 <= MAX_SECONDS:  # also NaN
                raise ValueError(f"{_TOO_FAR}, got {value!r} minutes")
            return cls(float(value) * 60)  # a bare number: minutes
        m = _PATTERN.fullmatch(str(value))
        if m is None:
            raise ValueError(f"expected a due time such as '15m', '4h', '30d' or '3wd' (working days), got {value!r}")
        number, unit = float(m[1]), m[2].lower()
        if unit.startswith("w"):
            if number != int(number):
                raise ValueError("working days are whole days")
            if number > MAX_WORKING_DAYS:
                raise ValueError(f"{_TOO_FAR}, got {value!r}")
            return cls(working_days=int(number))
        if number * _UNITS[unit] > MAX_SECONDS:
            raise ValueError(f"{_TOO_FAR}, got {value!r}")
        return cls(seconds=number * _UNITS[unit])

    def after(self, anchor: dt.datetime, calendar: WorkingCalendar, zone: dt.tzinfo) -> dt.datetime:
        """The due instant (UTC) for this span after `anchor` (aware)."""
        if anchor.tzinfo is None:
            raise ValueError("the anchor must be timezone-aware")
        if not self.working_days:
            return (anchor + dt.timedelta(seconds=self.seconds)).astimezone(dt.timezone.utc)
        local = anchor.astimezone(zone)
        day = calendar.add_working_days(local.date(), self.working_days)
        wall = dt.datetime.combine(day, local.time().replace(tzinfo=None))
        return wall.replace(tzinfo=zone).astimezone(dt.timezone.utc)

    def __str__(self) -> str:
        if self.working_days:
            return f"{self.working_days} working day{'s' if self.working_days != 1 else ''}"
        minutes = self.seconds / 60
        if minutes % 1440 == 0 and minutes:
            return f"{minutes / 1440:g}d"
        if minutes % 60 == 0 and minutes:
            return f"{minutes / 60:g}h"
        return f"{minutes:g}m"
