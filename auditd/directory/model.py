"""The HR directory as frozen types: who works where, in which roles, when.

Regions, stores, roles with their grants, and partners are read from YAML as they are;
employees are built from their YAML or CSV rows (see ``load``) with every validity
bound turned into an aware instant, so that ``Directory.employee_as_of`` answers
"who was this person at that moment" by comparisons alone.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Mapping

from auditd.config.checks import check_countries_and_networks
from auditd.directory.schedule import Schedule
from auditd.event import ACTIONS

Scope = Literal["all", "own_store", "own_region", "assigned"]
FileStatus = Literal["active", "suspended", "departed"]
# as-of statuses: the file's status plus the two that only a moment can tell
ACTIVE, SUSPENDED, DEPARTED, NOT_YET_HIRED = "active", "suspended", "departed", "not_yet_hired"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a role may do: these actions on these data categories, within a scope.

    ``unmask`` lets the access return sensitive fields unmasked (``masked: false``);
    an ``unmask`` action needs a grant that lists it and sets ``unmask: true``.
    """

    categories: tuple[str, ...]
    actions: tuple[str, ...]
    scope: Scope = "own_store"
    purpose_required: bool = False
    unmask: bool = False

    def check(self):
        if not self.categories:
            yield "categories", "a grant needs at least one category"
        if not self.actions:
            yield "actions", "a grant needs at least one action"
        for i, action in enumerate(self.actions):
            if action not in ACTIONS:
                yield ("actions", i), f"unknown action {action!r} (valid: {', '.join(ACTIONS)})"
        if "unmask" in self.actions and not self.unmask:
            yield "unmask", "a grant with action 'unmask' must set unmask: true"

    def covers(self, category: str, action: str) -> bool:
        return category in self.categories and action in self.actions


@dataclass(frozen=True, slots=True)
class Role:
    id: str
    description: str = ""
    grants: tuple[Grant, ...] = ()
    # (category, action) -> grants that cover it: the least-privilege check's O(1) entry
    by_category_action: Mapping[tuple[str, str], tuple[Grant, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], list[Grant]] = {}
        for grant in self.grants:
            if not isinstance(grant, Grant):
                continue  # failed conversion: its problem is recorded and the file will be rejected
            for category in grant.categories:
                for action in grant.actions:
                    index.setdefault((category, action), []).append(grant)
        frozen = {k: tuple(v) for k, v in index.items()}
        object.__setattr__(self, "by_category_action", MappingProxyType(frozen))


@dataclass(frozen=True, slots=True)
class Region:
    id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Store:
    id: str
    region: str
    name: str = ""
    hours: Schedule | None = None


@dataclass(frozen=True, slots=True)
class Partner:
    """A third party that receives shares: which fields, to which countries."""

    id: str
    name: str = ""
    allowed_fields: tuple[str, ...] = ()
    countries: tuple[str, ...] = ("CN",)  # ISO 3166-1 alpha-2
    networks: tuple[str, ...] = ()  # the partner's receiving addresses; empty: not checked

    def check(self):
        return check_countries_and_networks(self.countries, self.networks)


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    """A role held from `valid_from` (inclusive) until `valid_until` (exclusive)."""

    role: Role
    valid_from: dt.datetime | None = None  # None: since before the records begin
    valid_until: dt.datetime | None = None  # None: still held

    def valid_at(self, when: dt.datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= when) and (
            self.valid_until is None or when < self.valid_until
        )


@dataclass(frozen=True, slots=True)
class Employee:
    id: str  # 工号
    name: str  # staff data, not customer PI: it may appear in alerts as it is
    assignments: tuple[RoleAssignment, ...]
    store: str | None
    region: str | None
    shift: Schedule | None  # the employee's own, else the store's hours, else None
    status: FileStatus
    hired_at: dt.datetime | None  # start of the hire date
    departure: dt.datetime | None  # the first instant at which they are gone
    account_enabled: bool
    account_disabled_at: dt.datetime | None
    email: str | None = None  # staff data; respond keeps the insider's own contacts off notices
    phone: str | None = None
    # POSIX instants at which employee_as_of changes its answer, sorted
    transitions: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bounds = [self.hired_at, self.departure, self.account_disabled_at]
        for a in self.assignments:
            bounds += [a.valid_from, a.valid_until]
        object.__setattr__(self, "transitions", tuple(sorted({b.timestamp() for b in bounds if b})))

    def status_at(self, when: dt.datetime) -> str:
        if self.departure is not None and when >= self.departure:
            return DEPARTED
        if self.hired_at is not None and when < self.hired_at:
            return NOT_YET_HIRED
        # a status of "departed" with a future departure: still working their notice
        return SUSPENDED if self.status == SUSPENDED else ACTIVE

    def as_of(self, when: dt.datetime) -> "EmployeeView":
        status = self.status_at(when)
        # someone gone, or not yet hired, holds no role whatever the assignment dates say
        roles = () if status in (DEPARTED, NOT_YET_HIRED) else tuple(
            a.role for a in self.assignments if a.valid_at(when)
        )
        if self.account_disabled_at is not None:  # dated: it was live before that moment
            enabled = when < self.account_disabled_at
        else:
            enabled = self.account_enabled
        return EmployeeView(self, when, status, roles, enabled)

    def changes_between(self, start: float, end: float) -> bool:
        """Whether the as-of view changes strictly inside (start, end), POSIX seconds."""
        i = bisect_right(self.transitions, start)
        return i < len(self.transitions) and self.transitions[i] < end


@dataclass(frozen=True, slots=True)
class EmployeeView:
    """An employee as they were at one moment: status, and the roles valid then."""

    employee: Employee
    when: dt.datetime
    status: str  # active, suspended, departed, not_yet_hired
    roles: tuple[Role, ...]
    account_enabled: bool

    @property
    def id(self) -> str:
        return self.employee.id

    @property
    def name(self) -> str:
        return self.employee.name

    @property
    def store(self) -> str | None:
        return self.employee.store

    @property
    def region(self) -> str | None:
        return self.employee.region

    @property
    def departed(self) -> bool:
        return self.status == DEPARTED

    def grants_for(self, category: str, action: str) -> tuple[Grant, ...]:
        """Every grant, across the roles valid then, that covers this category and action."""
        out: tuple[Grant, ...] = ()
        for role in self.roles:
            out += role.by_category_action.get((category, action), ())
        return out


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What a directory source file looked like when it was read, to notice changes."""

    path: Path
    mtime_ns: int | None  # None: the file was missing
    size: int | None
    inode: int | None
    ctime_ns: int | None  # what no writer can set back: a rewrite keeping size and mtime shows here


@dataclass(frozen=True, slots=True)
class Directory:
    regions: Mapping[str, Region]
    stores: Mapping[str, Store]
    roles: Mapping[str, Role]
    partners: Mapping[str, Partner]
    employees: Mapping[str, Employee]
    sources: tuple[FileStamp, ...] = ()  # the YAML file first, then its CSV files

    def __len__(self) -> int:
        return len(self.employees)

    def employee_as_of(self, user_id: str | None, when: dt.datetime) -> EmployeeView | None:
        """The employee as they were at `when` (aware), or None for an unknown id."""
        employee = self.employees.get(user_id) if user_id is not None else None
        return employee.as_of(when) if employee is not None else None

    def store_region(self, store_id: str | None) -> str | None:
        store = self.stores.get(store_id) if store_id is not None else None
        return store.region if store is not None else None
