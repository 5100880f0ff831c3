"""A short run of benchmarks/fuzz_decoders.py for every decoder, and Hypothesis over the
same checks: no input escapes a decoder as an exception, none is lost, and every bad
one is quarantined with a reason (never the "internal error" of the safety net).

The long run (100,000 inputs per decoder, inputs/s printed) is the benchmark script.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]


def _load_harness():
    spec = importlib.util.spec_from_file_location("fuzz_decoders", REPO / "benchmarks" / "fuzz_decoders.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


fuzz = _load_harness()


@pytest.fixture(scope="module")
def decoders(tmp_path_factory) -> dict:
    return {d.name: d for d in fuzz.decoders(tmp_path_factory.mktemp("fuzz"))}


def test_every_decoder_is_fuzzed(decoders):
    assert set(decoders) == {"jsonl:neo-crm", "jsonl:cloudtrail", "csv", "csv:framer", "kv", "regex", "pgaudit",
                             "cloudtrail:documents", "gzip", "ecs"}


@pytest.mark.parametrize("name", ["jsonl:neo-crm", "jsonl:cloudtrail", "csv", "csv:framer", "kv", "regex",
                                  "pgaudit", "cloudtrail:documents", "gzip", "ecs"])
def test_a_short_fuzz_run_finds_nothing(decoders, name):
    result = fuzz.run(decoders[name], 1500, seed=20261102)
    assert result.failures == [], "\n".join(f"{data[:200]!r}\n{problem}" for data, problem in result.failures)


def test_the_harness_catches_what_it_is_for(decoders):
    """A decoder that lets an exception out, or loses a record, is reported."""
    broken = fuzz.Decoder("broken", lambda rnd: b"x", lambda records: (_ for _ in ()).throw(RecursionError("deep")))
    result = fuzz.run(broken, 10, seed=1)
    assert result.failures and "RecursionError" in result.failures[0][1]


def test_deeply_nested_json_is_quarantined_not_an_internal_error(decoders):
    # main: msgspec's RecursionError escaped the typed path (caught only by the safety
    # net, as "internal error") and escaped the ECS decoder altogether
    deep = b'{"ts": "2026-11-02T09:00:00+08:00", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for name in ("jsonl:neo-crm", "jsonl:cloudtrail", "ecs"):
        decoders[name].check([deep])


def test_an_ecs_document_with_an_unknown_action_is_quarantined(decoders):
    # main: the cluster source stored it with the action "login1e999"
    doc = {"@timestamp": "2026-11-02T01:00:00+00:00", "event": {"action": "login1e999", "id": "ab:1"}}
    from auditd.elastic.ecs_format import EcsDocumentDecoder
    from auditd.sources.base import Batch, Checkpoint

    batch = Batch("fleet", "es", "f" * 40, [json.dumps(doc).encode()], [0], Checkpoint("fleet", "f" * 40, "es", 1))
    events, quarantined, _ = EcsDocumentDecoder("fleet").process(batch)
    assert events == [] and quarantined[0].reason.startswith("event.action: expected one of read, search")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), key=st.sampled_from(["ts", "op", "emp", "res", "count", "subjects", "masked"]),
       value=json_values)
def test_any_json_value_in_any_neo_crm_field(decoders, seed, key, value):
    record = json.loads(fuzz._neo_crm_seed(random.Random(seed)))
    record[key] = value
    decoders["jsonl:neo-crm"].check([json.dumps(record).encode()])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), key=st.sampled_from(["eventTime", "eventName", "userIdentity", "errorCode",
                                                        "sourceIPAddress", "requestParameters", "userAgent"]),
       value=json_values)
def test_any_json_value_in_any_cloudtrail_field(decoders, seed, key, value):
    record = fuzz._cloudtrail_record(random.Random(seed))
    record[key] = value
    decoders["jsonl:cloudtrail"].check([json.dumps(record).encode()])
    decoders["cloudtrail:documents"].check([json.dumps({"Records": [record, value]}).encode()])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400))
def test_any_bytes_through_every_record_decoder(decoders, data):
    for name in ("jsonl:neo-crm", "jsonl:cloudtrail", "csv", "csv:framer", "kv", "regex", "pgaudit", "ecs"):
        decoders[name].check([data])
    decoders["cloudtrail:documents"].check([data])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), cut=st.integers(0, 400))
def test_any_gzip_damage(decoders, data, cut):
    packed = gzip.compress(data, mtime=0)
    decoders["gzip"].check([packed[:cut], packed[:cut] + data, data])
