"""From parsed conditions to typed ones: fields, lists and macros resolved, constants
converted to the field's type, then folded.

The resolved tree is what the compiler turns into closures, what the index reads the
required ``event.action`` values from, and what the tests' reference interpreter runs.

Semantics that operators rely on (summarised at the top of rules/pi-access.yaml):
- A list-valued field (``user.roles``, ``neo.data.categories``, ``neo.data.fields``,
  ``neo.data.subject_ids``) matches a test if *any* element does: ``neo.data.categories =
  location`` holds for ``[identity, location]``. ``intersects`` is the same as ``in``;
  ``subset_of`` holds when *every* element is in the set (so also for an empty list).
- ``a != v`` is exactly ``not (a = v)``: it holds when the field is missing, and for a
  list when no element equals v. Write ``a exists and a != v`` where that matters.
- A missing field (None) satisfies no test other than through ``not``; ``exists`` is
  false for None, '' and empty lists.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from auditd.config.located import Problems
from auditd.config.regex import LinearRegex, RegexError, compile_regex
from auditd.detect.condition import (
    And, Compare, ConditionError, Const, ListName, MacroRef, Not, Or, Origin, Value,
)
from auditd.event import ACTIONS, FIELDS, OUTCOMES, FieldSpec, parse_time

# Operators each field kind accepts ('!=' wherever '=' is); anything else is an error
# at load time rather than a test that silently never matches.
_TEXT_OPS = frozenset({"=", "in", "contains", "icontains", "startswith", "endswith", "regex", "exists"})
ALLOWED_OPERATORS: dict[str, frozenset[str]] = {
    "str": _TEXT_OPS,
    "ip": _TEXT_OPS | {"cidr"},
    "int": frozenset({"=", "in", "<", "<=", ">", ">=", "exists"}),
    "time": frozenset({"=", "<", "<=", ">", ">=", "exists"}),
    "bool": frozenset({"=", "exists"}),
    "list": _TEXT_OPS | {"intersects", "subset_of"},
    "map": frozenset({"exists"}),
}
_EXACT_OPS = frozenset({"=", "in", "intersects", "subset_of"})


@dataclass(frozen=True, slots=True)
class FieldTest:
    """One typed test; `value` is already the constant the hot path compares with:
    a scalar, a frozenset (in/intersects/subset_of), a LinearRegex (regex), a tuple
    of networks (cidr) or None (exists)."""

    field: str  # ECS name as written, e.g. 'neo.data.record_count' or 'labels.team'
    attr: str
    kind: str
    op: str
    value: Any
    map_key: str | None = None


@dataclass(frozen=True, slots=True)
class ListDef:
    name: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MacroDef:
    name: str
    node: Any  # parsed tree, or None when its text did not parse (already reported)
    origin: Origin


class _Broken:
    """A subtree with an error that has been reported; the rule using it is dropped."""


BROKEN = _Broken()


def field_spec(name: str) -> tuple[FieldSpec, str | None] | None:
    """The spec of an ECS field name, and the key for 'labels.<key>'."""
    spec = FIELDS.get(name)
    if spec is not None:
        return spec, None
    head, _, key = name.partition(".")
    base = FIELDS.get(head)
    if base is not None and base.kind == "map" and key:
        return FieldSpec(name, base.attr, "str"), key
    return None


def near(name: str, names: Any) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


class Resolver:
    """Resolves parsed trees against one load's lists, macros and categories."""

    def __init__(self, lists: Mapping[str, ListDef], macros: Mapping[str, MacroDef],
                 problems: Problems, *, categories: frozenset[str] | None, zone: tzinfo):
        self.lists = lists
        self.macros = macros
        self.problems = problems
        self.zone = zone
        self.enums: dict[str, tuple[str, ...]] = {"event.action": ACTIONS, "event.outcome": OUTCOMES}
        if categories:
            self.enums["neo.data.categories"] = tuple(sorted(categories))
        self._macro_done: dict[str, Any] = {}
        self._macro_stack: list[str] = []
        self._regexes: dict[str, LinearRegex] = {}  # one compiled pattern per text

    def error(self, origin: Origin | None, pos: int, message: str) -> _Broken:
        where = f" (at character {pos + 1})" if origin is not None else ""
        if origin is None:
            self.problems.add(None, (), message)
        else:
            self.problems.add(origin.doc, origin.path, message + where)
        return BROKEN

    def resolve(self, node: Any) -> Any:
        """The typed, folded tree, or BROKEN when an error was reported."""
        out = self._resolve(node)
        return out if out is BROKEN else fold(out)

    def _resolve(self, node: Any) -> Any:
        if isinstance(node, (And, Or)):
            items = [self._resolve(item) for item in node.items]
            return BROKEN if any(i is BROKEN for i in items) else type(node)(tuple(items))
        if isinstance(node, Not):
            inner = self._resolve(node.item)
            return BROKEN if inner is BROKEN else Not(inner)
        if isinstance(node, Const):
            return node
        if isinstance(node, MacroRef):
            return self._macro(node)
        if isinstance(node, Compare):
            try:
                return self._compare(node)
            except ConditionError as exc:
                return self.error(node.origin, exc.pos, exc.message)
        raise TypeError(f"not a condition node: {node!r}")  # pragma: no cover

    def _macro(self, ref: MacroRef) -> Any:
        if ref.name in self._macro_done:
            return self._macro_done[ref.name]
        macro = self.macros.get(ref.name)
        if macro is None:
            hint = near(ref.name, list(self.macros) + list(FIELDS))
            return self.error(ref.origin, ref.pos, f"unknown macro '{ref.name}'{hint}")
        if ref.name in self._macro_stack:
            cycle = " -> ".join(self._macro_stack[self._macro_stack.index(ref.name):] + [ref.name])
            return self.error(ref.origin, ref.pos, f"macros refer to each other in a cycle: {cycle}")
        self._macro_stack.append(ref.name)
        try:
            out = BROKEN if macro.node is None else self._resolve(macro.node)
        finally:
            self._macro_stack.pop()
        self._macro_done[ref.name] = out  # inlined once, shared by every rule using it
        return out

    def _compare(self, node: Compare) -> Any:
        found = field_spec(node.field)
        if found is None:
            raise ConditionError(f"unknown field '{node.field}'{near(node.field, FIELDS)}", node.pos)
        spec, map_key = found
        op = "=" if node.op == "!=" else node.op
        allowed_ops = ALLOWED_OPERATORS[spec.kind]
        if op not in allowed_ops:
            allowed = ", ".join(sorted(allowed_ops | ({"!="} if "=" in allowed_ops else set())))
            raise ConditionError(f"operator '{node.op}' does not apply to {spec.kind} field "
                                 f"'{node.field}' (it takes: {allowed})", node.pos)
        value = self._operand(node, spec, op)
        test = FieldTest(node.field, spec.attr, spec.kind, op, value, map_key)
        return Not(test) if node.op == "!=" else test

    def _operand(self, node: Compare, spec: FieldSpec, op: str) -> Any:
        if op == "exists":
            return None
        if op == "cidr":
            return self._networks(node)
        if op in ("in", "intersects", "subset_of"):
            typed_values = [(self._typed(spec, v, pos), pos) for v, pos in self._values(node)]
            self._check_enum(node.field, typed_values)
            return frozenset(v for v, _ in typed_values)
        assert isinstance(node.value, Value)
        typed = self._typed(spec, node.value.text, node.value.pos)
        if op in _EXACT_OPS:
            self._check_enum(node.field, [(typed, node.value.pos)])
        if op == "icontains":
            return str(typed).casefold()
        if op == "regex":
            return self._regex(node.value)
        return typed

    def _values(self, node: Compare) -> list[tuple[str, int]]:
        """The literal texts of a set operand, expanding a list reference."""
        if isinstance(node.value, ListName):
            listdef = self.lists.get(node.value.name)
            if listdef is None:
                hint = near(node.value.name, self.lists)
                raise ConditionError(f"unknown list '{node.value.name}'{hint}", node.value.pos)
            return [(item, node.value.pos) for item in listdef.items]
        out = []
        for v in node.value:
            if not v.quoted and v.text in self.lists:
                # Falco expands list names inside parentheses; here that would be a
                # silent literal, so say what to write instead.
                raise ConditionError(f"'{v.text}' is a list: write '{node.op} {v.text}' to use it, "
                                     f"or quote it to mean the text", v.pos)
            out.append((v.text, v.pos))
        return out

    def _typed(self, spec: FieldSpec, text: str, pos: int) -> Any:
        kind = spec.kind
        if kind == "int":
            try:
                return int(text)
            except ValueError:
                raise ConditionError(f"'{spec.name}' is a number, got {text!r}", pos) from None
        if kind == "bool":
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            raise ConditionError(f"'{spec.name}' is true or false, got {text!r}", pos)
        if kind == "time":
            try:
                return parse_time(text, self.zone)
            except ValueError:
                raise ConditionError(f"'{spec.name}' is a time, got {text!r} (use ISO 8601)", pos) from None
        return text

    def _check_enum(self, field_name: str, values: list[tuple[Any, int]]) -> None:
        valid = self.enums.get(field_name)
        if valid is None:
            return
        for value, pos in values:
            if value not in valid:
                raise ConditionError(f"'{field_name}' is never {value!r}{near(str(value), valid)}; "
                                     f"valid: {', '.join(valid)}", pos)

    def _regex(self, value: Value) -> LinearRegex:
        pattern = self._regexes.get(value.text)
        if pattern is None:
            try:
                pattern = compile_regex(value.text)  # RE2: linear time, whatever the pattern
            except RegexError as exc:
                raise ConditionError(f"bad regex {value.text!r}: {exc}", value.pos) from None
            self._regexes[value.text] = pattern
        return pattern

    def _networks(self, node: Compare) -> tuple[Any, ...]:
        operand = node.value
        if isinstance(operand, Value):
            texts = [(operand.text, operand.pos)]
        elif isinstance(operand, ListName) and operand.name not in self.lists and _is_network(operand.name):
            texts = [(operand.name, operand.pos)]  # a bare 10.0.0.0/8 rather than a list name
        else:
            texts = self._values(node)
        nets = []
        for text, pos in texts:
            try:
                nets.append(ipaddress.ip_network(text))
            except ValueError as exc:
                raise ConditionError(f"bad network {text!r}: {exc}", pos) from None
        return tuple(nets)


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


# --- folding ------------------------------------------------------------------------


def fold(node: Any) -> Any:
    """Constant-fold and simplify; the result means the same on every event."""
    if isinstance(node, FieldTest):
        if node.op in ("in", "intersects") and not node.value:
            return Const(False)  # nothing is in an empty set, e.g. an empty shipped list
        return node
    if isinstance(node, Not):
        inner = fold(node.item)
        if isinstance(inner, Const):
            return Const(not inner.value)
        if isinstance(inner, Not):
            return inner.item
        return Not(inner)
    if isinstance(node, (And, Or)):
        return _fold_junction(node)
    return node


def _fold_junction(node: And | Or) -> Any:
    kind = type(node)
    absorbing = isinstance(node, Or)  # True absorbs an 'or', False absorbs an 'and'
    items: list[Any] = []
    for item in (fold(i) for i in node.items):
        if isinstance(item, kind):
            items.extend(item.items)  # (a and b) and c -> a and b and c
        elif isinstance(item, Const):
            if item.value == absorbing:
                return Const(absorbing)
        else:
            items.append(item)
    if kind is Or:
        items = _merge_equalities(items)
    if not items:
        return Const(not absorbing)
    return items[0] if len(items) == 1 else kind(tuple(items))


def _merge_equalities(items: list[Any]) -> list[Any]:
    """f = a or f = b or f in (c) -> f in (a, b, c): one set lookup instead of a chain."""
    groups: dict[tuple[str, str | None], list[FieldTest]] = {}
    for item in items:
        if isinstance(item, FieldTest) and item.kind != "list" and item.op in ("=", "in"):
            groups.setdefault((item.attr, item.map_key), []).append(item)
    out: list[Any] = []
    for item in items:
        if not (isinstance(item, FieldTest) and item.kind != "list" and item.op in ("=", "in")):
            out.append(item)
            continue
        group = groups.get((item.attr, item.map_key))
        if group is None:
            continue  # already merged into the first of its group
        if len(group) == 1:
            out.append(item)
        else:
            values: set[Any] = set()
            for t in group:
                values.update(t.value if t.op == "in" else (t.value,))
            out.append(FieldTest(item.field, item.attr, item.kind, "in", frozenset(values), item.map_key))
        del groups[(item.attr, item.map_key)]
    return out


def required_values(node: Any, field_name: str) -> frozenset[Any] | None:
    """Values `field_name` must take for `node` to hold, or None when unconstrained.

    Sound by construction: an 'and' needs all its constraints (intersection), an 'or'
    needs one of its branches (union, and only when every branch is constrained).
    """
    if isinstance(node, FieldTest):
        if node.field == field_name and node.kind != "list":
            if node.op == "=":
                return frozenset((node.value,))
            if node.op == "in":
                return node.value
        return None
    if isinstance(node, Const):
        return None if node.value else frozenset()
    if isinstance(node, And):
        sets = [s for s in (required_values(i, field_name) for i in node.items) if s is not None]
        return frozenset.intersection(*sets) if sets else None
    if isinstance(node, Or):
        sets = [required_values(i, field_name) for i in node.items]
        return None if any(s is None for s in sets) else frozenset().union(*sets)
    return None


def required_any(node: Any, field_name: str) -> frozenset[Any] | None:
    """Values of which the list field `field_name` must hold at least one for `node` to
    hold, or None when unconstrained.

    Unlike `required_values`, an 'and' cannot intersect its constraints (``[a, b]``
    meets both ``in (a)`` and ``in (b)``); any one of them is necessary, and the
    smallest routes the fewest events.
    """
    if isinstance(node, FieldTest):
        if node.field == field_name and node.kind == "list" and node.map_key is None:
            if node.op == "=":
                return frozenset((node.value,))
            if node.op in ("in", "intersects"):
                return node.value
        return None
    if isinstance(node, Const):
        return None if node.value else frozenset()
    if isinstance(node, And):
        sets = [s for s in (required_any(i, field_name) for i in node.items) if s is not None]
        return min(sets, key=len) if sets else None
    if isinstance(node, Or):
        sets = [required_any(i, field_name) for i in node.items]
        return None if any(s is None for s in sets) else frozenset().union(*sets)
    return None


def routed_condition(node: Any, scalars: Iterable[str], lists: Iterable[str]) -> Any:
    """`node` without the top-level conjuncts that routing already guarantees.

    An index that shows a rule only events whose scalar field's value is in
    `required_values(node, field)` and whose list field meets `required_any(node, field)`
    makes a conjunct testing exactly that redundant: ``event.action = read and
    neo.data.record_count > 100`` routed by action is just the count test.
    """
    items = node.items if isinstance(node, And) else (node,)
    implied: set[int] = set()
    for field_name in scalars:
        required = required_values(node, field_name)
        if required is not None:
            implied.update(id(i) for i in items if _equality_values(i, field_name, False) is not None
                           and required <= _equality_values(i, field_name, False))
    for field_name in lists:
        required = required_any(node, field_name)
        if required is not None:
            implied.update(id(i) for i in items if _equality_values(i, field_name, True) == required)
    kept = [i for i in items if id(i) not in implied]
    if len(kept) == len(items):
        return node
    if not kept:
        return Const(True)
    return kept[0] if len(kept) == 1 else And(tuple(kept))


def _equality_values(node: Any, field_name: str, listed: bool) -> frozenset[Any] | None:
    """The values of an '='/'in' test of `field_name` (of a list field when `listed`)."""
    if not isinstance(node, FieldTest) or node.field != field_name or node.map_key is not None:
        return None
    if (node.kind == "list") != listed:
        return None
    if node.op == "=":
        return frozenset((node.value,))
    if node.op in (("in", "intersects") if listed else ("in",)):
        return node.value
    return None


def describe(node: Any) -> str:
    """A resolved tree as condition text again (macros inlined), for reports."""
    if isinstance(node, FieldTest):
        if node.op == "exists":
            return f"{node.field} exists"
        return f"{node.field} {node.op} {_describe_value(node.value)}"
    if isinstance(node, Not):
        inner = node.item
        if isinstance(inner, FieldTest) and inner.op == "=":
            return f"{inner.field} != {_describe_value(inner.value)}"
        return f"not {_wrapped(inner)}"
    if isinstance(node, (And, Or)):
        word = " and " if isinstance(node, And) else " or "
        return word.join(_wrapped(i) for i in node.items)
    if isinstance(node, Const):
        return "true" if node.value else "false"
    return repr(node)  # pragma: no cover


def _wrapped(node: Any) -> str:
    return f"({describe(node)})" if isinstance(node, (And, Or)) else describe(node)


def _describe_value(value: Any) -> str:
    if isinstance(value, frozenset):
        return "(" + ", ".join(sorted(str(v) for v in value)) + ")"
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ")"
    if isinstance(value, LinearRegex):
        return repr(value.pattern)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) or " " not in str(value) else repr(value)
