"""Weekly working hours: an employee's shift or a store's opening hours.

Written as ``"09:00-18:00"`` (every day), ``"09:00-18:00 mon-fri"``,
``"22:00-06:00 mon,wed,fri"`` or ``{hours: "09:00-18:00", days: [mon, tue]}``. A window
whose end is not after its start runs past midnight; its hours belong to the day it
starts on, so a Monday night shift of 22:00-06:00 covers Tuesday 03:00.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})", re.ASCII)
_HELP = "expected hours such as '09:00-18:00', '09:00-18:00 mon-fri' or {hours: '09:00-18:00', days: [mon, tue]}"


def looks_like_hours(text: str) -> bool:
    """True for inline hours ('09:00-18:00 …'), false for a shift's name."""
    return _WINDOW.match(text.strip()) is not None


@dataclass(frozen=True, slots=True)
class Schedule:
    start_minute: int  # minutes after local midnight
    end_minute: int  # not after start_minute: the window ends on the next day
    days: frozenset[int]  # weekdays the window starts on, Monday = 0

    @classmethod
    def from_config(cls, value: Any) -> "Schedule":
        if isinstance(value, str):
            hours, _, days = value.strip().partition(" ")
            return cls._make(hours, days.strip() or None)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"hours", "days"})
            if unknown:
                raise ValueError(f"unknown key '{unknown[0]}' (valid keys: days, hours)")
            if not isinstance(value.get("hours"), str):
                raise ValueError("missing or non-text 'hours'; " + _HELP)
            return cls._make(value["hours"], value.get("days"))
        raise ValueError(_HELP)

    @classmethod
    def _make(cls, hours: str, days: Any) -> "Schedule":
        m = _WINDOW.fullmatch(hours.strip())
        if not m:
            raise ValueError(f"{_HELP}; got {hours!r}")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or (h1 == 24 and m1) or (h2 == 24 and m2):
            raise ValueError(f"no such time of day in {hours!r}")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end or (start == 0 and end == 24 * 60):
            start, end = 0, 24 * 60  # "00:00-24:00" or "00:00-00:00": the whole day
        return cls(start, end, parse_days(days))

    @property
    def overnight(self) -> bool:
        return self.end_minute <= self.start_minute

    def covers(self, local: dt.datetime) -> bool:
        """Whether a local (wall-clock) time falls inside these hours."""
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        if not self.overnight:
            return weekday in self.days and self.start_minute <= minute < self.end_minute
        if weekday in self.days and minute >= self.start_minute:
            return True
        return (weekday - 1) % 7 in self.days and minute < self.end_minute

    def intervals_on(self, day: dt.date, zone: dt.tzinfo) -> tuple[tuple[float, float], ...]:
        """The spans (POSIX seconds, end exclusive) of these hours that touch a local day.

        Includes the tail of the previous day's overnight window. Computed through the
        zone, so a daylight-saving change is honoured where the zone has one.
        """
        out = []
        yesterday = day - dt.timedelta(days=1)
        if self.overnight and yesterday.weekday() in self.days:
            out.append(self._span(yesterday, zone))
        if day.weekday() in self.days:
            out.append(self._span(day, zone))
        return tuple(out)

    def _span(self, day: dt.date, zone: dt.tzinfo) -> tuple[float, float]:
        midnight = dt.datetime(day.year, day.month, day.day)
        start = midnight + dt.timedelta(minutes=self.start_minute)
        end_day = midnight + dt.timedelta(days=1) if self.overnight else midnight
        end = end_day + dt.timedelta(minutes=self.end_minute)
        return start.replace(tzinfo=zone).timestamp(), end.replace(tzinfo=zone).timestamp()

    def __str__(self) -> str:
        def hhmm(minute: int) -> str:
            return f"{minute // 60:02d}:{minute % 60:02d}"

        days = ",".join(DAY_NAMES[d] for d in sorted(self.days))
        return f"{hhmm(self.start_minute)}-{hhmm(self.end_minute)} {days}"


def parse_days(value: Any) -> frozenset[int]:
    """'mon-fri', 'mon,wed', [mon, tue] or None (every day) -> weekday numbers."""
    if value is None:
        return frozenset(range(7))
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        parts = [p.strip() for p in value]
    else:
        raise ValueError("days must be names such as 'mon-fri' or [mon, tue]")
    out: set[int] = set()
    for part in parts:
        first, _, last = part.lower().partition("-")
        for name in (first, last or first):
            if name not in DAY_NAMES:
                raise ValueError(f"unknown day {name!r} (valid: {', '.join(DAY_NAMES)})")
        a, b = DAY_NAMES.index(first), DAY_NAMES.index(last or first)
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])  # 'sat-mon' wraps
    if not out:
        raise ValueError("days must name at least one day")
    return frozenset(out)
