"""Garbage never stops the stage: every valid record is an event, every bad one is
quarantined with its reason, and nothing raises out of Normaliser.process."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditd.config.located import Problems
from auditd.decode import Format, Normaliser, load_format
from auditd.decode.quarantine import MAX_KEPT_BYTES
from auditd.sources.base import Batch, Checkpoint

FINGERPRINT = "feedc0de" * 5
OPS = ["customer.view", "customer.search", "order.list", "payment.view", "auth.login", "customer.export"]


def shipped(name: str) -> Format:
    problems = Problems()
    fmt = load_format(name, problems)
    assert not problems.items
    return fmt


def batch(records: list[bytes]) -> Batch:
    offsets, offset = [], 0
    for record in records:
        offsets.append(offset)
        offset += len(record) + 1
    return Batch(
        "crm",
        "/var/log/neo-crm/access.log",
        FINGERPRINT,
        records,
        offsets,
        Checkpoint("crm", FINGERPRINT, "/var/log/neo-crm/access.log", offset),
    )


def valid_record(i: int, rnd: random.Random) -> bytes:
    op = rnd.choice(OPS)
    record = {
        "ts": f"2026-11-02T09:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}+08:00",
        "app": "crm",
        "host": "crm-web-01",
        "req": f"r-{i:08d}",
        "emp": {"id": f"E{10000 + i % 97}", "name": "张伟"},
        "ip": f"10.20.{i % 7}.{i % 250}",
        "op": op,
        "result": rnd.choice(["ok", "ok", "denied", "error"]),
    }
    if op != "auth.login":
        record.update(
            res={"type": op.split(".")[0], "id": f"C{i:08d}", "store": "S021"},
            subjects=[f"C{i:08d}"],
            count=rnd.randint(0, 50),
            fields=["name", "phone"],
            masked=rnd.random() < 0.5,
        )
    return json.dumps(record, ensure_ascii=False).encode()


def changed(record: bytes, **changes) -> bytes:
    """The record with some keys replaced (None: removed)."""
    data = {**json.loads(record), **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None}, ensure_ascii=False).encode()


# Each kind of garbage, and the start of the reason it must be quarantined with.
def garbage(i: int, rnd: random.Random) -> tuple[bytes, str]:
    good = valid_record(i, rnd)
    huge = b'{"ts": "2026-11-02T09:00:00+08:00", "op": "customer.view", "junk": "' + b"A" * 1_100_000 + b'"}'
    kinds = [
        (good[: len(good) // 2], "invalid JSON: Input data was truncated"),
        (bytes(rnd.randrange(256) for _ in range(60)) + b"\x00\xff", "invalid UTF-8 at byte"),
        (good.replace("张伟".encode(), b"\xe5\xbc\xff\xfe"), "invalid UTF-8 at byte"),
        (huge, f"record is {len(huge)} bytes, more than max_record_bytes (1048576)"),
        (changed(good, count="abc"), "neo.data.record_count: expected an integer, got 'abc'"),
        (changed(good, masked="sometimes"), "neo.data.masked: expected true or false, got 'sometimes'"),
        (changed(good, ts=None), "missing required field '@timestamp' (path ts): expected a value, found none"),
        (changed(good, op=None), "missing required field 'event.action' (path op): expected a value, found none"),
        (changed(good, op="customer.teleport"), "event.action: 'customer.teleport' is not in the map (path op)"),
        (changed(good, ts="yesterday"), "@timestamp: expected an ISO 8601 time, got 'yesterday' (path ts)"),
        (b"[1, 2, 3]", "expected a JSON object, got an array"),
        (b"null", "expected a JSON object, got null"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes(range(40)), "invalid UTF-8 at byte"),
    ]
    return kinds[i % len(kinds)]


def mixed_batch(n: int = 2000, seed: int = 7):
    """About 10 % garbage, spread through the batch; (records, expected reasons by index)."""
    rnd = random.Random(seed)
    records, bad = [], {}
    for i in range(n):
        if rnd.random() < 0.1:
            record, why = garbage(len(bad), rnd)
            bad[i] = why
        else:
            record = valid_record(i, rnd)
        records.append(record)
    return records, bad


def test_a_batch_with_ten_percent_garbage():
    records, bad = mixed_batch()
    assert 150 < len(bad) < 250 and len(set(bad.values())) == 11  # 13 kinds; three are "invalid UTF-8"
    work = batch(records)
    events, quarantined, skipped = Normaliser(shipped("neo-crm")).process(work, "crm")

    good_offsets = [o for i, o in enumerate(work.offsets) if i not in bad]
    assert [e.log_offset for e in events] == good_offsets
    assert [e.event_id for e in events] == [f"{FINGERPRINT[:16]}:{o}" for o in good_offsets]
    assert skipped == 0
    assert [q.offset for q in quarantined] == [work.offsets[i] for i in sorted(bad)]
    for q, i in zip(quarantined, sorted(bad)):
        assert q.reason.startswith(bad[i]), (q.reason, bad[i])
        assert (q.source, q.path, q.length) == ("crm", "/var/log/neo-crm/access.log", len(records[i]))
        assert q.record == records[i][:MAX_KEPT_BYTES]


def test_the_generic_path_gives_the_same_results_for_the_mixed_batch():
    records, _ = mixed_batch(600, seed=11)
    fmt = shipped("neo-crm")
    generic = dataclasses.replace(fmt, facts=fmt.generic_facts, typed=False)
    typed_result = Normaliser(fmt).process(batch(records), "crm")
    generic_result = Normaliser(generic).process(batch(records), "crm")
    assert typed_result[0] == generic_result[0]
    assert [(q.offset, q.reason) for q in typed_result[1]] == [(q.offset, q.reason) for q in generic_result[1]]


def test_a_valid_but_huge_record_is_quarantined_whole_yet_kept_in_part():
    huge = json.dumps(
        {"ts": "2026-11-02T09:00:00+08:00", "op": "customer.search", "subjects": [f"C{i:08d}" for i in range(100_000)]}
    ).encode()
    events, quarantined, _ = Normaliser(shipped("neo-crm")).process(batch([huge]), "crm")
    assert events == [] and quarantined[0].length == len(huge) and len(quarantined[0].record) == MAX_KEPT_BYTES


CSV_GARBAGE = [
    b"\x00\x01\x02binary,with,nul",
    b'2015-08-12 16:13:44.809 UTC,"vagrant","postgres",1,"[local]",s,1,"x",t,2/3,1,LOG,00000,"AUDIT: SESSION,1',
    b"only,three,columns",
    b"\xff\xfe\xfd not utf-8",
    b'a,"b""c,d',
]


@pytest.mark.parametrize("record", CSV_GARBAGE)
def test_csvlog_garbage_is_quarantined(record):
    events, quarantined, skipped = Normaliser(shipped("pgaudit")).process(batch([record]), "pg")
    assert events == [] and skipped == 0 and len(quarantined) == 1 and quarantined[0].reason


@settings(max_examples=300, deadline=None)
@given(
    records=st.lists(st.one_of(st.binary(max_size=300), st.text(max_size=120).map(str.encode)), max_size=20),
    name=st.sampled_from(["neo-crm", "pgaudit", "cloudtrail"]),
)
def test_random_bytes_never_escape_the_stage(records, name):
    events, quarantined, skipped = Normaliser(shipped(name)).process(batch(records), "fuzz")
    assert len(events) + len(quarantined) + skipped == len(records)
    assert all(q.reason and not q.reason.startswith("internal error") for q in quarantined)
