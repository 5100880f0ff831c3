"""Windowed kinds: `threshold` (N events, or N distinct values, per group key within a
sliding window) and `sequence` (steps in order, or all of them in any order, within a
window), after Sigma's correlation rules so that those map onto them:

    Sigma                      neo-auditd
    event_count   gte: N        kind: threshold, params {gte: N, timespan, group_by}
    value_count   field: F      kind: threshold, params {gte: N, distinct: F, ...}
    group-by on a field of many values (a record-id block)
                                kind: threshold, params {partition_by: F, ...}: one window
                                per value inside the group key's state, the most recent kept
    temporal_ordered            kind: sequence,  params {steps: [...], timespan}
    temporal                    kind: sequence,  params {steps: [...], ordered: false}

    - rule: many_customers_in_ten_minutes
      kind: threshold
      params: {gte: 60, distinct: neo.data.subject_ids, timespan: 10m, group_by: [user.id]}
      condition: data_access and succeeded

Time is the events' own (a replay finds what tailing found); the window slides with
each event. A window that fired is emptied, and the key stays quiet for `realert`
(default: the timespan) either side of the alert, so one burst is one alert, and an
alert stamped far in the future (a forged line) does not silence the key until then. The alert cites the window's
events (at most `cite` of them) and its id is derived from them, so a batch read again
after a crash raises the same alert, never a second one.

State per key is bounded by the rule's numbers: a threshold keeps at most `gte`
entries (older ones can never complete a window the newer ones do not), a sequence
keeps at most each step's count plus a small margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from auditd.config.typed import Duration
from auditd.detect.kind_support import (
    Columns, FieldRef, ValueHasher, describe_key, distinct_at, group_key, one_at_a_time, rule_state,
)
from auditd.detect.kind_types import Detector, KindContext, RuleSpec, Verdict
from auditd.detect.state import DEFAULT_MAX_KEYS
from auditd.event import AccessEvent


USER = (FieldRef.from_config("user.id"),)
MAX_CITED = 100  # event ids an alert cites, the latest of its window
# a threshold's window keeps up to `gte` entries per key, each value looked up in it: at
# gte 100,000 one key flooded with distinct values cost 115 µs an event and 0.7 MB a write
MAX_GTE = 10_000


def _unique(ids: list[str], limit: int) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(ids))
    return out[-limit:]


# -- threshold: event_count and value_count ------------------------------------------------

@dataclass(frozen=True, slots=True)
class ThresholdParams:
    gte: int  # events (or distinct values) within the timespan that make an alert
    timespan: Duration
    group_by: tuple[FieldRef, ...] = USER
    distinct: FieldRef | None = None  # count distinct values of this field (Sigma value_count)
    # a window per value of this field within each group key (at most max_partitions, the
    # most recent): Sigma's group-by on one more field, without a key per value in the store
    partition_by: FieldRef | None = None
    max_partitions: int = 32
    realert: Duration | None = None  # quiet time per key after an alert; default: the timespan
    cite: int = MAX_CITED
    max_keys: int = DEFAULT_MAX_KEYS

    def check(self):
        if self.gte < 2:
            yield "gte", "must be at least 2 (one event is a match rule's job)"
        elif self.gte > MAX_GTE:
            yield "gte", (f"must be at most {MAX_GTE:,} (a key's window keeps that many entries, "
                          "read and written with every event of the key)")
        if self.timespan.seconds <= 0:
            yield "timespan", "must be longer than zero"
        if not self.group_by:
            yield "group_by", "name at least one field"
        if self.max_keys < 1:
            yield "max_keys", "must be at least 1"
        if not 1 <= self.cite <= 1000:
            yield "cite", "must be between 1 and 1000"
        if not 1 <= self.max_partitions <= 1024:
            yield "max_partitions", "must be between 1 and 1024"


class Window(msgspec.Struct, array_like=True, gc=False):
    times: list[float] = []  # epoch seconds, in arrival order
    ids: list[str] = []  # event ids, parallel to times
    values: list[int] = []  # value hashes, parallel (value_count only)
    alerted: float = 0.0  # when the key last alerted (realert)


class Partitioned(msgspec.Struct, array_like=True, gc=False):
    parts: list[int] = []  # partition values' hashes, least recent first
    windows: list[Window] = []
    alerted: float = 0.0


class ThresholdKind:
    params_type = ThresholdParams

    def build(self, rule: RuleSpec, params: ThresholdParams, context: KindContext) -> Detector:
        if params.partition_by is not None:
            return self._partitioned(rule, params, context)
        state = rule_state(rule, params, context, Window)
        key_of = group_key(params.group_by)
        gte, span, cite = params.gte, params.timespan.seconds, params.cite
        quiet = (params.realert or params.timespan).seconds
        what = f"distinct {params.distinct.name}" if params.distinct is not None else "events"
        span_text = _span(span)

        def fire(key: str, w: Window, t: float) -> Verdict:
            n = len(w.values) if params.distinct is not None else len(w.times)
            cited = _unique(w.ids, cite)
            w.times, w.ids, w.values, w.alerted = [], [], [], t
            state.put(key, w)
            return Verdict(reason=f"{n} {what} within {span_text} for {describe_key(params.group_by, key)} "
                                  f"(threshold {gte})", event_ids=cited)

        slide = _slider(params)

        def many(events: Sequence[AccessEvent], positions: Sequence[int], columns: Columns,
                 ) -> list[tuple[int, Verdict]]:
            """The chunk's events in order; a key's window is read and written once."""
            found: list[tuple[int, Verdict]] = []
            keys, seconds = columns.keys(params.group_by, key_of, positions), columns.seconds(positions)
            windows: dict[str, Window] = {}
            state.prefetch(distinct_at(keys, positions))
            for pos in positions:
                key = keys[pos]
                if key is None:
                    continue
                t = seconds[pos]
                w = windows.get(key)
                if w is None:
                    w = state.get(key)
                    if w is None:
                        w = Window()
                    windows[key] = w
                if slide(w, events[pos], t) and abs(t - w.alerted) >= quiet:
                    found.append((pos, fire(key, w, t)))
            for key, w in windows.items():
                state.put(key, w)
            return found

        return one_at_a_time(many)

    @staticmethod
    def _partitioned(rule: RuleSpec, params: ThresholdParams, context: KindContext) -> Detector:
        state = rule_state(rule, params, context, Partitioned)
        key_of = group_key(params.group_by)
        part_of = params.partition_by.getter()
        hasher = ValueHasher()
        slide = _slider(params)
        quiet = (params.realert or params.timespan).seconds
        what = f"distinct {params.distinct.name}" if params.distinct is not None else "events"
        span_text = _span(params.timespan.seconds)

        def many(events: Sequence[AccessEvent], positions: Sequence[int], columns: Columns,
                 ) -> list[tuple[int, Verdict]]:
            """The chunk's events in order; a key's partitions are read and written once."""
            found: list[tuple[int, Verdict]] = []
            keys, seconds = columns.keys(params.group_by, key_of, positions), columns.seconds(positions)
            held: dict[str, Partitioned] = {}
            state.prefetch(distinct_at(keys, positions))
            for pos in positions:
                event = events[pos]
                part = part_of(event)
                if part is None:
                    continue
                key = keys[pos]
                if key is None:
                    continue
                t = seconds[pos]
                p = held.get(key)
                if p is None:
                    p = state.get(key)
                    if p is None:
                        p = Partitioned()
                    held[key] = p
                h = hasher(part)
                if h in p.parts:  # the most recently used partition goes last
                    i = p.parts.index(h)
                    w = p.windows[i]
                    del p.parts[i], p.windows[i]
                else:
                    w = Window()
                p.parts.append(h)
                p.windows.append(w)
                if len(p.parts) > params.max_partitions:
                    del p.parts[0], p.windows[0]
                i = len(p.parts) - 1
                if slide(w, event, t) and abs(t - p.alerted) >= quiet:
                    n = len(w.values) if params.distinct is not None else len(w.times)
                    cited = _unique(w.ids, params.cite)
                    p.windows[i], p.alerted = Window(), t
                    found.append((pos, Verdict(
                        reason=f"{n} {what} of one {params.partition_by.name} within {span_text} for "
                               f"{describe_key(params.group_by, key)} (threshold {params.gte})",
                        event_ids=cited)))
            for key, p in held.items():
                state.put(key, p)
            return found

        return one_at_a_time(many)


def _slider(params: ThresholdParams):
    """The window's update for one event: whether it is full afterwards."""
    gte, span = params.gte, params.timespan.seconds
    values_of = params.distinct.values() if params.distinct is not None else None
    hasher = ValueHasher()
    known = hasher.cached  # the hashes of recurring values, without a call through the hasher

    def slide(w: Window, event: AccessEvent, t: float) -> bool:
        times, ids = w.times, w.ids
        if values_of is None:
            times.append(t)
            ids.append(event.event_id)
            if len(times) > gte:
                del times[0], ids[0]
            return len(times) >= gte and t - times[0] <= span
        vals = w.values
        eid = event.event_id
        for v in values_of(event):
            h = known(v)
            if h is None:
                h = hasher(v)
            if h in vals:  # seen again: only its latest time counts (a test, not a raised ValueError)
                i = vals.index(h)
                del times[i], ids[i], vals[i]
            times.append(t)
            ids.append(eid)
            vals.append(h)
        cutoff = t - span
        drop = 0
        while drop < len(times) and times[drop] < cutoff:
            drop += 1
        if len(times) - drop > gte:
            drop = len(times) - gte
        if drop:
            del times[:drop], ids[:drop], vals[:drop]
        return len(vals) >= gte

    return slide


# -- sequence: temporal_ordered and temporal ---------------------------------------------

@dataclass(frozen=True, slots=True)
class StepMatch:
    """A step's test: every named field has one of the given values (``{event.action:
    login, event.outcome: [failure, denied]}``)."""

    tests: tuple[tuple[FieldRef, frozenset[str]], ...]

    @classmethod
    def from_config(cls, value: Any) -> "StepMatch":
        if not isinstance(value, dict) or not value:
            raise ValueError("expected a mapping of field names to a value or a list of values, "
                             "such as {event.action: login, event.outcome: failure}")
        tests = []
        for name, wanted in value.items():
            ref = FieldRef.from_config(name)
            items = wanted if isinstance(wanted, list) else [wanted]
            if not items or any(isinstance(v, (dict, list)) or v is None for v in items):
                raise ValueError(f"'{name}': expected a value or a list of values")
            tests.append((ref, frozenset(_text(v) for v in items)))
        return cls(tuple(tests))

    def predicate(self):
        checks = [(ref.values(), wanted) for ref, wanted in self.tests]

        def holds(event: AccessEvent) -> bool:
            for values, wanted in checks:
                if not any(_text(v) in wanted for v in values(event)):
                    return False
            return True

        return holds

    def __repr__(self) -> str:
        return "StepMatch(" + ", ".join(f"{r.name}={sorted(w)}" for r, w in self.tests) + ")"


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    where: StepMatch
    count: int = 1  # events of this step needed (a burst of failures: 5)

    def check(self):
        if not 1 <= self.count <= 1000:
            yield "count", "must be between 1 and 1000"


@dataclass(frozen=True, slots=True)
class SequenceParams:
    steps: tuple[Step, ...]
    timespan: Duration
    ordered: bool = True  # false: every step within the timespan, in any order (Sigma temporal)
    group_by: tuple[FieldRef, ...] = USER
    realert: Duration | None = None
    max_keys: int = DEFAULT_MAX_KEYS

    def check(self):
        if len(self.steps) < 2:
            yield "steps", "name at least two steps"
        # a step that did not convert is MISSING here (and already reported)
        names = [s.name if isinstance(s, Step) else None for s in self.steps]
        for i, name in enumerate(names):
            if name is not None and name in names[:i]:
                yield ("steps", i, "name"), f"step name '{name}' is used twice"
        if self.timespan.seconds <= 0:
            yield "timespan", "must be longer than zero"
        if not self.group_by:
            yield "group_by", "name at least one field"
        if self.max_keys < 1:
            yield "max_keys", "must be at least 1"


class Progress(msgspec.Struct, array_like=True, gc=False):
    times: list[list[float]] = []  # per step, the times of its latest events
    ids: list[list[str]] = []
    alerted: float = 0.0


_MARGIN = 16  # entries kept per step beyond its count, for the ordered search


class SequenceKind:
    params_type = SequenceParams

    def build(self, rule: RuleSpec, params: SequenceParams, context: KindContext) -> Detector:
        state = rule_state(rule, params, context, Progress)
        key_of = group_key(params.group_by)
        steps = [(s.where.predicate(), s.count) for s in params.steps]
        last = len(steps) - 1
        span = params.timespan.seconds
        quiet = (params.realert or params.timespan).seconds
        ordered = params.ordered
        names = " then ".join(f"{s.count}× {s.name}" if s.count > 1 else s.name for s in params.steps)
        if not ordered:
            names = "all of " + ", ".join(s.name for s in params.steps)

        def chain(p: Progress, t: float) -> list[str] | None:
            """The events that complete the sequence at time t, or None."""
            cited: list[str] = []
            if not ordered:
                for (_, count), times, ids in zip(steps, p.times, p.ids):
                    inside = [i for i, x in enumerate(times) if x >= t - span]
                    if len(inside) < count:
                        return None
                    cited += [ids[i] for i in inside[-count:]]
                return cited
            before, used = t, set()
            for j in range(last, -1, -1):
                count = steps[j][1]
                times, ids = p.times[j], p.ids[j]
                # step j's latest `count` events no later than the first of the later steps'
                picked = [i for i, x in enumerate(times) if x <= before and ids[i] not in used][-count:]
                if len(picked) < count:
                    return None
                before = times[picked[0]]
                used.update(ids[i] for i in picked)
                cited = [ids[i] for i in picked] + cited
            return cited if t - before <= span else None

        def many(events: Sequence[AccessEvent], positions: Sequence[int], columns: Columns,
                 ) -> list[tuple[int, Verdict]]:
            """The chunk's events in order; a key's progress is read and written once."""
            found: list[tuple[int, Verdict]] = []
            keys, seconds = columns.keys(params.group_by, key_of, positions), columns.seconds(positions)
            held: dict[str, Progress] = {}
            state.prefetch(distinct_at(keys, positions))
            for pos in positions:
                event = events[pos]
                hit = [j for j, (holds, _) in enumerate(steps) if holds(event)]
                if not hit:
                    continue
                key = keys[pos]
                if key is None:
                    continue
                t = seconds[pos]
                p = held.get(key)
                if p is None:
                    p = state.get(key)
                    if p is None or len(p.times) != len(steps):
                        p = Progress([[] for _ in steps], [[] for _ in steps])
                    held[key] = p
                for j in hit:
                    times, ids = p.times[j], p.ids[j]
                    times.append(t)
                    ids.append(event.event_id)
                    cutoff = t - span
                    drop = 0
                    while drop < len(times) and times[drop] < cutoff:
                        drop += 1
                    drop = max(drop, len(times) - steps[j][1] - _MARGIN)
                    if drop > 0:
                        del times[:drop], ids[:drop]
                # quiet either side of the last alert: an alert stamped far ahead (a forged line of
                # 2099) must not silence the key until then
                quiet_now = abs(t - p.alerted) < quiet
                cited = chain(p, t) if (not ordered or last in hit) and not quiet_now else None
                if cited is None:
                    continue
                held[key] = Progress([[] for _ in steps], [[] for _ in steps], alerted=t)
                found.append((pos, Verdict(
                    reason=f"{names} within {_span(span)} for {describe_key(params.group_by, key)}",
                    event_ids=_unique(cited, MAX_CITED))))
            for key, p in held.items():
                state.put(key, p)
            return found

        return one_at_a_time(many)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
