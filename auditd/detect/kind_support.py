"""What the stateful (behaviour) kinds share: event fields named in params, group keys,
compact value hashes, the realert window, and the rule's state.

A kind's params name event fields as rules do (``user.id``, ``labels.access_key_id``);
`FieldRef` checks the name when the rule is loaded (a located error with a suggestion)
and gives a getter that costs one attribute read. A group key is the text of the
group-by values joined by U+001F; an event that lacks one of them is not grouped and
so not counted (a credential-keyed rule ignores events without a credential).

Values a kind remembers (customers, IPs, API names) are kept as 64-bit hashes: the
state stays small and fixed-size per value, and holds no identifier in the clear.
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from auditd.detect.resolve import near
from auditd.detect.state import StateStore, rule_state_hash
from auditd.event import FIELDS, AccessEvent

if TYPE_CHECKING:
    from auditd.detect.kind_types import KindContext, RuleSpec
    from auditd.detect.state import RuleState

Getter = Callable[[AccessEvent], Any]
KEY_SEPARATOR = "\x1f"


@dataclass(frozen=True, slots=True)
class FieldRef:
    """An event field named in a kind's params: ``user.id``, ``labels.event_name``."""

    name: str
    attr: str
    kind: str  # str, int, bool, time, list, ip, map
    map_key: str | None = None  # for labels.X

    @classmethod
    def from_config(cls, value: Any) -> "FieldRef":
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a field name such as 'user.id', got {value!r}")
        if value.startswith("labels.") and len(value) > len("labels."):
            return cls(value, "labels", "str", value[len("labels."):])
        spec = FIELDS.get(value)
        if spec is None or spec.kind == "map":
            raise ValueError(f"unknown field '{value}'{near(value, FIELDS)}")
        return cls(value, spec.attr, spec.kind)

    def getter(self) -> Getter:
        if self.map_key is not None:
            key = self.map_key
            return lambda e: e.labels.get(key)
        return operator.attrgetter(self.attr)

    def values(self) -> Callable[[AccessEvent], tuple[Any, ...]]:
        """Every value of the field on an event: list fields give their items, a
        missing value gives none."""
        get = self.getter()
        if self.kind == "list":
            return get
        return lambda e: () if (v := get(e)) is None or v == "" else (v,)

    def __repr__(self) -> str:  # the rule-state hash reads params through repr
        return f"FieldRef({self.name!r})"


def group_key(fields: tuple[FieldRef, ...]) -> Callable[[AccessEvent], str | None]:
    """The event's group key, or None when a group-by field is missing."""
    getters = [f.getter() for f in fields]
    lists = [f.kind == "list" for f in fields]
    if len(getters) == 1 and not lists[0]:
        get = getters[0]

        def single(e: AccessEvent) -> str | None:
            v = get(e)
            return None if v is None or v == "" else str(v)

        return single

    pairs = list(zip(getters, lists))
    known: dict[tuple, str | None] = {}  # raw values -> key text: the same actors recur

    def build(raw: tuple) -> str | None:
        parts = []
        for v, is_list in zip(raw, lists):
            if v is None or v == "" or v == ():
                return None
            parts.append(",".join(map(str, v)) if is_list else str(v))
        return KEY_SEPARATOR.join(parts)

    def joined(e: AccessEvent) -> str | None:
        raw = tuple([get(e) for get, _ in pairs])
        try:
            return known[raw]
        except KeyError:
            if len(known) >= 65536:
                known.clear()
            key = known[raw] = build(raw)
            return key
        except TypeError:  # an unhashable value (a map): build it each time
            return build(raw)

    return joined


class Columns:
    """Per-event values that several stateful rules read in one chunk (the event's time
    in seconds, a group key), computed once per chunk instead of once per rule and
    event. A column is built for the whole chunk on first use; positions index it. A
    rule that sees only a few of the chunk's events gets their values alone (indexed
    by position just the same) unless the column exists already."""

    __slots__ = ("events", "_cache")

    def __init__(self, events: Sequence[AccessEvent]):
        self.events = events
        self._cache: dict[Any, list] = {}

    def seconds(self, positions: Sequence[int]) -> Sequence[float] | dict[int, float]:
        """Each event's time as seconds since the epoch (UTC)."""
        return self._column("@seconds", _seconds, positions)

    def keys(self, fields: tuple[FieldRef, ...], key_of: Callable[[AccessEvent], str | None],
             positions: Sequence[int]) -> Sequence[str | None] | dict[int, str | None]:
        """Each event's group key for `fields` (None where one is missing)."""
        return self._column(tuple(f.name for f in fields), key_of, positions)

    def _column(self, name: Any, compute: Callable[[AccessEvent], Any], positions: Sequence[int]):
        col = self._cache.get(name)
        if col is not None:
            return col
        events = self.events
        if len(positions) * _SPARSE < len(events):
            return {p: compute(events[p]) for p in positions}
        col = self._cache[name] = [compute(e) for e in events]
        return col


_SPARSE = 8  # a rule that sees fewer than 1 in this many of a chunk's events: no column


def _seconds(event: AccessEvent) -> float:
    return event.timestamp.timestamp()


def distinct_at(column: Sequence | dict, positions: Sequence[int]) -> set:
    """The distinct values of a column at the positions (a rule's keys in a chunk)."""
    if len(positions) == 1:
        return {column[positions[0]]}
    return set(operator.itemgetter(*positions)(column))


def one_at_a_time(many: Callable[[Sequence[AccessEvent], Sequence[int], Columns], list]):
    """The one-event call of a detector whose work is done by `many` (samples, `check`)."""

    def detect(event: AccessEvent):
        found = many((event,), (0,), Columns((event,)))
        return found[0][1] if found else None

    detect.many = many  # type: ignore[attr-defined]
    return detect


def stable_hash(value: Any) -> int:
    """A 62-bit hash of a value's text that is the same in every process (hash() is
    salted per process, and these hashes are stored): two CRC-32s of different seeds.
    Not a keyed or cryptographic hash, and need not be: it only tells values of one key
    apart (a window's customers, an actor's categories), where a collision costs one
    value counted once too few."""
    data = (value if isinstance(value, str) else str(value)).encode("utf-8", "surrogatepass")
    return (zlib.crc32(data) << 30) ^ zlib.crc32(data, 0x9E3779B9)


class ValueHasher:
    """stable_hash, cached: the same few values (categories, IPs, API names) recur in
    every batch; a field of many values (customers) simply misses."""

    def __init__(self, cache_size: int = 4096):
        self._cache: dict[Any, int] = {}
        self._limit = cache_size
        self.cached = self._cache.get  # value -> its hash if cached, else None

    def __call__(self, value: Any) -> int:
        h = self._cache.get(value)
        if h is None:
            h = stable_hash(value)
            if len(self._cache) < self._limit:
                self._cache[value] = h
        return h


def rule_state(rule: "RuleSpec", params: Any, context: "KindContext", value_type: Any) -> "RuleState":
    """The rule's state in the context's store, or in a private one in memory when
    rules are loaded without a store (``check``, tools)."""
    store = context.state if context.state is not None else StateStore.in_memory()
    return store.rule(rule.id, rule_state_hash(rule.kind, rule.condition, params, ignore=("max_keys", "realert")),
                      value_type, max_keys=params.max_keys)


def describe_key(fields: tuple[FieldRef, ...], key: str) -> str:
    """'user.id E10011' or 'labels.access_key_id AKIA…, source.ip 10.0.0.1'."""
    return ", ".join(f"{f.name} {v}" for f, v in zip(fields, key.split(KEY_SEPARATOR)))
