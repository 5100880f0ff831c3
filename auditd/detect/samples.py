"""Sample events of a rule: events that must and must not make it fire.

Samples are written as ECS documents, dotted (``event.action: export``) or nested
(``event: {action: export}``), as enriched events look when they reach detect. They
are checked as strictly as conditions — a misspelt field in a sample would otherwise
make the sample pass for the wrong reason. ``@timestamp`` defaults to a Monday morning
and ``event.id`` to one derived from the rule, so most samples need only the fields
their rule tests.

A stateful rule (threshold, sequence, baseline, first-seen) fires only after a history,
so a sample may be a sequence of events, run in order against fresh state::

    match:
      - sequence:
          - {repeat: 30, every: 20s, event: {user.id: E1, event.action: read,
                                             neo.data.subject_ids: ["C{n}"]}}
          - {user.id: E1, event.action: export}

A step is an event, or ``{repeat: N, every: DURATION, event: {...}}`` whose text values
may hold ``{n}``, the repetition's number (0, 1, ...; a value that is just "{n}" is
the number itself). Steps without ``@timestamp``
follow the previous one by ``every`` (one minute by default). A sequence under
``match`` passes when one of its events raises an alert (a window crosses its bound
where it crosses, not necessarily at the end); under ``no_match``, when none does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from auditd.config.located import Doc, PathKey, Problems
from auditd.detect.resolve import near
from auditd.errors import Location
from auditd.event import ACTIONS, EARLIEST, FIELDS, LATEST, OUTCOMES, AccessEvent, FieldSpec, parse_time

SAMPLE_TIME = "2026-11-02T10:00:00+08:00"  # a Monday, in business hours


@dataclass(frozen=True, slots=True)
class SamplesItem:
    """A rule's `samples:` as written."""

    match: list[dict[str, Any]] = field(default_factory=list)
    no_match: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SampleEvent:
    expect_match: bool
    event: AccessEvent  # the sample's (last) event
    where: Location | None = field(default=None, compare=False)
    before: tuple[AccessEvent, ...] = ()  # a sequence's earlier events, in order

    @property
    def events(self) -> tuple[AccessEvent, ...]:
        return (*self.before, self.event)


MAX_SEQUENCE = 10_000  # events one sample may expand to
DEFAULT_STEP = dt.timedelta(minutes=1)


def build_samples(item: SamplesItem, doc: Doc, path: PathKey, problems: Problems, *, rule_id: str,
                  zone: tzinfo, categories: frozenset[str] | None) -> list[SampleEvent]:
    out = []
    for key, expect in (("match", True), ("no_match", False)):
        for i, raw in enumerate(getattr(item, key)):
            where = path + (key, i)
            if isinstance(raw, dict) and "sequence" in raw:
                events = sample_sequence(raw, doc, where, problems, event_id=f"sample:{rule_id}:{key}:{i}",
                                         zone=zone, categories=categories)
                if events:
                    out.append(SampleEvent(expect, events[-1], doc.where(where), tuple(events[:-1])))
                continue
            event = sample_event(raw, doc, where, problems, event_id=f"sample:{rule_id}:{key}:{i}",
                                 zone=zone, categories=categories)
            if event is not None:
                out.append(SampleEvent(expect, event, doc.where(where)))
    return out


def sample_sequence(raw: dict[str, Any], doc: Doc, path: PathKey, problems: Problems, *, event_id: str,
                    zone: tzinfo, categories: frozenset[str] | None) -> list[AccessEvent]:
    """The events of a ``sequence:`` sample, timed; [] after reporting problems."""
    from auditd.config.typed import Duration  # the sample's only config type

    before = len(problems.items)
    extra = sorted(set(raw) - {"sequence"})
    if extra:
        problems.add(doc, path + (extra[0],), f"unknown key '{extra[0]}' (valid keys: sequence)", at_key=True)
    steps = raw["sequence"]
    if not isinstance(steps, list) or not steps:
        problems.add(doc, path + ("sequence",), "expected a list of events or {repeat, every, event} steps")
        return []
    out: list[AccessEvent] = []
    clock: dt.datetime | None = None
    for i, step in enumerate(steps):
        where = path + ("sequence", i)
        if not isinstance(step, dict):
            problems.add(doc, where, "expected an event or {repeat: N, every: DURATION, event: {...}}")
            continue
        repeat, every, body = 1, DEFAULT_STEP, step
        if "event" in step:
            unknown = sorted(set(step) - {"event", "repeat", "every"})
            if unknown:
                problems.add(doc, where + (unknown[0],), f"unknown key '{unknown[0]}' (valid keys: event, every, "
                             "repeat)", at_key=True)
                continue
            body = step["event"]
            repeat = step.get("repeat", 1)
            if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= MAX_SEQUENCE:
                problems.add(doc, where + ("repeat",), f"expected a number from 1 to {MAX_SEQUENCE}")
                continue
            try:
                every = Duration.from_config(step.get("every", 60)).timedelta
            except ValueError as exc:
                problems.add(doc, where + ("every",), str(exc))
                continue
            where = where + ("event",)
        if not isinstance(body, dict):
            problems.add(doc, where, "expected an event mapping")
            continue
        if len(out) + repeat > MAX_SEQUENCE:
            problems.add(doc, where, f"a sample sequence has at most {MAX_SEQUENCE} events")
            break
        for n in range(repeat):
            doc_n = _numbered(body, n) if repeat > 1 else body
            event = sample_event(doc_n, doc, where, problems, event_id=f"{event_id}:{len(out)}", zone=zone,
                                 categories=categories, timestamp=None)
            if event is None:
                break
            try:
                if event.timestamp is None:
                    clock = parse_time(SAMPLE_TIME) if clock is None else clock + every
                else:
                    clock = event.timestamp if n == 0 else clock + every
            except OverflowError:
                clock = LATEST
            if clock >= LATEST:
                problems.add(doc, where, f"the sequence runs past {LATEST.year - 1}: no event has such a time")
                break
            event.timestamp = clock
            out.append(event)
    return out if len(problems.items) == before else []


def _numbered(value: Any, n: int) -> Any:
    if isinstance(value, str):
        return n if value == "{n}" else value.replace("{n}", str(n))
    if isinstance(value, list):
        return [_numbered(v, n) for v in value]
    if isinstance(value, dict):
        return {k: _numbered(v, n) for k, v in value.items()}
    return value


_DEFAULT_TIME: Any = object()


def sample_event(raw: dict[str, Any], doc: Doc, path: PathKey, problems: Problems, *, event_id: str,
                 zone: tzinfo, categories: frozenset[str] | None = None,
                 timestamp: Any = _DEFAULT_TIME) -> AccessEvent | None:
    """The AccessEvent a sample document describes, or None after reporting problems.
    Without ``@timestamp`` it takes `timestamp` (default: SAMPLE_TIME)."""
    before = len(problems.items)
    kwargs: dict[str, Any] = {"event_id": event_id}
    for name, value, where in _flatten(raw, "", path, doc, problems):
        spec = FIELDS[name]
        rewritten = _rewritten_by_yaml(spec, value, doc, where)
        if rewritten:
            problems.add(doc, rewritten[0], rewritten[1])
            continue
        typed = _typed(spec, value, zone)
        if typed is _BAD:
            problems.add(doc, where, f"'{name}' is {_KIND_WORDS[spec.kind]}, got {value!r}")
            continue
        why = _enum_problem(name, typed, categories)
        if why:
            problems.add(doc, where, why)
        kwargs[spec.attr] = typed
    if "action" not in kwargs:
        problems.add(doc, path, "a sample needs 'event.action'")
    kwargs.setdefault("timestamp", parse_time(SAMPLE_TIME) if timestamp is _DEFAULT_TIME else timestamp)
    if len(problems.items) > before:
        return None
    return AccessEvent(**kwargs)


def _flatten(raw: dict[str, Any], prefix: str, path: PathKey, doc: Doc,
             problems: Problems) -> list[tuple[str, Any, PathKey]]:
    out = []
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else key
        where = path + (key,)
        if name in FIELDS:
            out.append((name, value, where))
        elif isinstance(value, dict) and any(f.startswith(name + ".") for f in FIELDS):
            out.extend(_flatten(value, name, where, doc, problems))
        elif name.startswith("labels."):
            out.append(("labels", {name[len("labels."):]: value}, where))
        else:
            problems.add(doc, where, f"unknown field '{name}'{near(name, FIELDS)}", at_key=True)
    return _merge_labels(out)


def _merge_labels(items: list[tuple[str, Any, PathKey]]) -> list[tuple[str, Any, PathKey]]:
    """labels.a and labels.b written dotted become one labels mapping."""
    labels = [i for i in items if i[0] == "labels"]
    if len(labels) <= 1:
        return items
    merged: dict[str, Any] = {}
    for _, value, _ in labels:
        merged.update(value if isinstance(value, dict) else {})
    rest = [i for i in items if i[0] != "labels"]
    return rest + [("labels", merged, labels[0][2])]


def _rewritten_by_yaml(spec: FieldSpec, value: Any, doc: Doc, where: PathKey) -> tuple[PathKey, str] | None:
    """(where, why) for a text value that YAML 1.1 turned into something else (00123 -> 83)."""
    if spec.kind in ("str", "ip"):
        cells = [(where, value)]
    elif spec.kind == "list":
        cells = [(where + (i,), v) for i, v in enumerate(value)] if isinstance(value, list) else [(where, value)]
    else:
        return None
    for cell_where, cell in cells:
        _, why = doc.read_as_text(cell_where, cell)
        if why:
            return cell_where, why
    return None


_BAD: Any = object()
_KIND_WORDS = {"str": "text", "ip": "an address", "int": "a number", "bool": "true or false",
               "time": "an ISO 8601 time from 1970 to 9998", "list": "a list of text", "map": "a mapping of text"}


def _typed(spec: FieldSpec, value: Any, zone: tzinfo) -> Any:
    kind = spec.kind
    if kind in ("str", "ip"):
        return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else _BAD
    if kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if kind == "bool":
        return value if isinstance(value, bool) else _BAD
    if kind == "time":
        try:
            t = parse_time(value, zone) if isinstance(value, (str, dt.datetime)) else _BAD
        except (ValueError, OverflowError):
            return _BAD
        return t if t is _BAD or EARLIEST <= t < LATEST else _BAD
    if kind == "list":
        items = value if isinstance(value, list) else [value]
        ok = all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in items)
        return tuple(str(v) for v in items) if ok else _BAD
    if kind == "map":
        ok = isinstance(value, dict) and all(isinstance(v, (str, int)) for v in value.values())
        return {str(k): str(v) for k, v in value.items()} if ok else _BAD
    return _BAD  # pragma: no cover - a new field kind must be taught here


def _enum_problem(name: str, value: Any, categories: frozenset[str] | None) -> str | None:
    valid: Any = {"event.action": ACTIONS, "event.outcome": OUTCOMES}.get(name)
    if name == "neo.data.categories" and categories:
        unknown = [v for v in value if v not in categories]
        if unknown:
            return (f"unknown data category {unknown[0]!r}{near(unknown[0], categories)}; "
                    f"valid: {', '.join(sorted(categories))}")
        return None
    if valid is not None and value not in valid:
        return f"'{name}' is never {value!r}{near(str(value), valid)}; valid: {', '.join(valid)}"
    return None
