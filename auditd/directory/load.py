"""Load the directory file (YAML, with employees optionally in CSV files) into a Directory.

Every problem is located (file:line:column and key path) and all of them are collected
before the caller fails, as for every other configuration file.

Time bounds: a date alone in ``from`` or ``hire_date`` means the start of that day; a
date alone in ``until`` or ``departure`` means the *end* of that day (the person works
their last day), i.e. midnight of the next day. A time without an offset is in the
company's zone (Asia/Shanghai). A departure of ``2026-11-03T18:00`` means an access at
17:59 is still theirs and one at 18:00 or later is a departed employee's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Collection, Literal

from auditd.config.located import Doc, PathKey, Problems, load_yaml_file
from auditd.config.typed import DEFAULT_ZONE, MISSING, convert, key
from auditd.directory.csvfile import load_employee_csv
from auditd.directory.model import (
    Directory, Employee, FileStamp, Partner, Region, Role, RoleAssignment, Store,
)
from auditd.directory.schedule import Schedule, looks_like_hours


@dataclass(frozen=True, slots=True)
class AssignmentSpec:
    role: str
    valid_from: dt.date | dt.datetime | None = key("from", default=None)
    valid_until: dt.date | dt.datetime | None = key("until", default=None)


@dataclass(frozen=True, slots=True)
class EmployeeSpec:
    """An employee as written in YAML or one CSV row (CSV columns use the same keys)."""

    id: str
    name: str
    roles: tuple[Any, ...] = ()  # AssignmentSpec mappings, or a bare name: held since hire
    store: str | None = None
    region: str | None = None  # default: the store's region
    shift: Any = None  # a name from `shifts:`, or inline hours
    status: Literal["active", "suspended", "departed"] = "active"
    hire_date: dt.date | None = None
    departure: dt.date | dt.datetime | None = None
    account_enabled: bool = True
    account_disabled_at: dt.datetime | None = None
    # the employee's own e-mail and phone: a customer contact that matches them is never
    # sent an incident notice about this employee (the suspected insider)
    email: str | None = None
    phone: str | None = None


@dataclass(frozen=True, slots=True)
class DirectoryFile:
    regions: tuple[Region, ...] = ()
    stores: tuple[Store, ...] = ()
    shifts: dict[str, Schedule] = field(default_factory=dict)
    roles: tuple[Role, ...] = ()
    partners: tuple[Partner, ...] = ()
    employees: tuple[EmployeeSpec, ...] = ()
    employees_csv: tuple[Path, ...] = ()  # relative to this file


def load_directory(
    path: Path | str,
    problems: Problems,
    *,
    referrer: Doc | None = None,
    key_path: PathKey = (),
    categories: Collection[str] | None = None,
) -> Directory | None:
    """Load a directory file; return None (with problems added) if anything is wrong.

    `categories` are the data categories grants may name (the config's `categories`);
    None skips that check, for tools that load a directory without a config.
    """
    path = Path(path)
    mine = Problems()
    stamps = [stamp(path)]
    doc = load_yaml_file(path, mine, key_path=key_path, referrer=referrer)
    spec = convert(DirectoryFile, doc.data, doc, (), mine) if doc is not None else MISSING
    if spec is MISSING:
        problems.extend(mine)
        return None
    builder = _Builder(doc, mine, None if categories is None else frozenset(categories))
    builder.add_places(spec)
    builder.add_roles(spec.roles)
    builder.add_partners(spec.partners)
    for i, emp in enumerate(spec.employees):
        if emp is not MISSING:  # a list keeps the items that failed conversion as MISSING
            builder.add_employee(doc, ("employees", i), emp, spec.shifts)
    for i, csv_path in enumerate(spec.employees_csv):
        if csv_path is MISSING:
            continue
        stamps.append(stamp(csv_path))
        rows = load_employee_csv(csv_path, mine, referrer=doc, key_path=("employees_csv", i))
        for row_doc, row_path, row in rows:
            emp = convert(EmployeeSpec, row, row_doc, row_path, mine)
            if emp is not MISSING:
                builder.add_employee(row_doc, row_path, emp, spec.shifts)
    problems.extend(mine)
    if mine:
        return None
    return builder.directory(tuple(stamps))


def stamp(path: Path) -> FileStamp:
    """Size, mtime, inode and ctime of a file now; taken *before* reading, so a write during the
    read shows up as a change at the next check rather than being missed."""
    try:
        st = Path(path).stat()
    except OSError:
        return FileStamp(Path(path), None, None, None, None)
    return FileStamp(Path(path), st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def start_of(value: dt.date | dt.datetime, zone: dt.tzinfo = DEFAULT_ZONE) -> dt.datetime:
    """A date means the start of that day in the company's zone."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=zone)
    return dt.datetime(value.year, value.month, value.day, tzinfo=zone)


def end_of(value: dt.date | dt.datetime, zone: dt.tzinfo = DEFAULT_ZONE) -> dt.datetime:
    """A date means the end of that day, i.e. the next midnight; a time means itself."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=zone)
    return start_of(value + dt.timedelta(days=1), zone)


class _Builder:
    """Cross-references the parsed file into indexed, frozen records."""

    def __init__(self, doc: Doc, problems: Problems, categories: frozenset[str] | None):
        self.doc = doc
        self.problems = problems
        self.categories = categories
        self.regions: dict[str, Region] = {}
        self.stores: dict[str, Store] = {}
        self.roles: dict[str, Role] = {}
        self.partners: dict[str, Partner] = {}
        self.employees: dict[str, Employee] = {}
        self.employee_at: dict[str, str] = {}  # id -> where it was first defined, for duplicates

    def _unique(self, index: dict, item: Any, section: str, i: int) -> bool:
        if item is MISSING:  # failed conversion, already reported
            return False
        if item.id in index:
            self.problems.add(self.doc, (section, i, "id"), f"duplicate {section[:-1]} id {item.id!r}")
            return False
        index[item.id] = item
        return True

    def add_places(self, spec: DirectoryFile) -> None:
        for i, region in enumerate(spec.regions):
            self._unique(self.regions, region, "regions", i)
        for i, store in enumerate(spec.stores):
            if store is not MISSING and store.region not in self.regions:
                message = _unknown("region", store.region, self.regions)
                self.problems.add(self.doc, ("stores", i, "region"), message)
            self._unique(self.stores, store, "stores", i)

    def add_roles(self, roles: tuple[Role, ...]) -> None:
        for i, role in enumerate(roles):
            if not self._unique(self.roles, role, "roles", i) or self.categories is None:
                continue
            for g, grant in enumerate(role.grants):
                for c, category in enumerate(() if grant is MISSING else grant.categories):
                    if category not in self.categories:
                        path = ("roles", i, "grants", g, "categories", c)
                        self.problems.add(self.doc, path, _unknown("data category", category, self.categories))

    def add_partners(self, partners: tuple[Partner, ...]) -> None:
        for i, partner in enumerate(partners):
            self._unique(self.partners, partner, "partners", i)

    def add_employee(self, doc: Doc, path: PathKey, spec: EmployeeSpec, shifts: dict[str, Schedule]) -> None:
        before = len(self.problems.items)
        if spec.id in self.employee_at:
            first = self.employee_at[spec.id]
            self.problems.add(doc, path + ("id",), f"duplicate employee id {spec.id!r} (first at {first})")
            return
        self.employee_at[spec.id] = str(doc.where(path + ("id",)))
        region = self._employee_region(doc, path, spec)
        assignments = self._assignments(doc, path, spec)
        shift = self._shift(doc, path, spec.shift, shifts)
        if shift is None and spec.store in self.stores:
            shift = self.stores[spec.store].hours  # store staff without a shift: the store's hours
        departure = end_of(spec.departure) if spec.departure is not None else None
        hired_at = start_of(spec.hire_date) if spec.hire_date is not None else None
        self._check_dates(doc, path, spec, hired_at, departure)
        if len(self.problems.items) == before:
            self.employees[spec.id] = Employee(
                id=spec.id, name=spec.name, assignments=assignments, store=spec.store, region=region,
                shift=shift, status=spec.status, hired_at=hired_at, departure=departure,
                account_enabled=spec.account_enabled, account_disabled_at=spec.account_disabled_at,
                email=spec.email, phone=spec.phone,
            )

    def _employee_region(self, doc: Doc, path: PathKey, spec: EmployeeSpec) -> str | None:
        store = self.stores.get(spec.store) if spec.store is not None else None
        if spec.store is not None and store is None:
            self.problems.add(doc, path + ("store",), _unknown("store", spec.store, self.stores))
        if spec.region is not None and spec.region not in self.regions:
            self.problems.add(doc, path + ("region",), _unknown("region", spec.region, self.regions))
        if store is not None and spec.region is not None and spec.region != store.region:
            self.problems.add(doc, path + ("region",),
                              f"region {spec.region!r} differs from store {store.id}'s region {store.region!r}")
        return spec.region if spec.region is not None else (store.region if store else None)

    def _assignments(self, doc: Doc, path: PathKey, spec: EmployeeSpec) -> tuple[RoleAssignment, ...]:
        out: list[RoleAssignment] = []
        for i, a in enumerate(spec.roles):
            where = path + ("roles", i)
            # converted here, not as a union, so a mapping's own errors (an unknown key) show
            if isinstance(a, (str, int, float, bool)):
                name, why = doc.read_as_text(where, a)
                if name is None:
                    self.problems.add(doc, where, why or f"expected a role name or a mapping, got {a!r}")
                    continue
                a = AssignmentSpec(name)
            else:
                a = convert(AssignmentSpec, a, doc, where, self.problems)
            if a is MISSING:
                continue
            role = self.roles.get(a.role)
            if role is None:
                self.problems.add(doc, where + ("role",), _unknown("role", a.role, self.roles))
                continue
            start = start_of(a.valid_from) if a.valid_from is not None else None
            end = end_of(a.valid_until) if a.valid_until is not None else None
            if start is not None and end is not None and end <= start:
                self.problems.add(doc, where + ("until",), "'until' is before 'from'")
                continue
            for j, other in enumerate(out):
                if other.role is role and _overlap(other, start, end):
                    self.problems.add(doc, where, f"role {role.id!r} overlaps its validity at roles[{j}]")
            out.append(RoleAssignment(role, start, end))
        return tuple(out)

    def _shift(self, doc: Doc, path: PathKey, value: Any, shifts: dict[str, Schedule]) -> Schedule | None:
        if value is None:
            return None
        if isinstance(value, str) and not looks_like_hours(value):
            if value not in shifts:
                self.problems.add(doc, path + ("shift",), _unknown("shift", value, shifts))
            return shifts.get(value)
        try:
            return Schedule.from_config(value)
        except ValueError as exc:
            self.problems.add(doc, path + ("shift",), str(exc))
            return None

    def _check_dates(self, doc: Doc, path: PathKey, spec: EmployeeSpec,
                     hired_at: dt.datetime | None, departure: dt.datetime | None) -> None:
        if spec.status == "departed" and departure is None:
            self.problems.add(doc, path + ("departure",), "a departed employee needs a departure time")
        if hired_at is not None and departure is not None and departure <= hired_at:
            self.problems.add(doc, path + ("departure",), "departure is before the hire date")
        if spec.account_disabled_at is not None and spec.account_enabled:
            self.problems.add(doc, path + ("account_enabled",),
                              "account_disabled_at is set, so account_enabled must be false")

    def directory(self, sources: tuple[FileStamp, ...]) -> Directory:
        return Directory(
            regions=MappingProxyType(self.regions), stores=MappingProxyType(self.stores),
            roles=MappingProxyType(self.roles), partners=MappingProxyType(self.partners),
            employees=MappingProxyType(self.employees), sources=sources,
        )


def _overlap(a: RoleAssignment, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    a_starts_before_end = a.valid_from is None or end is None or a.valid_from < end
    starts_before_a_ends = a.valid_until is None or start is None or start < a.valid_until
    return a_starts_before_end and starts_before_a_ends


def _unknown(what: str, name: Any, known: Collection[str]) -> str:
    names = sorted(known)
    listed = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
    return f"unknown {what} {name!r} (known: {listed or 'none'})"
