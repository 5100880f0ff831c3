"""Kinds about what is new or out of place for an actor: `first_seen` and `off_hours`.

first_seen — a value new for the key (a data category, resource type, source subnet,
user agent, partner, API name) once the key's learning period is over:

    - rule: first_access_to_a_category
      kind: first_seen
      params: {field: neo.data.categories, learning: 7d}

  The learning period runs from the key's own first event, so a new hire learns too,
  and lasts until the key has `min_events` events as well: an actor who works little
  has not shown all their usual values in three days.
  Values are kept as 63-bit hashes, at most `max_values` per key; a key that reaches
  the cap (a value that is different every time is no behaviour) starts learning
  afresh rather than alerting on every event.

off_hours — outside the actor's shift (or their store's opening hours) from the
directory, widened by the directory's shift grace (`neo.actor.off_shift`), and, with
`rest_days: true`, any access on a mainland-China rest day (statutory holidays off,
make-up working days on); `hours:` gives fixed hours for actors the directory does not
know (a cloud principal). One alert per key and `realert`, so that a night of work is
one alert with its count, not one per event.

Sequential record ids (enumeration) are a threshold rule: the enrich stage gives each
numeric record id a keyed pseudonym of its block of 64 consecutive ids
(`neo.resource.seq_block`) and its place in the block (`neo.resource.seq_offset`),
and `kind: threshold` with `partition_by: neo.resource.seq_block` counts the distinct
places an actor visits in one block (rules/behaviour.yaml, sequential_record_ids).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from auditd.config.typed import Duration
from auditd.detect.kind_support import (
    Columns, FieldRef, ValueHasher, describe_key, distinct_at, group_key, one_at_a_time, rule_state,
)
from auditd.detect.kind_types import Detector, KindContext, RuleSpec, Verdict
from auditd.detect.state import DEFAULT_MAX_KEYS
from auditd.directory.schedule import Schedule
from auditd.event import AccessEvent


USER = (FieldRef.from_config("user.id"),)


# -- first_seen --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FirstSeenParams:
    field: FieldRef
    learning: Duration = Duration(7 * 86400.0)  # from the key's first event
    min_events: int = 0  # and at least this many of the key's events seen (a rare category is not new)
    group_by: tuple[FieldRef, ...] = USER
    transform: Literal["none", "subnet"] = "none"  # subnet: an address's /24 (IPv4) or /64 (IPv6)
    max_values: int = 256
    max_keys: int = DEFAULT_MAX_KEYS

    def check(self):
        if self.learning.seconds < 0:
            yield "learning", "must not be negative"
        if self.min_events < 0:
            yield "min_events", "must not be negative"
        if not 1 <= self.max_values <= 4096:
            yield "max_values", "must be between 1 and 4096"
        if self.transform == "subnet" and self.field.kind != "ip" and self.field.map_key is None:
            yield "transform", f"'subnet' needs an address field; {self.field.name} is not one"
        if not self.group_by:
            yield "group_by", "name at least one field"
        if self.max_keys < 1:
            yield "max_keys", "must be at least 1"


class Seen(msgspec.Struct, array_like=True, gc=False):
    since: float  # the key's first event (the learning period runs from here)
    values: set[int] = set()
    events: int = 0  # the key's events seen, up to min_events (then no longer counted)


def subnet(value: str) -> str | None:
    """An address's /24 (IPv4) or /64 (IPv6) network as text; None if not an address."""
    parts = value.split(".")
    if len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 3 and (p[0] != "0" or p == "0")
                               and int(p) <= 255 for p in parts):
        return f"{parts[0]}.{parts[1]}.{parts[2]}.0/24"  # the common case, without ipaddress's parse
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class FirstSeenKind:
    params_type = FirstSeenParams

    def build(self, rule: RuleSpec, params: FirstSeenParams, context: KindContext) -> Detector:
        state = rule_state(rule, params, context, Seen)
        key_of = group_key(params.group_by)
        values_of = params.field.values()
        hasher = ValueHasher()
        learning, cap, min_events = params.learning.seconds, params.max_values, params.min_events
        subnets = _Subnets() if params.transform == "subnet" else None

        def many(events: Sequence[AccessEvent], positions: Sequence[int], columns: Columns,
                 ) -> list[tuple[int, Verdict]]:
            """The chunk's events in order; a key's values are read once per chunk, and
            a value tuple already known for the key in this chunk costs one test."""
            found: list[tuple[int, Verdict]] = []
            keys, seconds = columns.keys(params.group_by, key_of, positions), columns.seconds(positions)
            entries: dict[str, tuple[Seen, set]] = {}  # key -> its state, the value tuples it knows
            state.prefetch(distinct_at(keys, positions))
            for pos in positions:
                key = keys[pos]
                if key is None:
                    continue
                event = events[pos]
                raw = values_of(event)
                if not raw:
                    continue
                entry = entries.get(key)
                try:
                    if (entry is not None and entry[0].events >= min_events and raw in entry[1]
                            and seconds[pos] >= entry[0].since):
                        continue  # the common case: these values known already, nothing to write
                except TypeError:  # values that cannot be remembered as they are: hashed one by one
                    raw = None
                values = raw if raw is not None else values_of(event)
                if subnets is not None:
                    values = subnets(values)
                if entry is None:
                    seen = state.get(key)
                    if seen is None:
                        seen = Seen(since=event.timestamp.timestamp())
                    entry = entries[key] = (seen, set())
                seen = entry[0]
                if seconds[pos] < seen.since:
                    # the learning runs from the key's earliest event, not its first to arrive:
                    # one forged line stamped 2099 would keep the key learning until then
                    seen.since = seconds[pos]
                    state.put(key, seen)
                if seen.events < min_events:
                    seen.events += 1
                    state.put(key, seen)
                known = seen.values
                new = None
                for v in values:
                    h = hasher(v)
                    if h not in known:
                        new = [v] if new is None else new + [v]
                        known.add(h)
                if new is None:  # nothing new, nothing to write
                    if raw is not None:
                        entry[1].add(raw)
                    continue
                t = event.timestamp.timestamp()
                if len(known) > cap:
                    seen = Seen(since=t, values={hasher(v) for v in values})
                    entries[key] = (seen, set())
                    state.put(key, seen)
                    continue
                if raw is not None:
                    entry[1].add(raw)
                state.put(key, seen)
                if t - seen.since < learning or seen.events < min_events:
                    continue
                found.append((pos, Verdict(reason=_first_seen_reason(params, key, new, len(known), t - seen.since))))
            return found

        return one_at_a_time(many)


def _first_seen_reason(params: FirstSeenParams, key: str, new: list, known: int, history_s: float) -> str:
    shown = ", ".join(repr(str(v)) for v in new)
    return (f"{params.field.name} {shown} new for {describe_key(params.group_by, key)} "
            f"({known - len(new)} value(s) known from {history_s / 86400:.0f} day(s) of history)")


class _Subnets:
    """Addresses to their subnets (`transform: subnet`), remembered per distinct address
    (bounded); an address that is not one is left out."""

    LIMIT = 65536

    def __init__(self):
        self.known: dict[str, str | None] = {}

    def __call__(self, values) -> list[str]:
        out = []
        for v in values:
            net = self.known.get(v, "")
            if net == "":
                if len(self.known) > self.LIMIT:
                    self.known.clear()
                net = self.known[v] = subnet(str(v))
            if net is not None:
                out.append(net)
        return out


# -- off_hours ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OffHoursParams:
    shift: bool = True  # outside the actor's shift or store hours (neo.actor.off_shift)
    rest_days: bool = False  # any access on a mainland-China rest day is off hours too
    hours: Schedule | None = None  # fixed hours for actors without a directory shift
    group_by: tuple[FieldRef, ...] = USER
    realert: Duration = Duration(4 * 3600.0)
    max_keys: int = DEFAULT_MAX_KEYS

    def check(self):
        if not (self.shift or self.rest_days or self.hours is not None):
            yield "", "enable at least one of shift, rest_days, hours"
        if self.max_keys < 1:
            yield "max_keys", "must be at least 1"


class Quiet(msgspec.Struct, array_like=True, gc=False):
    alerted: float  # the last alert
    count: int = 0  # off-hours events since


class OffHoursKind:
    params_type = OffHoursParams

    def build(self, rule: RuleSpec, params: OffHoursParams, context: KindContext) -> Detector:
        state = rule_state(rule, params, context, Quiet)
        key_of = group_key(params.group_by)
        zone, hours, quiet = context.zone, params.hours, params.realert.seconds
        calendar = getattr(context, "calendar", None)
        if calendar is None and params.rest_days:
            from auditd.workdays import WorkingCalendar

            calendar = WorkingCalendar()
        rest: dict[dt.date, bool] = {}

        def why(event: AccessEvent) -> str | None:
            off = event.actor_off_shift
            if params.shift and off:
                return "outside the actor's shift or store hours"
            local = None
            if params.rest_days:
                local = event.timestamp.astimezone(zone)
                day = local.date()
                is_rest = rest.get(day)
                if is_rest is None:
                    is_rest = rest[day] = not calendar.is_workday(day)
                if is_rest:
                    return f"on {day.isoformat()}, a rest day in mainland China"
            if hours is not None and off is None:
                local = local or event.timestamp.astimezone(zone)
                if not hours.covers(local):
                    return f"at {local:%a %H:%M}, outside the hours {hours}"
            return None

        def detect(event: AccessEvent) -> Verdict | None:
            reason = why(event)
            if reason is None:
                return None
            key = key_of(event)
            if key is None:
                return None
            t = event.timestamp.timestamp()
            q = state.get(key)
            if q is not None and abs(t - q.alerted) < quiet:  # not silenced by an alert stamped 2099
                q.count += 1
                state.put(key, q)
                return None
            before = q.count if q is not None else 0
            state.put(key, Quiet(alerted=t, count=0))
            more = f"; {before} more off-hours event(s) since the last alert" if before else ""
            when = event.timestamp.astimezone(zone)
            return Verdict(reason=f"{describe_key(params.group_by, key)} at {when:%Y-%m-%d %H:%M %Z}: {reason}{more}")

        return detect
