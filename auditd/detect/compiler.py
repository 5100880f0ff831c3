"""Compile a resolved condition into one Python closure per node.

Every constant (sets, patterns, networks, casefolded needles) was prepared at load
time, so a predicate's work per event is an attribute read and one comparison. No
text is ever evaluated: the closures are built from fixed factories below.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from auditd.detect.condition import And, Const, Not, Or
from auditd.detect.resolve import FieldTest
from auditd.event import AccessEvent

Predicate = Callable[[AccessEvent], bool]
IpParser = Callable[[str], "tuple[int, int] | None"]

_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_PRESENT_IF_NOT_NONE = frozenset({"int", "bool", "time"})  # 0 and False are values


def make_ip_parser(cache_size: int = 65536) -> IpParser:
    """(version, integer) of an address text, or None; cached because the same few
    workstation addresses recur in every batch, and parsing costs ~1 µs."""

    @lru_cache(maxsize=cache_size)
    def parse(text: str) -> tuple[int, int] | None:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return None
        return ip.version, int(ip)

    return parse


def compile_predicate(node: Any, parse_ip: IpParser) -> Predicate:
    if isinstance(node, FieldTest):
        return _test(node, parse_ip)
    if isinstance(node, Not):
        return _negation(node.item, parse_ip)
    if isinstance(node, (And, Or)):
        # tests have no side effects, so the cheap ones may go first and short-circuit
        items = sorted(node.items, key=cost)
        return _chain([compile_predicate(i, parse_ip) for i in items], all_of=isinstance(node, And))
    if isinstance(node, Const):
        return _const(node.value)
    raise TypeError(f"not a resolved condition node: {node!r}")  # pragma: no cover


_OP_COST = {"=": 1, "in": 1, "exists": 1, "<": 2, "<=": 2, ">": 2, ">=": 2, "intersects": 2, "subset_of": 2,
            "startswith": 3, "endswith": 3, "contains": 3, "icontains": 4, "cidr": 5, "regex": 6}


def cost(node: Any) -> int:
    """A rough relative cost of evaluating `node`, to order 'and'/'or' operands."""
    if isinstance(node, FieldTest):
        return _OP_COST[node.op] * (3 if node.kind == "list" and node.op not in ("=", "in") else 1)
    if isinstance(node, Not):
        return cost(node.item) + 1
    if isinstance(node, (And, Or)):
        return sum(cost(i) for i in node.items) + 1
    return 0


def _const(value: bool) -> Predicate:
    return (lambda e: True) if value else (lambda e: False)


def _negation(inner: Any, parse_ip: IpParser) -> Predicate:
    # 'f != v' and 'not f in (...)' are common enough to deserve one closure, not two
    if isinstance(inner, FieldTest) and inner.kind != "list":
        get, v = _getter(inner), inner.value
        if inner.op == "=":
            return lambda e: get(e) != v
        if inner.op == "in":
            return lambda e: get(e) not in v
    p = compile_predicate(inner, parse_ip)
    return lambda e: not p(e)


def _chain(preds: list[Predicate], *, all_of: bool) -> Predicate:
    """Short-circuit 'and'/'or' as nested two- and three-way closures (no generator)."""
    while len(preds) > 1:
        grouped: list[Predicate] = []
        for i in range(0, len(preds), 3):
            grouped.append(_join(preds[i:i + 3], all_of))
        preds = grouped
    return preds[0]


def _join(group: list[Predicate], all_of: bool) -> Predicate:
    if len(group) == 1:
        return group[0]
    if len(group) == 2:
        a, b = group
        return (lambda e: a(e) and b(e)) if all_of else (lambda e: a(e) or b(e))
    a, b, c = group
    return (lambda e: a(e) and b(e) and c(e)) if all_of else (lambda e: a(e) or b(e) or c(e))


def _getter(test: FieldTest) -> Callable[[AccessEvent], Any]:
    if test.map_key is not None:
        attr, key = test.attr, test.map_key
        return lambda e: getattr(e, attr).get(key)
    return operator.attrgetter(test.attr)


def _test(test: FieldTest, parse_ip: IpParser) -> Predicate:
    get = _getter(test)
    if test.op == "exists":
        if test.kind in _PRESENT_IF_NOT_NONE:
            return lambda e: get(e) is not None
        return lambda e: bool(get(e))
    if test.op == "cidr":
        return _cidr(get, test.value, parse_ip)
    if test.kind == "list":
        return _any_element(test.op, get, test.value)
    return _scalar(test.op, get, test.value)


def _scalar(op: str, get: Callable[[AccessEvent], Any], v: Any) -> Predicate:
    if op == "=":
        return lambda e: get(e) == v
    if op == "in":
        return lambda e: get(e) in v
    if op in _ORDER:
        cmp = _ORDER[op]

        def ordered(e: AccessEvent) -> bool:
            x = get(e)
            return x is not None and cmp(x, v)

        return ordered
    match = _text_matcher(op, v)

    def text(e: AccessEvent) -> bool:
        x = get(e)
        return x is not None and match(x)

    return text


def _any_element(op: str, get: Callable[[AccessEvent], Any], v: Any) -> Predicate:
    if op == "=":
        return lambda e: v in get(e)
    if op in ("in", "intersects"):
        return lambda e: not v.isdisjoint(get(e))
    if op == "subset_of":
        return lambda e: v.issuperset(get(e))
    if op == "contains":
        return _contains_any(get, v)
    match = _text_matcher(op, v)

    def any_element(e: AccessEvent) -> bool:
        for x in get(e):
            if match(x):
                return True
        return False

    return any_element


def _contains_any(get: Callable[[AccessEvent], Any], v: str) -> Predicate:
    # the commonest list test ('neo.data.fields contains phone') gets a loop without a
    # call per element
    def contains_any(e: AccessEvent) -> bool:
        for x in get(e):
            if v in x:
                return True
        return False

    return contains_any


def _text_matcher(op: str, v: Any) -> Callable[[str], bool]:
    if op == "contains":
        return lambda x: v in x
    if op == "icontains":
        return lambda x: v in x.casefold()
    if op == "startswith":
        return lambda x: x.startswith(v)
    if op == "endswith":
        return lambda x: x.endswith(v)
    if op == "regex":
        return v.search  # RE2, the answer cached per distinct short value
    raise ValueError(f"no text operator {op!r}")  # pragma: no cover - resolve checks


def _cidr(get: Callable[[AccessEvent], Any], networks: tuple[Any, ...], parse_ip: IpParser) -> Predicate:
    # networks as (version, network integer, mask integer): a mask and a compare per
    # network instead of ipaddress objects on the hot path
    nets = tuple((n.version, int(n.network_address), int(n.netmask)) for n in networks)

    def in_networks(e: AccessEvent) -> bool:
        text = get(e)
        if not text:
            return False
        parsed = parse_ip(text)
        if parsed is None:
            return False  # not an address: in no network
        version, value = parsed
        for net_version, net, mask in nets:
            if version == net_version and value & mask == net:
                return True
        return False

    return in_networks
