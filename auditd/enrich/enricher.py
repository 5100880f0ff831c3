"""The enrich stage: directory facts about the actor, sensitivity, and pseudonyms.

Every fact is as of the event's own time, never the wall clock, so replaying a log
gives the same facts as tailing it did. Facts are computed once per (employee, local
day) and reused for that employee's other events of the day; only on a day when the
employee's record changes (a departure at 18:00, a role ending) is each event looked
up on its own.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import OrderedDict, deque
from itertools import chain, compress, islice, repeat
from operator import attrgetter
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from auditd.config.typed import DEFAULT_ZONE
from auditd.directory.model import Directory, Employee, EmployeeView
from auditd.enrich.pseudonym import Pseudonymiser
from auditd.event import AccessEvent

DEFAULT_SENSITIVE_CATEGORIES = frozenset({"property", "location", "biometric"})
# records that identify a customer; an order id alone is not PI (configurable)
CUSTOMER_RESOURCE_TYPES = frozenset({"customer", "address", "payment", "points", "location", "face"})

WorkingDaysBetween = Callable[[dt.date, dt.date], int]


class EntitlementCheck(Protocol):
    """The least-privilege check (auditd.entitlement.EntitlementChecker): it reads the
    actor facts this stage has just joined and writes `entitlement_*`."""

    def set_directory(self, directory: Directory | None) -> None: ...

    def check(self, events: list[AccessEvent]) -> None: ...


@dataclass(frozen=True, slots=True)
class ActorFacts:
    """What the directory says about one employee on one local day."""

    known: bool
    name: str | None = None
    status: str | None = None
    store: str | None = None
    region: str | None = None
    departed: bool | None = None
    departed_working_days: int | None = None
    roles: tuple[str, ...] = ()
    shift_spans: tuple[tuple[float, float], ...] | None = None  # None: no shift known
    changes_today: bool = False  # the record changes during the day: look up each event


UNKNOWN_ACTOR = ActorFacts(known=False)
# a record id that ends in a number: its block of 64 consecutive ids is what the
# enumeration kind needs (sequential ids), and the id itself is not
_NUMBERED_ID = re.compile(r"([^0-9]*)([0-9]{1,18})")
_subject_ids = attrgetter("subject_ids")
_resource_type = attrgetter("resource_type")
_resource_id = attrgetter("resource_id")
_run = deque(maxlen=0).extend  # runs an iterator (of setattr calls) to its end, in C


class Enricher:
    def __init__(
        self,
        directory: Directory | None,
        pseudonymiser: Pseudonymiser,
        *,
        sensitive_categories: Iterable[str] = DEFAULT_SENSITIVE_CATEGORIES,
        pseudonymised_resource_types: Iterable[str] = CUSTOMER_RESOURCE_TYPES,
        zone: dt.tzinfo = DEFAULT_ZONE,
        working_days_between: WorkingDaysBetween | None = None,
        entitlement: EntitlementCheck | None = None,
        cached_days: int = 3,
        shift_grace_s: float = 0.0,
    ):
        """`working_days_between(last_day_employed, event_day)`, when given, fills
        `actor_departed_working_days` (the working-day calendar is not this stage's).
        `entitlement`, when given, judges each access after the directory join; it is
        handed every directory this enricher is given. An access up to `shift_grace_s`
        before a shift starts or after it ends is on shift (overtime, early starts)."""
        self.entitlement = entitlement
        self.pseudonymiser = pseudonymiser
        self.sensitive_categories = frozenset(sensitive_categories)
        self.pseudonymised_resource_types = frozenset(pseudonymised_resource_types)
        self.zone = zone
        self.working_days_between = working_days_between
        self.cached_days = max(1, cached_days)
        self.shift_grace_s = max(0.0, shift_grace_s)
        self._sensitive: dict[tuple[str, ...], bool] = {}
        self.set_directory(directory)

    def set_directory(self, directory: Directory | None) -> None:
        """Swap in a reloaded directory; facts cached from the old one are dropped."""
        self.directory = directory
        if self.entitlement is not None:
            self.entitlement.set_directory(directory)
        self._days: OrderedDict[dt.date, dict[str | None, ActorFacts]] = OrderedDict()
        self._day = (0.0, 0.0, dt.date.min, {})  # the local day of the last event seen

    def enrich(self, events: list[AccessEvent]) -> None:
        """Fill the actor facts, `sensitive` and the pseudonyms of a batch, in place."""
        if self.directory is not None:
            self.join_directory(events)
            if self.entitlement is not None:
                # before pseudonyms: the `assigned` scope looks up the raw order and ticket ids
                self.entitlement.check(events)
        self.mark_sensitive(events)
        self.pseudonymise_ids(events)

    def join_directory(self, events: list[AccessEvent]) -> None:
        """The actor facts as of each event's time, and the resource's region from its store."""
        lo, hi, day, facts_of = self._day
        stores = self.directory.stores
        for ev in events:
            t = ev.timestamp.timestamp()
            if not lo <= t < hi:
                lo, hi, day, facts_of = self._day = self._day_of(t)
            uid = ev.user_id
            facts = facts_of.get(uid)
            if facts is None:
                facts = facts_of[uid] = self._facts_for_day(uid, day, lo, hi)
            if facts.changes_today:
                facts = self._facts(self.directory.employees[uid], day, ev.timestamp)
            ev.actor_known = facts.known
            if facts.known:
                ev.actor_status = facts.status
                ev.actor_store = facts.store
                ev.actor_region = facts.region
                ev.actor_departed = facts.departed
                ev.actor_departed_working_days = facts.departed_working_days
                ev.user_name = facts.name or ev.user_name  # the log's name only if HR has none
                ev.user_roles = facts.roles
                spans = facts.shift_spans
                if spans is not None:
                    off = True
                    for start, end in spans:
                        if start <= t < end:
                            off = False
                            break
                    ev.actor_off_shift = off
            if ev.resource_region is None and ev.resource_store is not None:
                store = stores.get(ev.resource_store)
                if store is not None:
                    ev.resource_region = store.region  # what the scope check compares

    def _day_of(self, t: float) -> tuple[float, float, dt.date, dict[str | None, ActorFacts]]:
        day = dt.datetime.fromtimestamp(t, self.zone).date()
        facts_of = self._days.get(day)
        if facts_of is None:
            facts_of = self._days[day] = {}
            while len(self._days) > self.cached_days:
                self._days.popitem(last=False)  # replay moves forward: the oldest day is done
        return self._midnight(day), self._midnight(day + dt.timedelta(days=1)), day, facts_of

    def _midnight(self, day: dt.date) -> float:
        return dt.datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp()

    def _facts_for_day(self, uid: str | None, day: dt.date, lo: float, hi: float) -> ActorFacts:
        employee = self.directory.employees.get(uid) if uid is not None else None
        if employee is None:
            return UNKNOWN_ACTOR
        if employee.changes_between(lo, hi):
            return ActorFacts(known=True, changes_today=True)
        return self._facts(employee, day, dt.datetime.fromtimestamp(lo, dt.timezone.utc))

    def _facts(self, employee: Employee, day: dt.date, when: dt.datetime) -> ActorFacts:
        view: EmployeeView = employee.as_of(when)
        departed_days = None
        if view.departed and self.working_days_between is not None:
            # the last day they were employed: 18:00 on the 30th and "the 31st" (whose end is
            # midnight of the 1st) are both counted from their own day
            last_day = (employee.departure - dt.timedelta(microseconds=1)).astimezone(self.zone).date()
            departed_days = self.working_days_between(last_day, day)
        shift = employee.shift
        return ActorFacts(
            known=True, name=employee.name, status=view.status, store=employee.store,
            region=employee.region, departed=view.departed, departed_working_days=departed_days,
            roles=tuple(r.id for r in view.roles),
            shift_spans=self._shift_spans(shift, day) if shift is not None else None,
        )

    def _shift_spans(self, shift, day: dt.date) -> tuple[tuple[float, float], ...]:
        """The shift's spans that reach into the day, widened by the grace (once per
        employee and day, never per event)."""
        grace = self.shift_grace_s
        if not grace:
            return shift.intervals_on(day, self.zone)
        spans: set[tuple[float, float]] = set()
        for offset in (-1, 0, 1):  # yesterday's overtime and tomorrow's early start reach today
            spans.update(shift.intervals_on(day + dt.timedelta(days=offset), self.zone))
        return tuple(sorted((start - grace, end + grace) for start, end in spans))

    def mark_sensitive(self, events: list[AccessEvent]) -> None:
        known = self._sensitive
        for ev in events:
            cats = ev.categories
            if not cats:
                continue
            flag = known.get(cats)
            if flag is None:
                flag = known[cats] = not self.sensitive_categories.isdisjoint(cats)
            if flag:
                ev.sensitive = True  # never cleared: a decoder may have marked it already

    def pseudonymise_ids(self, events: list[AccessEvent]) -> None:
        """Every subject id, and the resource id of customer records, as its pseudonym.

        The ids of the whole list go through the pseudonymiser at once, and back into
        their events by C built-ins (map, islice): most ids are cached, and a Python call
        per id or per event would cost more than the lookups."""
        subjects = list(map(_subject_ids, events))
        lengths = list(map(len, subjects))
        is_customer_record = self.pseudonymised_resource_types.__contains__
        records = [ev for ev in compress(events, map(is_customer_record, map(_resource_type, events)))
                   if ev.resource_id is not None]
        raws = list(chain.from_iterable(subjects))
        raws += map(_resource_id, records)
        if not raws:
            return
        numbered = []
        for ev in records:
            m = _NUMBERED_ID.fullmatch(ev.resource_id)
            if m is not None:
                n = int(m[2])
                ev.resource_seq_offset = n & 63
                numbered.append(ev)
                raws.append(f"{ev.resource_type}:{m[1]}#{n >> 6}")
        done = iter(self.pseudonymiser.each(raws))
        _run(map(setattr, events, repeat("subject_ids"), map(tuple, map(islice, repeat(done), lengths))))
        _run(map(setattr, records, repeat("resource_id"), islice(done, len(records))))
        _run(map(setattr, numbered, repeat("resource_seq_block"), done))
