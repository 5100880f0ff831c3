"""Which years ahead the working-day calendar knows, and what to tell the operator.

A deadline counted in working days can fall up to a year ahead (the departed-staff
grace from late December, 15-day replies, playbook steps), so `check`, `status` and
the metrics look at every year from today to 12 months on. A year that neither the
override file nor `chinese-calendar` knows is answered by the fallback (every day a
working day: deadlines early, never late), which is safe but wrong, and worth a word.
"""

from __future__ import annotations

import datetime as dt
from importlib import metadata
from pathlib import Path

import msgspec

from auditd.workdays.calendar import WorkingCalendar



class YearCoverage(msgspec.Struct, frozen=True, kw_only=True):
    year: int
    source: str | None  # OVERRIDE, PACKAGE, or None: the fallback would answer


def years_ahead(today: dt.date) -> range:
    """The calendar years that the next 12 months (today included) touch."""
    try:
        end = today.replace(year=today.year + 1)
    except ValueError:  # 29 February
        end = today.replace(year=today.year + 1, day=28)
    return range(today.year, (end - dt.timedelta(days=1)).year + 1)


def coverage(calendar: WorkingCalendar, today: dt.date, *, extra_years: tuple[int, ...] = ()) -> list[YearCoverage]:
    """Each year ahead (and each of `extra_years`) with the source that knows it."""
    years = sorted(set(years_ahead(today)) | set(extra_years))
    return [YearCoverage(year=year, source=calendar.known_source(year)) for year in years]


def uncovered(years: list[YearCoverage]) -> list[int]:
    return [y.year for y in years if y.source is None]


def _package_version() -> str:
    try:
        return metadata.version("chinese-calendar")
    except metadata.PackageNotFoundError:  # pragma: no cover - a declared dependency
        return "?"


def coverage_warning(missing: list[int], override_file: Path | None) -> str | None:
    """The warning for years that only the fallback would answer; None when there are none."""
    if not missing:
        return None
    years = ", ".join(map(str, missing))
    them = "it" if len(missing) == 1 else "them"
    where = (f"the override file {override_file} does not list {them}" if override_file is not None
             else "no override file is configured")
    return (f"no working-day calendar for {years}, within the next 12 months: chinese-calendar "
            f"{_package_version()} does not know {them} and {where}. Working-day deadlines in {years} "
            f"count every day as a working day (early, never late) until you add {them} to "
            "working_days.override_file (from the State Council's holiday notice) or upgrade chinese-calendar")
