"""The example generator's own reading of an HR directory file (examples/directory.yaml).

Written apart from the daemon's loader on purpose: the generator's ground truth must
not come from the code it grades, or a bug in the daemon's directory would hide itself
(the test suite compares the two). It reads what the generator needs and trusts the
file to be valid (`neo-auditd check` validates it): stores and their regions, named and
inline shifts, and employees from YAML or the `employees_csv:` files, with their role
assignments over time.

Time bounds follow the directory's documented meaning: a date alone in `from` or
`hire_date` is the start of that day, in `until` or `departure` the end of that day;
a time without an offset is in the company's zone.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")


@dataclass(frozen=True)
class Hours:
    """Weekly hours: '08:30-17:00 mon-sat'; a window ending before it starts runs past midnight."""

    start_minute: int
    end_minute: int
    days: frozenset[int]  # weekdays a window starts on, Monday = 0
    text: str

    @classmethod
    def parse(cls, value: Any) -> "Hours":
        if isinstance(value, dict):
            hours, days = value["hours"], value.get("days")
        else:
            hours, _, days = str(value).strip().partition(" ")
        m = _WINDOW.fullmatch(hours.strip())
        if m is None:
            raise ValueError(f"not hours: {value!r}")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            start, end = 0, 24 * 60
        return cls(start, end, _days(days or None), str(value))

    def windows_on(self, day: dt.date, zone: dt.tzinfo) -> list[tuple[int, int]]:
        """The window that starts on `day`, if any, as epoch-ms (start, end)."""
        if day.weekday() not in self.days:
            return []
        midnight = dt.datetime(day.year, day.month, day.day)
        start = midnight + dt.timedelta(minutes=self.start_minute)
        end_day = midnight + dt.timedelta(days=1) if self.end_minute <= self.start_minute else midnight
        end = end_day + dt.timedelta(minutes=self.end_minute)
        return [(_ms(start.replace(tzinfo=zone)), _ms(end.replace(tzinfo=zone)))]


def _days(value: Any) -> frozenset[int]:
    if value is None:
        return frozenset(range(7))
    parts = value if isinstance(value, list) else [p for p in str(value).split(",") if p.strip()]
    out: set[int] = set()
    for part in parts:
        first, _, last = part.strip().lower().partition("-")
        a, b = DAY_NAMES.index(first), DAY_NAMES.index(last or first)
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(out)


@dataclass(frozen=True)
class Assignment:
    role: str
    start_ms: int | None  # None: since ever
    end_ms: int | None  # None: for good


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    store: str | None
    region: str | None
    hours: Hours | None
    status: str  # active | suspended | departed
    hired_ms: int | None
    departure_ms: int | None
    account_enabled: bool
    assignments: tuple[Assignment, ...]


@dataclass(frozen=True)
class Company:
    stores: dict[str, str]  # store id -> region id, in file order
    people: tuple[Person, ...]  # sorted by id


def read_company(path: Path, zone: dt.tzinfo) -> Company:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    stores = {s["id"]: s["region"] for s in doc.get("stores", [])}
    store_hours = {s["id"]: Hours.parse(s["hours"]) for s in doc.get("stores", []) if s.get("hours")}
    shifts = {name: Hours.parse(value) for name, value in (doc.get("shifts") or {}).items()}
    rows = list(doc.get("employees") or [])
    for name in doc.get("employees_csv") or []:
        rows.extend(_csv_rows(Path(path).parent / name))
    people = []
    for row in rows:
        store = row.get("store") or None
        shift = row.get("shift")
        if shift in shifts:
            hours = shifts[shift]
        elif shift:
            hours = Hours.parse(shift)
        else:
            hours = store_hours.get(store) if store else None
        people.append(Person(
            id=str(row["id"]), name=str(row["name"]), store=store,
            region=row.get("region") or (stores.get(store) if store else None), hours=hours,
            status=row.get("status") or "active",
            hired_ms=_bound(row.get("hire_date"), zone, end=False),
            departure_ms=_bound(row.get("departure"), zone, end=True),
            account_enabled=row.get("account_enabled", True) not in (False, "false", "no", "0"),
            assignments=tuple(_assignment(a, zone) for a in row.get("roles") or ()),
        ))
    return Company(stores, tuple(sorted(people, key=lambda p: p.id)))


def _assignment(value: Any, zone: dt.tzinfo) -> Assignment:
    if isinstance(value, dict):
        return Assignment(str(value["role"]), _bound(value.get("from"), zone, end=False),
                          _bound(value.get("until"), zone, end=True))
    return Assignment(str(value), None, None)


def _bound(value: Any, zone: dt.tzinfo, *, end: bool) -> int | None:
    """Epoch ms of a date or time; a date alone is its day's start, or its end when `end`."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value) if "T" in value or " " in value else dt.date.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return _ms(value if value.tzinfo else value.replace(tzinfo=zone))
    day = value + dt.timedelta(days=1) if end else value
    return _ms(dt.datetime(day.year, day.month, day.day, tzinfo=zone))


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an employees CSV; roles are 'role@from..until' items separated by ';'."""
    out = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v.strip() for k, v in row.items() if v is not None and v.strip()}
            roles = []
            for item in row.get("roles", "").split(";"):
                role, _, bounds = item.strip().partition("@")
                if not role:
                    continue
                start, _, until = bounds.partition("..")
                roles.append({"role": role, "from": start or None, "until": until or None} if bounds else role)
            row["roles"] = roles
            out.append(row)
    return out


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)
