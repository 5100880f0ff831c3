"""Route each event to only the rules that can match it, and count cheaply.

The index reads from every rule's resolved condition the values it requires of a few
low-cardinality fields (``INDEXED_SCALARS``: ``resolve.required_values``, conjuncts
such as ``event.action in (export, download)``, and 'or's whose every branch is
constrained) and of the data categories (``resolve.required_any``: the event must
hold one of them). An event is shown a rule only when it meets all of the rule's
requirements; a rule whose condition folded to false is shown no event.

Routing is one C call building the event's key (its values of the fields some rule
constrains) and one dict lookup. A key seen for the first time is reduced to what
the rules can tell apart (values no rule names are all alike, and of the categories
only the named ones count), and the bucket of that class is computed once. Buckets
keep load order, and equal buckets share a slot (and its counter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from auditd.detect.resolve import required_any, required_values
from auditd.event import FIELDS, AccessEvent

# Fields whose values are few by nature: routing on them never multiplies the keys.
INDEXED_SCALARS = ("event.action", "event.dataset", "event.outcome", "service.name", "neo.resource.type")
INDEXED_LISTS = ("neo.data.categories",)
MAX_KEYS = 4096  # distinct event keys remembered; beyond, a key is reduced each time
# The first slot holds every rule: it serves events whose key cannot be hashed (and any
# class of events that every rule admits).
EVERYTHING = 0
_OTHER = object()  # stands for every value no rule names


@dataclass(frozen=True, slots=True)
class _Requirement:
    """What a rule needs of each indexed field; None where it needs nothing."""

    scalars: tuple[frozenset[Any] | None, ...]
    lists: tuple[frozenset[Any] | None, ...]


class RuleIndex:
    """Buckets of rules (objects with `.condition` and `.index`) by the indexed fields.

    `on_new_bucket(members)` is called for every bucket, in slot order, so that the
    counters of a bucket made on first sight of a key exist before it is routed to.
    """

    def __init__(self, rules: Sequence[Any], on_new_bucket: Callable[[tuple[Any, ...]], None] | None = None):
        self._rules = tuple(rules)
        self._on_new_bucket = on_new_bucket
        needs = [_Requirement(tuple(required_values(r.condition, f) for f in INDEXED_SCALARS),
                              tuple(required_any(r.condition, f) for f in INDEXED_LISTS)) for r in self._rules]
        # only the fields some rule constrains are part of the key
        scalars = [i for i, _ in enumerate(INDEXED_SCALARS) if any(n.scalars[i] is not None for n in needs)]
        lists = [i for i, _ in enumerate(INDEXED_LISTS) if any(n.lists[i] is not None for n in needs)]
        self._needs = [(tuple(n.scalars[i] for i in scalars), tuple(n.lists[i] for i in lists)) for n in needs]
        self._named_scalars = tuple(_named(n.scalars[i] for n in needs) for i in scalars)
        self._named_lists = tuple(_named(n.lists[i] for n in needs) for i in lists)
        self._scalar_count = len(scalars)
        attrs = [FIELDS[INDEXED_SCALARS[i]].attr for i in scalars] + [FIELDS[INDEXED_LISTS[i]].attr for i in lists]
        # attrgetter of several names gives a tuple in one call; of one, the value alone
        self.key_of: Callable[[AccessEvent], Any] = attrgetter(*attrs) if attrs else _no_key
        self._single = len(attrs) == 1
        self.buckets: list[tuple[Any, ...]] = []
        self._slot_of_members: dict[tuple[int, ...], int] = {}
        self._slot_of_class: dict[tuple[Any, ...], int] = {}
        self.slots: dict[Any, int] = {}  # event key -> slot, the hot path's lookup
        self._slot(self._rules)  # EVERYTHING

    def slot(self, event: AccessEvent) -> int:
        key = self.key_of(event)
        try:
            slot = self.slots.get(key)
        except TypeError:  # e.g. a list where text belongs, from a hand-made event
            return EVERYTHING
        return self.slot_of_key(key) if slot is None else slot

    def slot_of_key(self, key: Any) -> int:
        """The slot of an event key not seen yet (remembered while there is room)."""
        values = (key,) if self._single else key
        n = self._scalar_count
        try:
            cls = tuple(v if v in named else _OTHER for v, named in zip(values[:n], self._named_scalars))
            cls += tuple(frozenset(v for v in (held or ()) if v in named)
                         for held, named in zip(values[n:], self._named_lists))
        except TypeError:
            return EVERYTHING
        slot = self._slot_of_class.get(cls)
        if slot is None:
            members = tuple(r for r, need in zip(self._rules, self._needs) if _admits(need, cls, n))
            slot = self._slot_of_class[cls] = self._slot(members)
        if len(self.slots) < MAX_KEYS:
            self.slots[key] = slot
        return slot

    def candidates(self, event: AccessEvent) -> tuple[Any, ...]:
        return self.buckets[self.slot(event)]

    def _slot(self, members: tuple[Any, ...]) -> int:
        key = tuple(r.index for r in members)
        slot = self._slot_of_members.get(key)
        if slot is None:
            slot = self._slot_of_members[key] = len(self.buckets)
            self.buckets.append(members)
            if self._on_new_bucket is not None:
                self._on_new_bucket(members)
        return slot


def _no_key(event: AccessEvent) -> None:
    return None


def _named(sets: Any) -> frozenset[Any]:
    return frozenset().union(*(s for s in sets if s is not None))


def _admits(need: tuple[tuple[Any, ...], tuple[Any, ...]], cls: tuple[Any, ...], n: int) -> bool:
    """Can a rule with these requirements match an event of this class?"""
    scalars, lists = need
    for required, value in zip(scalars, cls[:n]):
        if required is not None and value not in required:
            return False  # _OTHER is in no required set
    for required, held in zip(lists, cls[n:]):
        if required is not None and required.isdisjoint(held):
            return False
    return True


@dataclass(frozen=True, slots=True)
class RuleCounters:
    evaluations: int  # events that reached the rule's condition
    matches: int  # of them, those where the condition held
    excepted: int  # of the matches, those an exception allowed
    alerts: int
    seconds: float  # estimated time in the condition, from the timed sample
    timed: int  # evaluations that were timed
    detector_seconds: float = 0.0  # time in a stateful kind's chunk work (`many`), measured whole


class RuleStats:
    """Per-rule counters kept cheap for the hot path.

    An event costs one increment, on its bucket: a rule's evaluations are the sum of
    the hits of the buckets that hold it. Matches are rare and counted directly.
    Condition time is measured on one event in `timing_every` and scaled up; a stateful
    kind's chunk work (`many`: once per rule and chunk) is timed whole.
    """

    def __init__(self, rule_ids: Sequence[str], buckets: Sequence[tuple[Any, ...]] = (), timing_every: int = 64):
        self.rule_ids = tuple(rule_ids)
        self.timing_every = max(1, timing_every)
        self.countdown = self.timing_every
        self._members: list[tuple[int, ...]] = []
        self.bucket_hits: list[int] = []
        for bucket in buckets:
            self.add_bucket(bucket)
        n = len(self.rule_ids)
        self.matches = [0] * n
        self.excepted = [0] * n
        self.alerts = [0] * n
        self.timed = [0] * n
        self.timed_ns = [0] * n
        self.detector_ns = [0] * n

    def add_bucket(self, bucket: tuple[Any, ...]) -> None:
        """Counters for the next slot (the index makes buckets as keys are first seen)."""
        self._members.append(tuple(r.index for r in bucket))
        self.bucket_hits.append(0)

    def evaluations(self) -> list[int]:
        out = [0] * len(self.rule_ids)
        for members, hits in zip(self._members, self.bucket_hits):
            for i in members:
                out[i] += hits
        return out

    def snapshot(self) -> dict[str, RuleCounters]:
        evaluations = self.evaluations()
        out = {}
        for i, rule_id in enumerate(self.rule_ids):
            timed = self.timed[i]
            seconds = self.timed_ns[i] / 1e9 * (evaluations[i] / timed) if timed else 0.0
            out[rule_id] = RuleCounters(evaluations[i], self.matches[i], self.excepted[i], self.alerts[i],
                                        seconds, timed, self.detector_ns[i] / 1e9)
        return out
