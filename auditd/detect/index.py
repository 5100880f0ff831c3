"""Route each event to only the rules that can match it, and count cheaply.

The index reads from every rule's resolved condition the `event.action` and
`event.dataset` values it requires (``resolve.required_values``: conjuncts such as
``event.action in (export, download)``, and 'or's whose every branch is constrained).
Buckets are precomputed for every combination of the values named by some rule plus
"any other value", so routing is two dict lookups and each bucket keeps load order.
A rule whose condition folded to false is in no bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from auditd.detect.resolve import required_values
from auditd.event import AccessEvent



class RuleIndex:
    """Buckets of rules (objects with `.condition` and `.index`) by action and dataset."""

    def __init__(self, rules: Sequence[Any]):
        need = [(required_values(r.condition, "event.action"), required_values(r.condition, "event.dataset"))
                for r in rules]
        actions = sorted(set().union(*(a for a, _ in need if a is not None)))
        datasets = sorted(set().union(*(d for _, d in need if d is not None)))
        self.buckets: list[tuple[Any, ...]] = []
        slot_of_members: dict[tuple[int, ...], int] = {}
        self._rows: dict[str | None, dict[str | None, int]] = {}
        for action in [*actions, None]:
            row: dict[str | None, int] = {}
            for dataset in [*datasets, None]:
                members = tuple(r for r, (a, d) in zip(rules, need) if _admits(a, action) and _admits(d, dataset))
                key = tuple(r.index for r in members)
                if key not in slot_of_members:  # equal buckets share a slot (and its counter)
                    slot_of_members[key] = len(self.buckets)
                    self.buckets.append(members)
                row[dataset] = slot_of_members[key]
            self._rows[action] = row
        self._other = self._rows[None]

    def slot(self, event: AccessEvent) -> int:
        row = self._rows.get(event.action, self._other)
        slot = row.get(event.dataset)
        return row[None] if slot is None else slot

    def candidates(self, event: AccessEvent) -> tuple[Any, ...]:
        return self.buckets[self.slot(event)]


def _admits(required: frozenset[Any] | None, value: str | None) -> bool:
    """Can a rule needing `required` match an event whose value is `value`
    (None standing for every value no rule names)?"""
    if required is None:
        return True
    return value is not None and value in required


@dataclass(frozen=True, slots=True)
class RuleCounters:
    evaluations: int  # events that reached the rule's condition
    matches: int  # of them, those where the condition held
    excepted: int  # of the matches, those an exception allowed
    alerts: int
    seconds: float  # estimated time in the condition, from the timed sample
    timed: int  # evaluations that were timed


class RuleStats:
    """Per-rule counters kept cheap for the hot path.

    An event costs one increment, on its bucket: a rule's evaluations are the sum of
    the hits of the buckets that hold it. Matches are rare and counted directly.
    Condition time is measured on one event in `timing_every` and scaled up.
    """

    def __init__(self, rule_ids: Sequence[str], buckets: Sequence[tuple[Any, ...]], timing_every: int = 64):
        self.rule_ids = tuple(rule_ids)
        self.timing_every = max(1, timing_every)
        self.countdown = self.timing_every
        self._members = [tuple(r.index for r in bucket) for bucket in buckets]
        self.bucket_hits = [0] * len(buckets)
        n = len(self.rule_ids)
        self.matches = [0] * n
        self.excepted = [0] * n
        self.alerts = [0] * n
        self.timed = [0] * n
        self.timed_ns = [0] * n

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
                                        seconds, timed)
        return out
