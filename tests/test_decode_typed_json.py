"""The typed JSON path (msgspec structs derived from the mapping) gives exactly what the
generic path, which defines the semantics, gives: the same events, the same quarantines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditd.config.located import Problems
from auditd.decode import load_format
from auditd.errors import DecodeError
from auditd.event import AccessEvent
from decode_helpers import cloudtrail, jl, shipped

T0 = "2026-11-02T09:00:00+08:00"


# --- the typed JSON path gives what the generic path gives ------------------------------


def test_a_mapping_reading_a_key_as_value_and_object_uses_the_generic_path(tmp_path: Path):
    (tmp_path / "f.yaml").write_text("""kind: jsonl
fields:
  "@timestamp": {path: ts}
  event.action: {path: op}
  labels: {path: res}
  neo.resource.id: {path: res.id}
""")
    problems = Problems()
    fmt = load_format(tmp_path / "f.yaml", problems)
    assert not problems.items and not fmt.typed
    facts = fmt.facts(jl(ts=T0, op="read", res={"id": "X"}))
    assert (facts["labels"], facts["resource_id"]) == ({"id": "X"}, "X")


def test_the_shipped_json_formats_take_the_typed_path():
    assert shipped("neo-crm").typed and shipped("cloudtrail").typed


text = st.one_of(
    st.sampled_from(
        [
            "",
            "C1",
            "E10023",
            "张伟",
            "ok",
            "denied",
            "customer.view",
            "auth.login",
            "payment",
            "face",
            "order.list",
            "x" * 40,
        ]
    ),
    st.text(max_size=8),
)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**20), st.floats(allow_nan=False), text)
value = st.recursive(
    scalar, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)), max_leaves=6
)
times = st.one_of(
    st.sampled_from(
        [
            "2026-11-02T09:15:03.123+08:00",
            "2026-11-02T09:15:03",
            "2026-11-02 09:15:03",
            "2026-11-02T09:15:03Z",
            "2026-11-02T09:15:03.1234567+08:00",
            "bad",
            "",
        ]
    ),
    value,
)
good = {
    "ts": "2026-11-02T09:15:03.123+08:00",
    "app": "crm",
    "host": "h",
    "req": "r-1",
    "emp": {"id": "E1", "name": "n"},
    "ip": "10.0.0.1",
    "op": "customer.view",
    "res": {"type": "customer", "id": "C1", "store": "S1"},
    "subjects": ["C1"],
    "count": 1,
    "fields": ["name"],
    "masked": True,
    "ticket": "T",
    "purpose": "p",
    "dest": {"partner": "P", "host": "h", "ip": "1.1.1.1", "country": "CN"},
    "result": "ok",
}
perturbation = st.dictionaries(st.sampled_from(sorted(good)), st.one_of(value, times), max_size=4)
nested_perturbation = st.tuples(
    st.sampled_from(["emp", "res", "dest"]), st.sampled_from(["id", "type", "name", "host", "x"]), value
)


def outcome(facts_of, record: bytes):
    try:
        facts = facts_of(record)
    except DecodeError:
        return "quarantined"
    return None if facts is None else AccessEvent(**facts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    change=perturbation,
    removed=st.sets(st.sampled_from(sorted(good))),
    nested=st.lists(nested_perturbation, max_size=2),
)
def test_typed_and_generic_paths_agree_on_neo_crm_records(change, removed, nested):
    fmt = shipped("neo-crm")
    assert fmt.typed
    record = {k: v for k, v in {**good, **change}.items() if k not in removed}
    for parent, key, new in nested:
        if isinstance(record.get(parent), dict):
            record[parent] = {**record[parent], key: new}
    raw = json.dumps(record, ensure_ascii=False).encode()
    assert outcome(fmt.facts, raw) == outcome(fmt.generic_facts, raw)


@settings(max_examples=200, deadline=None)
@given(change=perturbation, removed=st.sets(st.sampled_from(["eventTime", "errorCode", "userIdentity"])))
def test_typed_and_generic_paths_agree_on_cloudtrail_records(change, removed):
    fmt = shipped("cloudtrail")
    base = json.loads(cloudtrail(eventName="GetObject", requestParameters={"bucketName": "b", "key": "k"}))
    record = {k: v for k, v in {**base, **change}.items() if k not in removed}
    raw = json.dumps(record).encode()
    assert outcome(fmt.facts, raw) == outcome(fmt.generic_facts, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"ts": "2026-11-02T09:00:00+08:00", "op": "customer.view", "count": "abc", "count": 5}',
        b'{"ts": "2026-11-02T09:00:00+08:00", "op": "customer.view", "count": 5, "count": "abc"}',
        b'{"ts": "2026-11-02T09:00:00+08:00", "op": "customer.view", "emp": {"id": "E1"}, "emp": "E2"}',
    ],
)
def test_typed_and_generic_paths_agree_on_duplicate_keys(raw):
    fmt = shipped("neo-crm")
    assert outcome(fmt.facts, raw) == outcome(fmt.generic_facts, raw)
