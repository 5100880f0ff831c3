"""The `baseline` kind: an actor's volume in this hour (or day) against their own usual
for the same hour of the day (of the week, once enough weeks exist) and against their
role's peers.

    - rule: records_far_above_usual
      kind: baseline
      params: {measure: records, bucket: 1h, min_days: 5, floor: 100}
      condition: data_access and succeeded

The alert explains itself: "412 records this hour (Tue 02:00); E10011's usual around
Tues 02:00 ≤ 35 (30 active days of history); peers in role store_clerk ≤ 50 when active".

How the usual is kept (per key, a few hundred bytes whatever the history's length):
- one robust running estimate per slot — each hour of the day (24 slots): an
  exponentially weighted mean and mean absolute deviation; each hour of the week (168
  slots): the mean, its spread taken from the hour of the day (the wider of the two);
  the first observations averaged plainly (weight 1/n until it falls to `alpha`), and
  each new observation clipped to the current upper bound once the key alerts, so
  that one spike barely moves the usual (winsorised). Stored as log-coded 16-bit
  integers (0.03 % resolution) in two byte strings (432 bytes for hours), never as
  dicts of floats;
- a slot's observation is the bucket's total when it closes; the quiet buckets of a day
  the actor worked count as zeros, while a day without any activity (leave, a rest day)
  is no observation at all, so a holiday does not teach that the actor never works;
- the weekly profile is used once the key has `weekly_after_days` active days (28 by
  default): each hour-of-week slot gets one observation per active week, and a spread
  estimated from fewer than four observations is noise (one unusual day would be a
  third of it). Until then the hour-of-day profile serves;
- the bound for an hour is the widest of that hour's and the hours beside it (overtime
  and early starts move work into the next hour: not an anomaly; a night among quiet
  nights stays quiet);
- the upper bound is mean + k × max(deviation, ½√mean), and at least `ratio` × mean:
  counts are at least as noisy as a Poisson count's, so a steady slot does not get a
  hair trigger, and "far above the usual" means a multiple of it, not a bit more;
- peers: the same estimate per role (the first of `peer_group`'s values), fed with each
  member's buckets in which they were active; an alert needs the count above the
  peers' bound too (when the peers have one for that slot), and above `floor`.

The learning period: the key's own usual is used once it has `min_days` active days;
before that nothing alerts, unless `peers_stand_in` is set: then the peers' usual
stands in (a new hire, or an actor who never exported before, is compared with the
role). Worth it where the role's members are alike (how often they export), not where
their volume varies with the work (records an hour).
One alert per key and bucket; it cites the bucket's first event and the one that
crossed the bound. An event of an earlier bucket is late, and its bucket history,
unless it is more than two days before the open one: then the open bucket is the
wrong one (a line stamped far in the future opened it) and is dropped unlearned.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from auditd.detect.kind_support import (
    Columns, FieldRef, KEY_SEPARATOR, distinct_at, group_key, one_at_a_time, rule_state,
)
from auditd.detect.kind_types import Detector, KindContext, RuleSpec, Verdict
from auditd.detect.state import DEFAULT_MAX_KEYS
from auditd.event import AccessEvent


_SCALE = 2048.0  # log2 code steps per doubling: 16 bits reach 2**32
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_PEER = "peer" + KEY_SEPARATOR
# an event this many days before the key's open bucket is not late: the open bucket is
# the wrong one (a forged line stamped 2099 opened it, and every real event after it would
# be "late" and ignored). The bucket reopens at the event's time, the wrong one unlearned.
_LATE_DAYS = 2


def encode(x: float) -> int:
    return min(65535, max(0, round(math.log2(1.0 + x) * _SCALE)))


def decode(code: int) -> float:
    return 2.0 ** (code / _SCALE) - 1.0


@dataclass(frozen=True, slots=True)
class BaselineParams:
    measure: Literal["events", "records"] = "events"  # records: the sum of neo.data.record_count
    bucket: Literal["1h", "1d"] = "1h"
    group_by: tuple[FieldRef, ...] = (FieldRef.from_config("user.id"),)
    peer_group: FieldRef | None = field(default_factory=lambda: FieldRef.from_config("user.roles"))
    min_days: int = 5  # active days of the key's own history before it alerts
    weekly_after_days: int = 28  # active days before the hour-of-week profile is used
    k: float = 4.0  # how many deviations above the mean is unusual
    ratio: float = 3.0  # and at least this many times the mean: far above, not just above
    floor: int = 20  # never alert on a bucket smaller than this
    alpha: float = 0.1  # weight of a new observation once the first 1/alpha are averaged
    peer_alpha: float = 0.02
    peer_min_observations: int = 20  # members' active buckets before the peers' usual counts
    # while the key's own history is short, judge it by its peers' usual alone
    peers_stand_in: bool = False
    max_keys: int = DEFAULT_MAX_KEYS

    def check(self):
        if self.min_days < 1:
            yield "min_days", "must be at least 1"
        if self.weekly_after_days < 7:
            yield "weekly_after_days", "must be at least 7 (a week)"
        if self.k <= 0:
            yield "k", "must be above zero"
        if self.ratio < 1:
            yield "ratio", "must be at least 1"
        if self.peer_min_observations < 1:
            yield "peer_min_observations", "must be at least 1"
        if self.floor < 1:
            yield "floor", "must be at least 1"
        for name in ("alpha", "peer_alpha"):
            if not 0 < getattr(self, name) <= 1:
                yield name, "must be above 0 and at most 1"
        if not self.group_by:
            yield "group_by", "name at least one field"
        if self.max_keys < 1:
            yield "max_keys", "must be at least 1"


class Profile(msgspec.Struct, array_like=True, gc=False):
    bucket: int = -1  # the open bucket (local buckets since 1970-01-01)
    total: int = 0  # its measure so far
    limit: float = math.inf  # above this the open bucket alerts (inf: not yet, or already did)
    first_id: str = ""  # the bucket's first event
    days: int = 0  # active days seen (for peers: observations)
    daily: bytes = b""  # per slot of the day: (mean, deviation) log-coded uint16
    weekly: bytes = b""  # per slot of the week, the mean only (log-coded uint16); peers have none


class _Slots:
    """The profile arithmetic for one bucket size."""

    def __init__(self, bucket_s: int, params: BaselineParams):
        self.size = bucket_s
        self.per_day = 86400 // bucket_s
        self.per_week = 7 * self.per_day
        self.p = params
        self.empty_daily = bytes(4 * self.per_day)
        self.empty_weekly = bytes(2 * self.per_week)

    def slots(self, bucket: int) -> tuple[int, int]:
        day_slot = bucket % self.per_day
        weekday = (bucket // self.per_day + 3) % 7  # 1970-01-01 was a Thursday
        return day_slot, weekday * self.per_day + day_slot

    def bound(self, data: bytes, slot: int) -> tuple[float, float] | None:
        """(mean, upper bound) of a slot, or None when it has no observation."""
        if not data:
            return None
        codes = array("H", data[4 * slot:4 * slot + 4])
        mean, dev = decode(codes[0]), decode(codes[1])
        return mean, max(mean + self.p.k * max(dev, 0.5 * math.sqrt(mean)), self.p.ratio * mean)

    def bound_weekly(self, prof: "Profile", w_slot: int, d_slot: int) -> tuple[float, float] | None:
        """The hour of the week's mean with the hour of the day's spread (which spans
        every weekday, so it is the wider one: the cautious choice)."""
        if not prof.weekly or not prof.daily:
            return None
        mean = decode(array("H", prof.weekly[2 * w_slot:2 * w_slot + 2])[0])
        dev = decode(array("H", prof.daily[4 * d_slot + 2:4 * d_slot + 4])[0])
        return mean, max(mean + self.p.k * max(dev, 0.5 * math.sqrt(mean)), self.p.ratio * mean)

    def observe_mean(self, codes: array, slot: int, x: float, weight: float, cap: float | None) -> None:
        """One observation into an hour-of-week slot's mean (codes changed in place)."""
        if weight >= 1.0:
            codes[slot] = encode(x)
        elif x or codes[slot]:  # a quiet hour of a quiet slot changes nothing
            mean = decode(codes[slot])
            codes[slot] = encode(mean + weight * ((min(x, cap) if cap is not None else x) - mean))

    def observe(self, codes: array, slot: int, x: float, weight: float, clip: bool) -> None:
        """One observation into an hour-of-day slot's mean and deviation (in place)."""
        if weight >= 1.0:  # the slot's first observation: no spread yet
            codes[2 * slot], codes[2 * slot + 1] = encode(x), 0
            return
        if not x and not codes[2 * slot] and not codes[2 * slot + 1]:
            return  # a quiet hour of a quiet slot (the nights of a day worker) changes nothing
        mean, dev = decode(codes[2 * slot]), decode(codes[2 * slot + 1])
        if clip:
            x = min(x, mean + self.p.k * max(dev, 0.5 * math.sqrt(mean), 1.0))
        codes[2 * slot] = encode(mean + weight * (x - mean))
        codes[2 * slot + 1] = encode(dev + weight * (abs(x - mean) - dev))


class BaselineKind:
    params_type = BaselineParams

    def build(self, rule: RuleSpec, params: BaselineParams, context: KindContext) -> Detector:
        return one_at_a_time(_Baseline(rule, params, context).many)


class _Baseline:
    """One baseline rule's detector: its keys' profiles, read and written through the
    rule's state, and the arithmetic of its bucket size."""

    def __init__(self, rule: RuleSpec, params: BaselineParams, context: KindContext):
        self.p = params
        self.state = rule_state(rule, params, context, Profile)
        self.key_of = group_key(params.group_by)
        self.size = 3600 if params.bucket == "1h" else 86400
        self.s = _Slots(self.size, params)
        self.per_day = self.s.per_day
        self.zone = context.zone
        self.records = params.measure == "records"
        self.unit = "records" if self.records else "accesses"
        self.peer_of = params.peer_group.values() if params.peer_group is not None else None
        self.offset: float | None = None  # the zone's offset, refreshed whenever a bucket changes

    def local_bucket(self, event: AccessEvent) -> int:
        t = event.timestamp.timestamp()
        if self.offset is None:
            self.offset = self.zone.utcoffset(event.timestamp).total_seconds()
        return int((t + self.offset) // self.size)

    def peer(self, event: AccessEvent) -> str | None:
        """The key of the event's peer group (the first of its roles), if the rule has one."""
        roles = self.peer_of(event) if self.peer_of is not None else ()
        return _PEER + str(roles[0]) if roles else None

    def close(self, prof: Profile, peer: str | None, new_bucket: int) -> None:
        """Record the closed bucket, and the quiet buckets of active days as zeros."""
        s, params, per_day = self.s, self.p, self.per_day
        old = prof.bucket
        learned = prof.days >= params.min_days
        if not prof.daily:
            prof.daily, prof.weekly = s.empty_daily, s.empty_weekly
        quiet = list(range(old + 1, min(new_bucket, (old // per_day + 1) * per_day)))
        if new_bucket // per_day != old // per_day:
            quiet += range(max(old + 1, (new_bucket // per_day) * per_day), new_bucket)
        weeks = prof.days // 7 + 1  # observations of an hour-of-week slot, about
        daily, weekly = array("H", prof.daily), array("H", prof.weekly)  # decoded once, not per slot
        w_day, w_week = _weight(prof.days + 1, params.alpha), _weight(weeks, params.alpha)
        for b, x in [(old, prof.total)] + [(b, 0) for b in quiet]:
            d_slot, w_slot = s.slots(b)
            cap = s.bound(prof.daily, d_slot)[1] if learned and x else None
            s.observe_mean(weekly, w_slot, x, w_week, cap)
            s.observe(daily, d_slot, x, w_day, learned)
        prof.daily, prof.weekly = daily.tobytes(), weekly.tobytes()
        if peer is not None and prof.total > 0:
            pp = self.state.get(peer) or Profile(daily=s.empty_daily)
            pp.days += 1
            d_slot, _ = s.slots(old)
            # never clipped: members differ, and a heavy member is the role's usual too
            codes = array("H", pp.daily)
            s.observe(codes, d_slot, prof.total, _weight(pp.days, params.peer_alpha), False)
            pp.daily = codes.tobytes()
            self.state.put(peer, pp)

    def peer_bound(self, peer: str | None, d_slot: int) -> tuple[float, float] | None:
        if peer is None:
            return None
        pp = self.state.get(peer)
        if pp is None or pp.days < self.p.peer_min_observations:
            return None
        theirs = self.s.bound(pp.daily, d_slot)
        return theirs if theirs is not None and theirs[0] > 0 else None

    def own_bound(self, prof: Profile, bucket: int) -> tuple[float, float] | None:
        """The key's usual for the bucket's slot: the widest of the slot and the
        slots beside it (an hour of overtime or an early start moves work into the
        hour next to the usual ones: not an anomaly)."""
        s = self.s
        weekly = prof.days >= self.p.weekly_after_days
        best = None
        for b in (bucket - 1, bucket, bucket + 1) if self.per_day > 1 else (bucket,):
            d_slot, w_slot = s.slots(b)
            got = s.bound_weekly(prof, w_slot, d_slot) if weekly else s.bound(prof.daily, d_slot)
            if got is not None and (best is None or got[1] > best[1]):
                best = got
        return best

    def limit_for(self, prof: Profile, peer: str | None, bucket: int) -> float:
        params = self.p
        d_slot, _ = self.s.slots(bucket)
        theirs = self.peer_bound(peer, d_slot)
        if prof.days < params.min_days:
            # too little of the key's own history: its peers' usual stands in, if asked and known
            if params.peers_stand_in and theirs is not None:
                return max(float(params.floor) - 0.5, theirs[1])
            return math.inf
        own = self.own_bound(prof, bucket)
        limit = max(float(params.floor) - 0.5, own[1] if own else 0.0)
        return max(limit, theirs[1]) if theirs is not None else limit

    def explain(self, key: str, prof: Profile, peer: str | None, bucket: int) -> str:
        d_slot, _ = self.s.slots(bucket)
        weekday = _DAYS[(bucket // self.per_day + 3) % 7]
        hour = f"{d_slot * self.size // 3600:02d}:00"
        weekly = prof.days >= self.p.weekly_after_days
        own = self.own_bound(prof, bucket)
        if self.size == 3600:
            now = f"{prof.total} {self.unit} this hour ({weekday} {hour})"
            usual = f"around {weekday}s {hour}" if weekly else f"around {hour}"
        else:
            now = f"{prof.total} {self.unit} today ({weekday})"
            usual = f"for {weekday}s" if weekly else "for a day"
        if prof.days < self.p.min_days:
            text = f"{now}; {key} has {prof.days} active day(s) of history, too few for a usual of its own"
        else:
            text = (f"{now}; {key}'s usual {usual} ≤ {_num(own[1] if own else 0)} "
                    f"({prof.days} active days of history)")
        if peer is not None:
            theirs = self.peer_bound(peer, d_slot)
            role = peer[len(_PEER):]
            text += (f"; peers in role {role} ≤ {_num(theirs[1])} when active" if theirs is not None
                     else f"; no usual known for peers in role {role} then")
        return text

    def many(self, events: Sequence[AccessEvent], positions: Sequence[int], columns: Columns,
             ) -> list[tuple[int, Verdict]]:
        """The chunk's events in order; a key's profile is read once per chunk and
        written once (the same object, changed in place), not once per event."""
        found: list[tuple[int, Verdict]] = []
        state, size, per_day, records = self.state, self.size, self.per_day, self.records
        keys, seconds = columns.keys(self.p.group_by, self.key_of, positions), columns.seconds(positions)
        profiles: dict[str, Profile] = {}
        state.prefetch(distinct_at(keys, positions))
        changed: set[str] = set()
        for pos in positions:
            key = keys[pos]
            if key is None:
                continue
            off = self.offset
            if off is None:
                off = self.offset = self.zone.utcoffset(events[pos].timestamp).total_seconds()
            bucket = int((seconds[pos] + off) // size)
            prof = profiles.get(key)
            if prof is None:
                prof = profiles[key] = state.get(key) or Profile()
            event = events[pos]
            if bucket != prof.bucket:
                stale = bucket < prof.bucket - _LATE_DAYS * per_day
                if bucket < prof.bucket and not stale:
                    continue  # a late event of a closed bucket: its bucket is history
                self.offset = None
                bucket = self.local_bucket(event)
                peer = self.peer(event)
                if prof.bucket >= 0 and not stale:
                    if bucket // per_day != prof.bucket // per_day:
                        prof.days += 1
                    self.close(prof, peer, bucket)
                prof.bucket, prof.total, prof.first_id = bucket, 0, event.event_id
                prof.limit = self.limit_for(prof, peer, bucket)
            changed.add(key)
            prof.total += event.record_count if records else 1
            if prof.total > prof.limit:
                prof.limit = math.inf  # one alert per bucket
                ids = (prof.first_id, event.event_id) if prof.first_id != event.event_id else (event.event_id,)
                reason = self.explain(key, prof, self.peer(event), bucket)
                found.append((pos, Verdict(reason=reason, event_ids=ids)))
        for key in changed:
            state.put(key, profiles[key])
        return found


def _weight(n: int, alpha: float) -> float:
    return max(alpha, 1.0 / max(1, n))


def _num(x: float) -> str:
    return str(int(math.ceil(x))) if x >= 10 else f"{x:.1f}".rstrip("0").rstrip(".")
