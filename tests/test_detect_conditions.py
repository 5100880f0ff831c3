"""The condition language: every operator, precedence, list fields, folding, and a
property test that compiled predicates agree with a naive reference interpreter."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditd.config.located import Doc, Problems
from auditd.detect.compiler import compile_predicate, make_ip_parser
from auditd.detect.condition import (
    And, Compare, ConditionError, Const, MacroRef, Not, Or, Origin, parse_appended, parse_condition, tokenize,
)
from auditd.detect.resolve import ListDef, MacroDef, Resolver, FieldTest, describe, required_values
from auditd.event import FIELDS, AccessEvent

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def ev(**kw: Any) -> AccessEvent:
    kw.setdefault("timestamp", T0)
    kw.setdefault("action", "read")
    return AccessEvent(**kw)


def resolve(text: str, *, lists: dict[str, list[str]] | None = None, macros: dict[str, str] | None = None,
            categories: frozenset[str] | None = None) -> tuple[Any, Problems]:
    problems = Problems()
    doc = Doc("inline.yaml", None)
    list_defs = {n: ListDef(n, tuple(items)) for n, items in (lists or {}).items()}
    macro_defs = {}
    for name, body in (macros or {}).items():
        origin = Origin(doc, ("macro", name), body)
        macro_defs[name] = MacroDef(name, parse_condition(body, origin), origin)
    resolver = Resolver(list_defs, macro_defs, problems, categories=categories, zone=UTC)
    node = resolver.resolve(parse_condition(text, Origin(doc, ("condition",), text)))
    return node, problems


def pred(text: str, **kw: Any):
    node, problems = resolve(text, **kw)
    assert not problems, [str(p) for p in problems.items]
    return compile_predicate(node, make_ip_parser())


def holds(text: str, event: AccessEvent, **kw: Any) -> bool:
    return pred(text, **kw)(event)


# --- operators ------------------------------------------------------------------------

OPERATOR_CASES = [
    ("event.action = export", dict(action="export"), True),
    ("event.action = export", dict(action="read"), False),
    ("event.action != export", dict(action="read"), True),
    ("user.id = 10086", dict(user_id="10086"), True),  # bare numbers stay text for text fields
    ("neo.resource.store = 021", dict(resource_store="021"), True),
    ("user.id = 'E 1'", dict(user_id="E 1"), True),
    ('user.id = "it\'s"', dict(user_id="it's"), True),
    ("neo.data.record_count < 10", dict(record_count=9), True),
    ("neo.data.record_count < 10", dict(record_count=10), False),
    ("neo.data.record_count <= 10", dict(record_count=10), True),
    ("neo.data.record_count > 10", dict(record_count=10), False),
    ("neo.data.record_count >= 10", dict(record_count=10), True),
    ("neo.data.record_count = 10", dict(record_count=10), True),
    ("neo.actor.departed_working_days > 3", dict(actor_departed_working_days=None), False),
    ("@timestamp >= '2026-11-02T10:00:00+08:00'", dict(timestamp=T0), True),
    ("@timestamp > 2026-11-02T10:00:00+08:00", dict(timestamp=T0), False),
    ("event.action in (export, download)", dict(action="download"), True),
    ("event.action in (export, download)", dict(action="read"), False),
    ("neo.data.record_count in (1, 2)", dict(record_count=2), True),
    ("host.name contains web", dict(host_name="crm-web-01"), True),
    ("host.name contains WEB", dict(host_name="crm-web-01"), False),
    ("host.name icontains WEB", dict(host_name="CRM-Web-01"), True),
    ("host.name startswith crm-", dict(host_name="crm-web-01"), True),
    ("host.name endswith -01", dict(host_name="crm-web-01"), True),
    ("host.name endswith -01", dict(host_name=None), False),
    (r"neo.ticket regex '^T-\d{4}-\d+$'", dict(ticket="T-2026-000123"), True),
    (r"neo.ticket regex '^T-\d{4}-\d+$'", dict(ticket="see T-2026-1"), False),
    ("neo.ticket regex '2026'", dict(ticket="T-2026-1"), True),  # search, not full match
    ("source.ip cidr '10.0.0.0/8'", dict(source_ip="10.20.3.15"), True),
    ("source.ip cidr 10.0.0.0/8", dict(source_ip="11.0.0.1"), False),
    ("source.ip cidr (192.168.0.0/16, 2001:db8::/32)", dict(source_ip="2001:db8::5"), True),
    ("source.ip cidr 10.0.0.0/8", dict(source_ip="not-an-ip"), False),
    ("source.ip cidr 10.0.0.0/8", dict(source_ip=None), False),
    ("source.ip cidr '10.1.2.3'", dict(source_ip="10.1.2.3"), True),  # one address is a /32
    ("neo.purpose exists", dict(purpose="after-sales"), True),
    ("neo.purpose exists", dict(purpose=""), False),
    ("neo.purpose exists", dict(), False),
    ("neo.actor.departed_working_days exists", dict(actor_departed_working_days=0), True),
    ("neo.data.masked exists", dict(masked=False), True),
    ("neo.data.masked = false", dict(masked=False), True),
    ("neo.data.masked = false", dict(masked=None), False),
    ("neo.data.masked != false", dict(masked=None), True),  # != is not(=): true when missing
    ("labels.team = risk", dict(labels={"team": "risk"}), True),
    ("labels.team = risk", dict(labels={}), False),
    ("labels exists", dict(labels={"a": "b"}), True),
    ("true", dict(), True),
    ("false", dict(), False),
]


@pytest.mark.parametrize("text,fields,expected", OPERATOR_CASES)
def test_operator(text: str, fields: dict[str, Any], expected: bool) -> None:
    assert holds(text, ev(**fields)) is expected


LIST_CASES = [  # a list field matches when any element does
    ("neo.data.categories = location", ("identity", "location"), True),
    ("neo.data.categories = location", ("identity",), False),
    ("neo.data.categories != location", ("identity",), True),
    ("neo.data.categories != location", ("identity", "location"), False),
    ("neo.data.categories != location", (), True),
    ("neo.data.categories in (property, location)", ("identity", "location"), True),
    ("neo.data.categories intersects (property, location)", ("identity",), False),
    ("neo.data.categories subset_of (identity, contact)", ("identity", "contact"), True),
    ("neo.data.categories subset_of (identity, contact)", ("identity", "location"), False),
    ("neo.data.categories subset_of (identity, contact)", (), True),
    ("neo.data.categories startswith loc", ("identity", "location"), True),
    ("neo.data.categories endswith ity", ("identity",), True),
    ("neo.data.categories contains cat", ("location",), True),
    ("neo.data.categories icontains CAT", ("location",), True),
    ("neo.data.categories regex '^prop'", ("identity", "property"), True),
    ("neo.data.categories exists", (), False),
    ("neo.data.categories exists", ("order",), True),
]


@pytest.mark.parametrize("text,categories,expected", LIST_CASES)
def test_list_field_matches_if_any_element_does(text: str, categories: tuple[str, ...], expected: bool) -> None:
    assert holds(text, ev(categories=categories)) is expected


def test_in_list_name_uses_the_list_and_macros_are_inlined() -> None:
    lists = {"egress": ["export", "share"]}
    macros = {"leaves": "event.action in egress", "big": "neo.data.record_count >= 100"}
    p = pred("leaves and big", lists=lists, macros=macros)
    assert p(ev(action="share", record_count=100))
    assert not p(ev(action="share", record_count=99))
    assert not p(ev(action="read", record_count=1000))


# --- precedence -----------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("true or true and false", True),  # and binds tighter than or
    ("(true or true) and false", False),
    ("not false and false", False),  # not binds tighter than and
    ("not (false and false)", True),
    ("not not true", True),
    ("false or not false and true", True),
])
def test_precedence(text: str, expected: bool) -> None:
    assert holds(text, ev()) is expected


def test_not_applies_to_one_comparison() -> None:
    p = pred("not event.action = export and neo.data.record_count > 5")
    assert p(ev(action="read", record_count=6))
    assert not p(ev(action="export", record_count=6))


# --- parsing --------------------------------------------------------------------------


def test_tokens_keep_positions_and_only_quote_escapes() -> None:
    tokens = tokenize(r"a.b != 'x\'y' and c regex '^\d+$'")
    assert [(t.kind, t.text, t.pos) for t in tokens[:3]] == [("word", "a.b", 0), ("op", "!=", 4), ("string", "x'y", 7)]
    assert tokens[-2].text == r"^\d+$"


def test_parse_tree_shape() -> None:
    node = parse_condition("a = 1 or b = 2 and not c exists")
    assert isinstance(node, Or)
    assert isinstance(node.items[1], And) and isinstance(node.items[1].items[1], Not)
    assert parse_condition("m") == MacroRef("m", 0)
    assert parse_condition("x in (a, 'b')").value[1].quoted


@pytest.mark.parametrize("text,pos,message", [
    ("event.action = 'export", 15, "unterminated string"),
    ("event.action == export", 13, "equality is written '='"),
    ("event.action ! export", 13, "'!' must be part of '!='"),
    ("event.action =", 14, "expected a value after '='"),
    ("event.action = export extra", 22, "expected 'and', 'or' or the end"),
    ("(event.action = export", 22, "expected ')'"),
    ("and x = 1", 0, "expected a field, a macro or '('"),
    ("x in 'a'", 5, "expected '(' or a list name"),
    ("x in (a,)", 8, "expected a value after 'in'"),
])
def test_syntax_errors_say_where(text: str, pos: int, message: str) -> None:
    with pytest.raises(ConditionError) as info:
        parse_condition(text)
    assert message in info.value.message
    assert info.value.pos == pos


def test_appended_condition_must_start_with_and_or() -> None:
    joiner, node = parse_appended("  or event.action = share")
    assert joiner == "or" and isinstance(node, Compare)
    with pytest.raises(ConditionError, match="must start with 'and' or 'or'"):
        parse_appended("event.action = share")


# --- resolution and folding ------------------------------------------------------------


@pytest.mark.parametrize("text,message", [
    ("user.idd = E1", "unknown field 'user.idd' (did you mean user.id"),
    ("event.action = exprot", "'event.action' is never 'exprot' (did you mean export?)"),
    ("neo.data.record_count > many", "'neo.data.record_count' is a number"),
    ("neo.data.masked = maybe", "is true or false"),
    ("host.name > a", "operator '>' does not apply to str field 'host.name'"),
    ("user.id cidr 10.0.0.0/8", "operator 'cidr' does not apply"),
    ("source.ip cidr '10.0.0.1/8'", "bad network '10.0.0.1/8'"),
    ("host.name regex '(unclosed'", "bad regex '(unclosed'"),
    ("event.action in egres", "unknown list 'egres' (did you mean egress?)"),
    ("event.action in (egress)", "'egress' is a list: write 'in egress'"),
    ("leaving", "unknown macro 'leaving'"),
    ("@timestamp > yesterday", "is a time"),
])
def test_resolution_errors(text: str, message: str) -> None:
    node, problems = resolve(text, lists={"egress": ["export"]})
    assert any(message in p.message for p in problems.items), [p.message for p in problems.items]


def test_all_errors_in_a_condition_are_reported() -> None:
    _, problems = resolve("user.idd = 1 and host.nam = x")
    assert len(problems.items) == 2


def test_categories_are_checked_when_known() -> None:
    _, problems = resolve("neo.data.categories = biometirc", categories=frozenset({"biometric", "identity"}))
    assert "did you mean biometric" in problems.items[0].message
    _, problems = resolve("neo.data.categories = anything")
    assert not problems


def test_macro_cycle_is_an_error() -> None:
    _, problems = resolve("a", macros={"a": "b", "b": "a"})
    assert any("cycle: a -> b -> a" in p.message for p in problems.items)


def test_folding() -> None:
    node, _ = resolve("event.action in () or (true and event.action = read)")
    assert node == FieldTest("event.action", "action", "str", "=", "read")
    node, _ = resolve("not event.action in empty and event.outcome = success", lists={"empty": []})
    assert isinstance(node, FieldTest) and node.field == "event.outcome"
    node, _ = resolve("(user.id = 1 and (host.name = 2 and service.name = 3))")
    assert isinstance(node, And) and len(node.items) == 3
    node, _ = resolve("event.action = read or event.action = export or event.action in (share)")
    assert node.op == "in" and node.value == frozenset({"read", "export", "share"})
    node, _ = resolve("event.action in empty", lists={"empty": []})
    assert node == Const(False)


def test_describe_round_trips_to_the_same_tree() -> None:
    text = ("event.action in (export, share) and not (user.id = E1 or neo.data.masked = false) "
            "and host.name regex '^crm' and neo.data.record_count != 3")
    node, _ = resolve(text)
    again, _ = resolve(describe(node))
    assert again == node


@pytest.mark.parametrize("text,expected", [
    ("event.action = export and user.id = E1", {"export"}),
    ("event.action in (export, share) and event.action in (share, read)", {"share"}),
    ("event.action = export or event.action = share and user.id = E1", {"export", "share"}),
    ("event.action = export or user.id = E1", None),
    ("not event.action = export", None),
    ("user.id = E1", None),
    ("event.action in ()", set()),
])
def test_required_values(text: str, expected: set[str] | None) -> None:
    node, _ = resolve(text)
    got = required_values(node, "event.action")
    assert (None if got is None else set(got)) == expected


# --- compiled predicates agree with a naive reference interpreter ------------------------

STR_VALUES = {
    "event.action": ["read", "export", "share", "login"],
    "event.outcome": ["success", "denied"],
    "user.id": ["E1", "E2", "E10"],
    "host.name": ["crm-web-01", "CRM-web-02", "db-01"],
    "source.ip": ["10.1.2.3", "192.168.1.1", "203.0.113.9", "bogus"],
    "neo.data.categories": ["identity", "location", "property"],
    "neo.data.fields": ["name", "phone", "card_no"],
    "labels.team": ["risk", "ops"],
}
INT_VALUES = {"neo.data.record_count": [0, 1, 25, 1000], "neo.actor.departed_working_days": [0, 3, 4]}
NETWORKS = ["10.0.0.0/8", "203.0.113.0/24", "2001:db8::/32"]
TEXT_OPS = ["=", "!=", "in", "contains", "icontains", "startswith", "endswith", "regex", "exists"]


@st.composite
def leaf_tests(draw: Any) -> tuple:
    field = draw(st.sampled_from(sorted(STR_VALUES) + sorted(INT_VALUES) + ["neo.data.masked"]))
    if field in INT_VALUES:
        op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "in", "exists"]))
        pool: list[Any] = INT_VALUES[field]
    elif field == "neo.data.masked":
        op, pool = draw(st.sampled_from(["=", "!=", "exists"])), [True, False]
    else:
        ops = TEXT_OPS + (["cidr"] if field == "source.ip" else []) + (
            ["intersects", "subset_of"] if field.startswith("neo.data.") else [])
        op = draw(st.sampled_from(ops))
        pool = NETWORKS if op == "cidr" else STR_VALUES[field]
    if op in ("in", "intersects", "subset_of", "cidr"):
        value: Any = tuple(draw(st.lists(st.sampled_from(pool), max_size=3)))
        if op == "cidr" and not value:
            value = (pool[0],)
    elif op == "exists":
        value = None
    else:
        value = draw(st.sampled_from(pool))
        if op == "regex":
            value = "^" + str(value)[:3]
        elif op in ("contains", "icontains", "startswith", "endswith"):
            value = str(value)[1:4]
    return ("test", field, op, value)


conditions = st.recursive(
    leaf_tests(),
    lambda inner: st.one_of(
        st.tuples(st.just("not"), inner),
        st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3)),
    ),
    max_leaves=8,
)


def render(node: tuple, rnd: st.DataObject) -> str:
    """Condition text with only the parentheses precedence needs (plus some extra)."""
    kind = node[0]
    if kind == "test":
        _, field, op, value = node
        if op == "exists":
            text = f"{field} exists"
        elif isinstance(value, tuple):
            text = f"{field} {op} ({', '.join(_lit(v) for v in value)})"
        else:
            text = f"{field} {op} {_lit(value)}"
    elif kind == "not":
        inner = render(node[1], rnd)
        text = f"not ({inner})" if node[1][0] in ("and", "or") else f"not {inner}"
    else:
        parts = [render(c, rnd) for c in node[1]]
        if kind == "and":
            parts = [f"({p})" if c[0] == "or" else p for p, c in zip(parts, node[1])]
        text = f" {kind} ".join(parts)
    return f"({text})" if rnd.draw(st.booleans()) else text


def _lit(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def reference(node: tuple, e: AccessEvent) -> bool:
    """Deliberately naive: read the field, loop over list elements, compare."""
    kind = node[0]
    if kind == "not":
        return not reference(node[1], e)
    if kind == "and":
        return all(reference(c, e) for c in node[1])
    if kind == "or":
        return any(reference(c, e) for c in node[1])
    _, field, op, value = node
    if field.startswith("labels."):
        current = e.labels.get(field.split(".", 1)[1])
    else:
        current = getattr(e, FIELDS[field].attr)
    if op == "!=":
        return not reference(("test", field, "=", value), e)
    if op == "exists":
        return current is not None and current != "" and current != ()
    elements = list(current) if isinstance(current, tuple) else [current]
    if op == "subset_of":
        return all(x in value for x in elements)
    return any(x is not None and _ref_compare(op, x, value) for x in elements)


def _ref_compare(op: str, x: Any, value: Any) -> bool:
    if op == "cidr":
        try:
            address = ipaddress.ip_address(x)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(n) for n in value)
    return {
        "=": lambda: x == value, "in": lambda: x in value, "intersects": lambda: x in value,
        "<": lambda: x < value, "<=": lambda: x <= value, ">": lambda: x > value, ">=": lambda: x >= value,
        "contains": lambda: value in x, "icontains": lambda: value.casefold() in x.casefold(),
        "startswith": lambda: x.startswith(value), "endswith": lambda: x.endswith(value),
        "regex": lambda: re.search(value, x) is not None,
    }[op]()


def _maybe(pool: list[Any]) -> Any:
    return st.one_of(st.none(), st.sampled_from(pool))


events = st.builds(
    ev,
    action=st.sampled_from(STR_VALUES["event.action"]),
    outcome=st.sampled_from(STR_VALUES["event.outcome"]),
    user_id=_maybe(STR_VALUES["user.id"]),
    host_name=_maybe(STR_VALUES["host.name"]),
    source_ip=_maybe(STR_VALUES["source.ip"] + ["2001:db8::1"]),
    categories=st.lists(st.sampled_from(STR_VALUES["neo.data.categories"]), max_size=3).map(tuple),
    fields=st.lists(st.sampled_from(STR_VALUES["neo.data.fields"]), max_size=3).map(tuple),
    labels=st.dictionaries(st.just("team"), st.sampled_from(STR_VALUES["labels.team"]), max_size=1),
    record_count=st.sampled_from(INT_VALUES["neo.data.record_count"] + [24, 26]),
    actor_departed_working_days=_maybe(INT_VALUES["neo.actor.departed_working_days"]),
    masked=st.one_of(st.none(), st.booleans()),
)


@settings(max_examples=400, deadline=None)
@given(condition=conditions, sample=st.lists(events, min_size=1, max_size=8), rnd=st.data())
def test_compiled_predicates_agree_with_reference(condition: tuple, sample: list[AccessEvent],
                                                  rnd: st.DataObject) -> None:
    text = render(condition, rnd)
    predicate = pred(text)
    for e in sample:
        assert predicate(e) is reference(condition, e), text
