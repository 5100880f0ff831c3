"""A rule's condition as an Elasticsearch query that selects a superset of its events.

A cluster rule is judged by the same compiled predicate as a local one, on the
events read back from the data stream (``cluster_rules.py``): this query only keeps
the cluster from sending events the predicate would refuse anyway. So it may match
more than the condition, never less. Tests that Elasticsearch answers exactly as the
predicate does (equality, sets, numeric ranges on keyword, long and boolean fields)
are translated; anything else (substrings, regexes, CIDR, times, `exists` on text,
whose empty string differs) becomes "match everything" at that place, and a `not`
over such a place is dropped too, since the negation of a superset is not one.
"""

from __future__ import annotations

from typing import Any

from auditd.detect.condition import And, Const, Not, Or
from auditd.detect.resolve import FieldTest

MATCH_ALL = None  # at a place: no restriction
_EXACT_KINDS = frozenset({"str", "list", "int", "bool"})
_RANGE = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}
_KEYWORD_LIMIT = 1024  # the mapping's ignore_above: a longer value is not indexed


def prefilter(condition: Any) -> dict[str, Any] | None:
    """The query (None: every event) whose matches include every event the condition holds for."""
    query, _ = _translate(condition)
    return query


def _translate(node: Any) -> tuple[dict[str, Any] | None, bool]:
    """(query or None for everything, whether the query is exactly the condition)."""
    if isinstance(node, Const):
        return (MATCH_ALL, True) if node.value else ({"match_none": {}}, True)
    if isinstance(node, FieldTest):
        query = _test(node)
        return query, query is not None
    if isinstance(node, Not):
        inner, exact = _translate(node.item)
        if not exact:
            return MATCH_ALL, False
        if inner is None:  # not(everything)
            return {"match_none": {}}, True
        return {"bool": {"must_not": [inner]}}, True
    if isinstance(node, And):
        parts = [_translate(item) for item in node.items]
        queries = [q for q, _ in parts if q is not None]
        exact = all(e for _, e in parts)
        if not queries:
            return MATCH_ALL, exact
        return ({"bool": {"filter": queries}} if len(queries) > 1 else queries[0]), exact
    if isinstance(node, Or):
        parts = [_translate(item) for item in node.items]
        if any(q is None for q, _ in parts):  # one branch takes everything: so does the whole
            return MATCH_ALL, all(e for _, e in parts) and all(q is None for q, _ in parts)
        return {"bool": {"should": [q for q, _ in parts], "minimum_should_match": 1}}, all(e for _, e in parts)
    return MATCH_ALL, False


def _test(test: FieldTest) -> dict[str, Any] | None:
    if test.kind not in _EXACT_KINDS:
        return None
    name = test.field
    if test.op == "=":
        return _term(name, test.value)
    if test.op in ("in", "intersects") and isinstance(test.value, frozenset):
        values = sorted(test.value, key=str)
        if not values or any(not _indexable(v) for v in values):
            return None
        return {"terms": {name: values}}
    if test.op in _RANGE and test.kind == "int" and isinstance(test.value, int):
        return {"range": {name: {_RANGE[test.op]: test.value}}}
    return None


def _term(name: str, value: Any) -> dict[str, Any] | None:
    return {"term": {name: value}} if _indexable(value) else None


def _indexable(value: Any) -> bool:
    if isinstance(value, bool | int):
        return True
    return isinstance(value, str) and 0 < len(value) <= _KEYWORD_LIMIT
