"""The detect stage's entry point: load rule files into a RuleSet, evaluate events.

    problems = Problems()
    ruleset = load_rules([SHIPPED_RULES, operator_dir], problems, categories=settings.categories)
    problems.raise_if_any()          # never run a partly loaded set
    alerts = ruleset.evaluate(event)

A RuleSet is built once and not changed; a reload builds a new one and swaps it in
whole. Its only mutable part is `stats`, the counters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

from auditd.config.located import Problems
from auditd.config.typed import DEFAULT_ZONE
from auditd.detect.alert import Alert, alert_id
from auditd.detect.compiler import IpParser, Predicate, compile_predicate, make_ip_parser
from auditd.detect.index import EVERYTHING, INDEXED_LISTS, INDEXED_SCALARS, RuleIndex, RuleStats
from auditd.detect.kind_support import Columns
from auditd.detect.kind_types import Many
from auditd.detect.kinds import KINDS, Detector, KindContext, RuleKind, Verdict
from auditd.detect.render import compile_output, compile_title
from auditd.detect.resolve import routed_condition
from auditd.detect.rule_exceptions import ExceptionCheck, compile_exceptions
from auditd.detect.rulefile import read_definitions
from auditd.detect.spec import RuleSpec, build_specs
from auditd.event import AccessEvent

# Categories as the config gives them: name -> settings with a `sensitive` flag (or a
# bool), or just the names.
Categories = Mapping[str, Any] | Iterable[str]


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRule:
    spec: RuleSpec
    index: int  # position in RuleSet.rules, and in the stats counters
    predicate: Predicate
    # the condition less what the index's routing guarantees: only for routed events
    routed: Predicate
    exception: ExceptionCheck | None
    detector: Detector | None  # None: the condition alone decides (kind match)
    many: Many | None  # the detector's chunk-at-once form (stateful kinds), or None
    title: Callable[[AccessEvent], str]
    output: Callable[[AccessEvent], dict[str, Any]] | None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def condition(self) -> Any:
        return self.spec.condition


def compile_rule(spec: RuleSpec, index: int, *, parse_ip: IpParser, context: KindContext,
                 kinds: Mapping[str, RuleKind] = KINDS) -> CompiledRule:
    title, problems = compile_title(spec.title or f"{spec.id}: {{event.action}} by {{user.id}}")
    if title is None:  # pragma: no cover - titles are checked while files are read
        raise ValueError(f"rule {spec.id}: {problems}")
    predicate = compile_predicate(spec.condition, parse_ip)
    routed = routed_condition(spec.condition, INDEXED_SCALARS, INDEXED_LISTS)
    detector = kinds[spec.kind].build(spec, spec.params, context)
    return CompiledRule(
        spec=spec, index=index, predicate=predicate,
        routed=predicate if routed is spec.condition else compile_predicate(routed, parse_ip),
        exception=compile_exceptions(spec.exceptions, context.zone),
        detector=detector,
        many=getattr(detector, "many", None),
        title=title,
        output=compile_output(spec.output_fields) if spec.output_fields else None,
    )


class RuleSet:
    """Compiled rules, the index that routes events to them, and their counters.

    `rules` holds every rule in load order, disabled ones included (so `test-rules`
    can still run their samples); only enabled rules of the set's `scopes` are indexed
    and evaluated. A daemon's set leaves out `scope: cluster` rules (the Elasticsearch
    lease holder runs them over every host's events), so they cost the per-event path
    nothing; a replay's set includes them (`with_scopes`).
    """

    def __init__(self, rules: Sequence[CompiledRule], *, sensitive_categories: Iterable[str] = (),
                 timing_every: int = 64, context: KindContext | None = None,
                 kinds: Mapping[str, RuleKind] = KINDS, scopes: frozenset[str] = frozenset({"local"})):
        self.rules = tuple(rules)
        self.scopes = scopes
        self._timing_every = timing_every
        self.context = context or KindContext()
        self.kinds = kinds
        # runtime suppressions (auditd.detect.suppressions), per rule index; set by the pipeline
        self._suppress: list[Any] = [None] * len(self.rules)
        self._by_id = {r.id: r for r in self.rules}
        self._sensitive = frozenset(sensitive_categories)
        # the rules whose detector takes a chunk at once, in load order
        self._many = tuple(r.index for r in self.rules if r.many is not None)
        self.stats = RuleStats([r.id for r in self.rules], timing_every=timing_every)
        # per slot, each rule with the predicate to run on the events routed there
        self._checks: list[tuple[tuple[CompiledRule, Predicate], ...]] = []
        self.index = RuleIndex([r for r in self.rules if r.spec.enabled and r.spec.scope in scopes],
                               on_new_bucket=self._add_bucket)

    def with_scopes(self, scopes: frozenset[str]) -> "RuleSet":
        """The same compiled rules (and so the same state) evaluating the given scopes."""
        out = RuleSet(self.rules, sensitive_categories=self._sensitive, timing_every=self._timing_every,
                      context=self.context, kinds=self.kinds, scopes=scopes)
        out._suppress = list(self._suppress)
        return out

    def scoped(self, scope: str) -> tuple[CompiledRule, ...]:
        """The enabled rules of one scope, in load order."""
        return tuple(r for r in self.rules if r.spec.enabled and r.spec.scope == scope)

    def _add_bucket(self, members: tuple[CompiledRule, ...]) -> None:
        self.stats.add_bucket(members)
        # the EVERYTHING slot also serves events the index could not route: full conditions
        full = len(self._checks) == EVERYTHING
        self._checks.append(tuple((r, r.predicate if full else r.routed) for r in members))

    def __len__(self) -> int:
        return len(self.rules)

    def set_suppressions(self, checks: Mapping[str, Callable[[AccessEvent], Any]]) -> None:
        """Swap in the store's suppressions (rule id, or '*' for all -> check)."""
        every = checks.get("*")
        out: list[Any] = []
        for rule in self.rules:
            own = checks.get(rule.id)
            if own is not None and every is not None:
                out.append(lambda e, a=own, b=every: a(e) or b(e))
            else:
                out.append(own or every)
        self._suppress = out

    def reads(self, prefix: str) -> bool:
        """Does an enabled rule's condition, parameters, exceptions or output name a
        field starting with `prefix`? Lets an earlier stage skip work no rule looks at."""
        return any(prefix in repr((r.spec.condition, r.spec.params, r.spec.exceptions, r.spec.output_fields))
                   for r in self.enabled)

    def rule(self, rule_id: str) -> CompiledRule:
        return self._by_id[rule_id]

    @property
    def enabled(self) -> tuple[CompiledRule, ...]:
        return tuple(r for r in self.rules if r.spec.enabled)

    def evaluate(self, event: AccessEvent) -> list[Alert]:
        """The alerts of every enabled rule on one event, in rule load order."""
        return self.evaluate_all((event,))

    def evaluate_all(self, events: Iterable[AccessEvent]) -> list[Alert]:
        """The alerts of every enabled rule on each event, in event then rule load order.

        A rule whose detector takes a chunk at once (`many`: the stateful kinds) is
        given its events after the walk, each rule its own in order, with the chunk's
        shared columns; its alerts are put back in their place."""
        if not isinstance(events, (list, tuple)):
            events = list(events)
        stats, index, checks = self.stats, self.index, self._checks
        key_of, slots, hits = index.key_of, index.slots, stats.bucket_hits
        placed: list[tuple[int, int, Alert]] = []
        deferred: list[list[int]] = [[] for _ in self.rules] if self._many else []
        for pos, event in enumerate(events):
            try:
                slot = slots.get(key_of(event))
            except TypeError:  # an unhashable key: the index says where it goes
                slot = None
            if slot is None:
                slot = index.slot(event)
            hits[slot] += 1
            stats.countdown -= 1
            check = checks[slot]
            if stats.countdown <= 0:
                check = self._held_timed(event, check)
            for rule, holds in check:
                if not holds(event):
                    continue
                if rule.many is not None:
                    deferred[rule.index].append(pos)
                    continue
                alert = self._confirm(rule, event)
                if alert is not None:
                    placed.append((pos, rule.index, alert))
        return self._merge(events, placed, deferred)

    def _merge(self, events: Sequence[AccessEvent], placed: list[tuple[int, int, Alert]],
               deferred: list[list[int]]) -> list[Alert]:
        """The deferred rules' alerts added, each in its place (event, then rule order)."""
        columns = None
        for rule_index in self._many:
            positions = deferred[rule_index]
            if positions:
                columns = columns or Columns(events)
                placed += self._confirm_many(self.rules[rule_index], events, positions, columns)
        if columns is not None:
            placed.sort(key=_place)
        return [alert for _, _, alert in placed]

    def held(self, events: Sequence[AccessEvent]) -> array:
        """Every enabled rule whose condition holds on an event, as a flat array of
        (event position, rule index) pairs in event then rule load order: what
        `evaluate_all` would confirm. A worker process runs the conditions (pure
        functions of the event); the writer confirms them with `confirm_held`, where
        exceptions, state, suppressions and counters live. (An array of ints crosses
        between processes at a fraction of the cost of a list of tuples.)"""
        index, checks = self.index, self._checks
        key_of, slots, hits = index.key_of, index.slots, self.stats.bucket_hits
        out = array("I")
        add = out.extend
        for at, event in enumerate(events):
            try:
                slot = slots.get(key_of(event))
            except TypeError:
                slot = None
            if slot is None:
                slot = index.slot(event)
            hits[slot] += 1
            for rule, holds in checks[slot]:
                if holds(event):
                    add((at, rule.index))
        return out

    def confirm_held(self, events: Sequence[AccessEvent], held: Sequence[int]) -> list[Alert]:
        """The alerts of conditions that held (`held` from `held()` on the same events),
        confirmed in order: the same alerts as `evaluate_all(events)`."""
        rules, confirm = self.rules, self._confirm
        placed: list[tuple[int, int, Alert]] = []
        deferred: list[list[int]] = [[] for _ in rules] if self._many else []
        pairs = iter(held)
        for at, rule_index in zip(pairs, pairs):
            rule = rules[rule_index]
            if rule.many is not None:
                deferred[rule_index].append(at)
                continue
            alert = confirm(rule, events[at])
            if alert is not None:
                placed.append((at, rule_index, alert))
        return self._merge(events, placed, deferred)

    def _held_timed(self, event: AccessEvent, checks: tuple[tuple[CompiledRule, Predicate], ...],
                    ) -> list[tuple[CompiledRule, Predicate]]:
        """The rules whose condition holds, each condition timed (one event in
        `timing_every`), paired with a condition that holds (the walk goes on as usual)."""
        stats = self.stats
        stats.countdown = stats.timing_every
        clock = time.perf_counter_ns
        held: list[tuple[CompiledRule, Predicate]] = []
        for rule, holds in checks:
            started = clock()
            ok = holds(event)
            stats.timed_ns[rule.index] += clock() - started
            stats.timed[rule.index] += 1
            if ok:
                held.append((rule, _holds))
        return held

    def _confirm(self, rule: CompiledRule, event: AccessEvent) -> Alert | None:
        """After the condition held: exceptions, the kind's detector, the alert."""
        stats = self.stats
        stats.matches[rule.index] += 1
        if rule.exception is not None and rule.exception(event) is not None:
            stats.excepted[rule.index] += 1
            return None
        verdict = None if rule.detector is None else rule.detector(event)
        if rule.detector is not None and verdict is None:
            return None
        # after the detector: a suppressed key's state keeps learning, only its alert is held back
        suppress = self._suppress[rule.index]
        if suppress is not None and suppress(event) is not None:
            stats.excepted[rule.index] += 1
            return None
        stats.alerts[rule.index] += 1
        return self.make_alert(rule, event, verdict)

    def _confirm_many(self, rule: CompiledRule, events: Sequence[AccessEvent], positions: list[int],
                      columns: Columns) -> list[tuple[int, int, Alert]]:
        """`_confirm` for a rule's events of one chunk at once (its detector's `many`),
        timed whole: the rule's detector seconds in `stats` (and the metrics)."""
        started = time.perf_counter_ns()
        try:
            return self._confirm_chunk(rule, events, positions, columns)
        finally:
            self.stats.detector_ns[rule.index] += time.perf_counter_ns() - started

    def _confirm_chunk(self, rule: CompiledRule, events: Sequence[AccessEvent], positions: list[int],
                       columns: Columns) -> list[tuple[int, int, Alert]]:
        stats, at = self.stats, rule.index
        stats.matches[at] += len(positions)
        if rule.exception is not None:
            excepted = rule.exception
            kept = [p for p in positions if excepted(events[p]) is None]
            stats.excepted[at] += len(positions) - len(kept)
            positions = kept
        out: list[tuple[int, int, Alert]] = []
        if not positions:
            return out
        suppress = self._suppress[at]
        for pos, verdict in rule.many(events, positions, columns):
            event = events[pos]
            if suppress is not None and suppress(event) is not None:
                stats.excepted[at] += 1
                continue
            stats.alerts[at] += 1
            out.append((pos, at, self.make_alert(rule, event, verdict)))
        return out

    def suppressed(self, rule: CompiledRule, event: AccessEvent) -> Any:
        """The runtime suppression (``suppress add``) that holds back the rule's alert on
        the event, or None: for paths that confirm with `check` (cluster rules)."""
        suppress = self._suppress[rule.index]
        return None if suppress is None else suppress(event)

    def check(self, rule: CompiledRule, event: AccessEvent) -> Alert | None:
        """One rule on one event, whether enabled or not, bypassing index and stats
        (for samples, tests and `test-rules`)."""
        if not rule.predicate(event):
            return None
        if rule.exception is not None and rule.exception(event) is not None:
            return None
        verdict = None if rule.detector is None else rule.detector(event)
        if rule.detector is not None and verdict is None:
            return None
        return self.make_alert(rule, event, verdict)

    def with_fresh_state(self, rule: CompiledRule) -> CompiledRule:
        """The rule with its detector built again on an empty state of its own (a
        sample sequence starts from nothing, whatever ran before)."""
        if rule.detector is None:
            return rule
        from auditd.detect.state import StateStore

        context = dataclasses.replace(self.context, state=StateStore.in_memory())
        detector = self.kinds[rule.spec.kind].build(rule.spec, rule.spec.params, context)
        return dataclasses.replace(rule, detector=detector, many=getattr(detector, "many", None))

    def tick(self, now: dt.datetime) -> list[Alert]:
        """Let the enabled rules whose kinds keep state act on the passing of time."""
        alerts: list[Alert] = []
        for rule in self.rules:
            tick = getattr(rule.detector, "tick", None)
            if tick is None or not rule.spec.enabled or rule.spec.scope not in self.scopes:
                continue
            for finding in tick(now):
                suppress = self._suppress[rule.index]
                if suppress is not None and suppress(finding.event) is not None:
                    self.stats.excepted[rule.index] += 1
                    continue
                self.stats.alerts[rule.index] += 1
                alerts.append(self.make_alert(rule, finding.event, finding.verdict))
        return alerts

    def make_alert(self, rule: CompiledRule, event: AccessEvent, verdict: Verdict | None) -> Alert:
        spec = rule.spec
        event_ids = (verdict.event_ids if verdict is not None and verdict.event_ids else None) or (event.event_id,)
        return Alert(
            alert_id=alert_id(spec.id, *event_ids),
            rule_id=spec.id,
            rule_kind=spec.kind,
            severity=spec.severity,
            title=rule.title(event),
            timestamp=event.timestamp,
            event_ids=event_ids,
            actor=event.user_id,
            subject_ids=event.subject_ids,
            categories=event.categories,
            sensitive=event.sensitive or not self._sensitive.isdisjoint(event.categories),
            record_count=event.record_count,
            reason=None if verdict is None else verdict.reason,
            tags=spec.tags,
            output_fields=rule.output(event) if rule.output is not None else {},
        )


def _holds(event: AccessEvent) -> bool:
    return True


def _place(item: tuple[int, int, Alert]) -> tuple[int, int]:
    return item[0], item[1]


def load_rules(paths: Iterable[Path | str], problems: Problems, *, categories: Categories | None = None,
               zone: tzinfo = DEFAULT_ZONE, context: KindContext | None = None,
               kinds: Mapping[str, RuleKind] = KINDS, timing_every: int = 64) -> RuleSet:
    """Read rule files and folders in order, merge them and compile every rule.

    Every problem is added to `problems`. The RuleSet returned holds only the rules
    that compiled, so a caller must not run it when `problems` is not empty.
    `categories` (name -> settings with `.sensitive`, or names) makes category names
    in conditions and samples checked, and marks alerts on sensitive ones. `zone` is
    the company's zone (time constants, exception expiry); `context` reaches the kinds.
    """
    names, sensitive = _categories(categories)
    context = context or KindContext(zone=zone)
    defs = read_definitions(paths, problems, zone=zone, categories=names)
    specs = build_specs(defs, problems, zone=zone, categories=names, kinds=kinds)
    parse_ip = make_ip_parser()
    rules = [compile_rule(spec, i, parse_ip=parse_ip, context=context, kinds=kinds) for i, spec in enumerate(specs)]
    return RuleSet(rules, sensitive_categories=sensitive, timing_every=timing_every, context=context, kinds=kinds)


def _categories(categories: Categories | None) -> tuple[frozenset[str] | None, frozenset[str]]:
    if categories is None:
        return None, frozenset()
    if not isinstance(categories, Mapping):
        return frozenset(categories), frozenset()
    sensitive = frozenset(
        name for name, c in categories.items() if (c if isinstance(c, bool) else getattr(c, "sensitive", False))
    )
    return frozenset(categories), sensitive
