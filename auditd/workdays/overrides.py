"""The operator's working-day override file, for years `chinese-calendar` does not know.

Copy the year's schedule from the State Council's notice (国务院办公厅关于<year>年部分
节假日安排的通知) once it is published::

    years:
      2027:
        holidays:            # days off that would otherwise be working days
          - 2027-01-01
          - 2027-02-06..2027-02-12     # an inclusive range
        workdays:            # make-up working days that fall on a Saturday or Sunday
          - 2027-02-20

Every other day follows the week: Monday to Friday work, Saturday and Sunday off. A
year in this file wins over the package, so a wrong package year can be corrected.
Problems are located (file:line:column and key) and collected like every config file's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditd.config.located import Doc, PathKey, Problems, load_yaml_file
from auditd.config.typed import MISSING, convert


@dataclass(frozen=True, slots=True)
class YearOverride:
    year: int
    holidays: frozenset[dt.date] = frozenset()
    workdays: frozenset[dt.date] = frozenset()

    def is_workday(self, day: dt.date) -> bool:
        if day in self.workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays


@dataclass(frozen=True, slots=True)
class _YearSpec:
    holidays: list[Any] = field(default_factory=list)
    workdays: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _OverrideFile:
    years: dict[str, _YearSpec] = field(default_factory=dict)


def load_overrides(path: Path | str, problems: Problems, *, referrer: Doc | None = None,
                   key_path: PathKey = ()) -> dict[int, YearOverride] | None:
    """The file's years, or None (with problems added) when anything in it is wrong."""
    mine = Problems()
    doc = load_yaml_file(Path(path), mine, referrer=referrer, key_path=key_path)
    spec = convert(_OverrideFile, doc.data, doc, (), mine) if doc is not None else MISSING
    if spec is MISSING:
        problems.extend(mine)
        return None
    out: dict[int, YearOverride] = {}
    for name, year_spec in spec.years.items():
        where = ("years", name)
        if not (name.isdigit() and len(name) == 4):
            mine.add(doc, where, f"expected a year such as 2027, got {name!r}", at_key=True)
            continue
        if year_spec is MISSING:
            continue
        year = int(name)
        holidays = _dates(year_spec.holidays, year, doc, where + ("holidays",), mine)
        workdays = _dates(year_spec.workdays, year, doc, where + ("workdays",), mine)
        for day in sorted(holidays & workdays):
            mine.add(doc, where, f"{day} is listed both as a holiday and as a working day")
        out[year] = YearOverride(year, frozenset(holidays), frozenset(workdays))
    problems.extend(mine)
    return None if mine else out


def _dates(items: list[Any], year: int, doc: Doc, path: PathKey, problems: Problems) -> set[dt.date]:
    out: set[dt.date] = set()
    for i, item in enumerate(items):
        span = _span(item)
        if span is None:
            problems.add(doc, path + (i,), f"expected a date such as {year}-10-01 or a range "
                         f"{year}-10-01..{year}-10-07, got {item!r}")
            continue
        first, last = span
        if last < first:
            problems.add(doc, path + (i,), f"the range ends before it starts: {item!r}")
            continue
        if first.year != year or last.year != year:
            problems.add(doc, path + (i,), f"{item} is not in {year}")
            continue
        out.update(first + dt.timedelta(days=n) for n in range((last - first).days + 1))
    return out


def _span(item: Any) -> tuple[dt.date, dt.date] | None:
    if isinstance(item, dt.date) and not isinstance(item, dt.datetime):
        return item, item  # YAML reads an unquoted 2027-01-01 as a date already
    if not isinstance(item, str):
        return None
    first, dots, last = item.partition("..")
    try:
        start = dt.date.fromisoformat(first.strip())
        end = dt.date.fromisoformat(last.strip()) if dots else start
    except ValueError:
        return None
    return start, end
