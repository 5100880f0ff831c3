"""Structured rule exceptions: named, owned, reasoned and dated allowances.

As in Falco, an exception is a tuple of fields and the value tuples for which the rule
must not fire, rather than an ``and not (...)`` appended to the condition: it keeps the
condition readable, lets a check list who owns which allowance and until when, and
compiles to one set lookup on a tuple of attributes.

An exception applies to events on or before its ``expires`` date (in the company's
zone), so replaying old logs gives the same verdicts, and an expired allowance stops
hiding anything the day after without a reload.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from auditd.config.located import Doc, PathKey, Problems
from auditd.errors import Location
from auditd.detect.resolve import near
from auditd.event import FIELDS, AccessEvent, FieldSpec

_KEY_KINDS = frozenset({"str", "ip", "int", "bool"})  # one value per event: hashable keys


@dataclass(frozen=True, slots=True)
class ExceptionItem:
    """An exception as written in a rule file."""

    name: str
    fields: list[str]
    values: list[Any]  # rows of values, one per field; a bare value when there is one field
    reason: str
    owner: str
    expires: dt.date


@dataclass(frozen=True, slots=True)
class ExceptionSpec:
    name: str
    fields: tuple[str, ...]
    attrs: tuple[str, ...]
    values: frozenset[tuple[Any, ...]]
    reason: str
    owner: str
    expires: dt.date
    where: Location | None = field(default=None, compare=False)


_BAD: Any = object()
_KIND_WORDS = {"str": "text", "ip": "an address", "int": "a number", "bool": "true or false"}


def build_exception(item: ExceptionItem, doc: Doc, path: PathKey, problems: Problems) -> ExceptionSpec | None:
    """Check field names and convert every value to its field's type."""
    specs = _field_specs(item, doc, path, problems)
    if specs is None:
        return None
    before = len(problems.items)
    rows: set[tuple[Any, ...]] = set()
    for r, row in enumerate(item.values):
        typed = _typed_row(row, specs, doc, path + ("values", r), problems)
        if typed is not None:
            rows.add(typed)
    if len(problems.items) > before:
        return None
    return ExceptionSpec(item.name, tuple(item.fields), tuple(s.attr for s in specs), frozenset(rows),
                         item.reason, item.owner, item.expires, doc.where(path))


def _field_specs(item: ExceptionItem, doc: Doc, path: PathKey, problems: Problems) -> list[FieldSpec] | None:
    if not item.fields:
        problems.add(doc, path + ("fields",), "an exception needs at least one field")
        return None
    specs, ok = [], True
    for i, name in enumerate(item.fields):
        spec = FIELDS.get(name)
        if spec is None:
            problems.add(doc, path + ("fields", i), f"unknown field '{name}'{near(name, FIELDS)}")
            ok = False
        elif spec.kind not in _KEY_KINDS:
            problems.add(doc, path + ("fields", i),
                         f"exceptions compare single values; '{name}' is a {spec.kind} field")
            ok = False
        specs.append(spec)
    return specs if ok else None


def _typed_row(row: Any, specs: list[FieldSpec], doc: Doc, path: PathKey,
               problems: Problems) -> tuple[Any, ...] | None:
    cells = row if isinstance(row, list) else [row]  # one field: a bare value will do
    if len(cells) != len(specs):
        names = [s.name for s in specs]
        problems.add(doc, path, f"expected {len(specs)} value(s), one per field {names}, got {len(cells)}")
        return None
    typed = []
    for c, (spec, cell) in enumerate(zip(specs, cells)):
        where = path + ((c,) if isinstance(row, list) else ())
        _, why = doc.read_as_text(where, cell) if spec.kind in ("str", "ip") else (None, None)
        value = _BAD if why else _typed(spec.kind, cell)
        if value is _BAD:
            # 00123 unquoted is the number 83 by now: an exception for it would never apply
            problems.add(doc, where, why or f"'{spec.name}' is {_KIND_WORDS[spec.kind]}, got {cell!r}")
        typed.append(value)
    return None if _BAD in typed else tuple(typed)


def _typed(kind: str, value: Any) -> Any:
    if kind == "bool":
        return value if isinstance(value, bool) else _BAD
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return _BAD
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            return _BAD
    return str(value)  # ids such as 10086 are often written unquoted


ExceptionCheck = Callable[[AccessEvent], "ExceptionSpec | None"]


def compile_exceptions(specs: tuple[ExceptionSpec, ...], zone: tzinfo) -> ExceptionCheck | None:
    """A function naming the exception that applies to an event, or None if none do.

    Exceptions on the same fields share one dict; a key held by several of them maps
    to the one that lasts longest.
    """
    if not specs:
        return None
    groups: dict[tuple[str, ...], dict[tuple[Any, ...], ExceptionSpec]] = {}
    for spec in specs:
        table = groups.setdefault(spec.attrs, {})
        for key in spec.values:
            held = table.get(key)
            if held is None or spec.expires > held.expires:
                table[key] = spec
    checks = tuple((_key_getter(attrs), table) for attrs, table in groups.items())

    def applying(event: AccessEvent) -> ExceptionSpec | None:
        for key_of, table in checks:
            spec = table.get(key_of(event))
            if spec is not None and event.timestamp.astimezone(zone).date() <= spec.expires:
                return spec
        return None

    return applying


def _key_getter(attrs: tuple[str, ...]) -> Callable[[AccessEvent], tuple[Any, ...]]:
    if len(attrs) == 1:
        get = operator.attrgetter(attrs[0])
        return lambda e: (get(e),)
    return operator.attrgetter(*attrs)  # returns the tuple itself


def expired(spec: ExceptionSpec, today: dt.date) -> bool:
    return spec.expires < today
