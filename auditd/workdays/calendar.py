"""The working-day calendar: which local dates are working days, and counting them.

Each year's answer comes from the first source that knows it:

1. the operator's override file (``overrides.py``), for years `chinese-calendar` does
   not know yet: the State Council publishes each year's schedule in November or
   December, and the package learns it only with a new release;
2. the `chinese-calendar` package (it raises NotImplementedError for other years);
3. the fallback: every calendar day is a working day. Deadlines counted in working
   days then fall on or before the true ones — never later — so a check such as "the
   account was disabled within 3 working days" can only fire early, not miss. Each
   such year is logged once as a warning and listed in `fallback_years`.

A year's days are computed once into a table of cumulative counts, so counting the
working days between two dates costs a few index operations however far apart.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import chinese_calendar

from auditd.workdays.overrides import YearOverride

log = logging.getLogger("neo_auditd.workdays")

OVERRIDE, PACKAGE, FALLBACK = "override", "chinese-calendar", "fallback"

# (date) -> is it a working day; raises NotImplementedError for a year it lacks
PackageLookup = Callable[[dt.date], bool]


@dataclass(frozen=True, slots=True)
class _Year:
    source: str  # OVERRIDE, PACKAGE or FALLBACK
    first: int  # proleptic ordinal of 1 January
    working: bytes  # one 0/1 per day of the year
    cumulative: tuple[int, ...]  # cumulative[i]: working days among the year's first i days


class WorkingCalendar:
    """Answers in local dates; converting instants to dates is the caller's (zone-aware) job."""

    def __init__(self, overrides: Mapping[int, YearOverride] | None = None, *,
                 package: PackageLookup = chinese_calendar.is_workday):
        self._overrides = dict(overrides or {})
        self._package = package
        self._years: dict[int, _Year] = {}
        self._lock = threading.Lock()  # the scheduler's sweep and the pipeline share one calendar

    # -- questions ---------------------------------------------------------------------------
    def is_workday(self, day: dt.date) -> bool:
        year = self._year(day.year)
        return bool(year.working[day.toordinal() - year.first])

    def source_of(self, year: int) -> str:
        """Which source answers for `year`: OVERRIDE, PACKAGE or FALLBACK."""
        return self._year(year).source

    def known_source(self, year: int) -> str | None:
        """OVERRIDE or PACKAGE if one knows `year`; None if only the fallback would answer.

        Looks ahead without building the year or warning: for `check`, `status` and metrics.
        """
        if year in self._overrides:
            return OVERRIDE
        table = self._years.get(year)
        if table is not None:
            return None if table.source == FALLBACK else table.source
        try:
            self._package(dt.date(year, 1, 1))  # the package knows whole years or none
        except NotImplementedError:
            return None
        return PACKAGE

    @property
    def fallback_years(self) -> tuple[int, ...]:
        """Years answered by the every-day-counts fallback so far (worth an alert to operators)."""
        return tuple(sorted(y for y, t in self._years.items() if t.source == FALLBACK))

    def working_days_between(self, start: dt.date, end: dt.date) -> int:
        """Working days d with start < d <= end: how many working days have passed since
        `start` once `end` is over. 0 when end <= start."""
        if end <= start:
            return 0
        total = self._through(end) - self._through(start)
        for year in range(start.year, end.year):  # whole years between: usually none or one
            total += self._year(year).cumulative[-1]
        return total

    def add_working_days(self, day: dt.date, n: int) -> dt.date:
        """The n-th working day after `day` (`day` itself for n = 0)."""
        if n < 0:
            raise ValueError("n must not be negative")
        current = day
        while n > 0:
            current += dt.timedelta(days=1)
            if self.is_workday(current):
                n -= 1
        return current

    # -- tables ------------------------------------------------------------------------------
    def _through(self, day: dt.date) -> int:
        """Working days from 1 January of `day`'s year through `day`."""
        year = self._year(day.year)
        return year.cumulative[day.toordinal() - year.first + 1]

    def _year(self, year: int) -> _Year:
        table = self._years.get(year)
        if table is None:
            with self._lock:
                table = self._years.get(year)
                if table is None:
                    table = self._years[year] = self._build(year)
        return table

    def _build(self, year: int) -> _Year:
        first = dt.date(year, 1, 1)
        days = [first + dt.timedelta(days=i) for i in range((dt.date(year + 1, 1, 1) - first).days)]
        override = self._overrides.get(year)
        if override is not None:
            source, working = OVERRIDE, [override.is_workday(d) for d in days]
        else:
            try:
                source, working = PACKAGE, [bool(self._package(d)) for d in days]
            except NotImplementedError:
                log.warning("no working-day calendar for %d (neither chinese-calendar nor the override file "
                            "knows it); counting every day of %d as a working day, so deadlines come early, "
                            "never late. Add the year to the override file.", year, year,
                            extra={"year": year})
                source, working = FALLBACK, [True] * len(days)
        cumulative = [0]
        for flag in working:
            cumulative.append(cumulative[-1] + flag)
        return _Year(source, first.toordinal(), bytes(working), tuple(cumulative))
