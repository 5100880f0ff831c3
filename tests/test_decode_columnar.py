"""The chunk-at-once JSON path (decode.columnar) gives what the record-by-record path
gives, or hands the chunk back: never a different event, offset or quarantine."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditd.decode.columnar import CLOSED_RETRY_CHUNKS
from decode_helpers import FINGERPRINT, run, shipped
from test_decode_typed_json import good, nested_perturbation, perturbation

NEO_CRM = shipped("neo-crm")
RECORD_PATH = dataclasses.replace(NEO_CRM, events=None)  # the same format, record by record
PREFIX = FINGERPRINT[:16] + ":"


def line(**changes) -> bytes:
    return json.dumps({**good, **changes}, ensure_ascii=False).encode()


def offsets_of(records: list[bytes]) -> list[int]:
    out, at = [], 0
    for record in records:
        out.append(at)
        at += len(record) + 1
    return out


def chunk(records: list[bytes]):
    """What the chunk path makes of records on their own: events, or None."""
    return NEO_CRM.events(records, offsets_of(records), PREFIX, "/var/log/app.log", NEO_CRM.dataset)


def outcome(fmt, records: list[bytes]):
    events, quarantined, skipped = run(fmt, *records)
    return events, [(q.offset, q.reason) for q in quarantined], skipped


ORDINARY = [
    line(),
    line(op="order.list", res={"type": "order", "store": "S2"}, subjects=["C1", "C2"], count=2),
    line(op="customer.export", dest={"host": "files", "country": "CN"}, masked=False),
    line(op="auth.login", res=None, subjects=[], fields=[]),
    line(emp={"id": "E2"}, result="denied", ts="2026-11-02T01:15:03Z"),
    line(res={"type": "face", "id": "F9"}, ip="::1"),
    line(result=None, ticket=None),
]


def test_a_chunk_of_ordinary_records_is_built_at_once_and_equals_the_record_path():
    built = chunk(ORDINARY)
    assert built is not None and len(built) == len(ORDINARY)
    events, quarantined, skipped = outcome(RECORD_PATH, ORDINARY)
    assert (quarantined, skipped) == ([], 0)
    assert built == events
    assert [e.event_id for e in built] == [f"{PREFIX}{o}" for o in offsets_of(ORDINARY)]
    assert built[3].categories == () and built[4].outcome == "denied" and built[6].outcome == "success"
    assert all(e.labels == {} for e in built) and built[0].labels is not built[1].labels


@pytest.mark.parametrize(
    "odd",
    [
        b"",  # blank: skipped
        b"   ",
        b"5",  # a bare number where a record should be
        b"[1, 2]",
        b'{"ts": "2026-11-02T09:15:03", "op": "customer.view"}',  # no offset: the format's zone
        line(op="customer.teleport"),  # an operation the map does not know: quarantined
        line(result="maybe"),
        line(op=None),  # required
        line(ts=None),
        line(count=-1),
        line(emp="E1"),
        line(subjects="C1"),
        line(res={"type": ["customer"]}),  # a list where the categories map expects text
        line(res={"type": "warehouse"}),  # unlisted type: the categories default
        line(purpose=""),  # empty text is absent: the strict types leave it to the record path
        line(emp={"id": "E1", "name": "张伟"})[:-3] + b"\xff\xfe}",  # invalid UTF-8
        # invalid UTF-8 where the structs read nothing: an unread key's value or name
        line(note="NOTE").replace(b"NOTE", b"\xff\xfe"),
        line(emp={"id": "E1", "name": "张伟", "note": "NOTE"}).replace(b"NOTE", b"\xe5\xbc"),
        line().replace(b'{"ts"', b'{"\xff": 1, "ts"', 1),
        b'{"ts": "2026-11-02T09:15:03+08:00", "op": "customer.view"} {"op": "x"}',  # two values, one line
    ],
)
def test_a_chunk_with_one_unusual_record_goes_record_by_record(odd: bytes):
    records = [ORDINARY[0], odd, ORDINARY[1]]
    assert chunk(records) is None
    assert outcome(NEO_CRM, records) == outcome(RECORD_PATH, records)


def test_non_ascii_records_take_the_chunk_path_with_and_without_unread_keys():
    known_only = [line(emp={"id": "E1", "name": "张伟"}), line(purpose="售后", emp={"id": "E2", "name": "李娜"})]
    with_unread = [line(note="备注", emp={"id": "E1", "name": "张伟", "dept": "门店"}), line(app="crm", x={"y": "é"})]
    for records in (known_only, with_unread, known_only + with_unread, known_only):
        built = chunk(records)
        assert built is not None
        assert built == outcome(RECORD_PATH, records)[0]


def test_records_that_only_parse_when_joined_cannot_shift_events_against_offsets():
    # Each line alone is broken, or two records in one; joined with a fixed separator
    # they would parse into as many objects as there are lines, each at the wrong offset.
    opened = b'{"ts": "2026-11-02T09:15:03+08:00", "op": "customer.view", "purpose": "'
    closed = b'"}'
    two_in_one = ORDINARY[0] + b"," + ORDINARY[1]
    cases = [([opened, closed, two_in_one], []), ([opened, b'",' + ORDINARY[2][1:], ORDINARY[3]], [2])]
    for records, valid in cases:
        assert chunk(records) is None
        events, quarantined, _ = outcome(NEO_CRM, records)
        assert (events, quarantined) == outcome(RECORD_PATH, records)[:2]
        offsets = offsets_of(records)
        assert [e.log_offset for e in events] == [offsets[i] for i in valid]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(
        st.tuples(perturbation, st.sets(st.sampled_from(sorted(good))), st.lists(nested_perturbation, max_size=2)),
        min_size=1,
        max_size=6,
    )
)
def test_the_chunk_and_record_paths_agree_on_any_records(records):
    raws = []
    for change, removed, nested in records:
        record = {k: v for k, v in {**good, **change}.items() if k not in removed}
        for parent, key, new in nested:
            if isinstance(record.get(parent), dict):
                record[parent] = {**record[parent], key: new}
        raws.append(json.dumps(record, ensure_ascii=False).encode())
    assert outcome(NEO_CRM, raws) == outcome(RECORD_PATH, raws)
    built = chunk(raws)
    if built is not None:  # when the chunk path takes it, it is exact
        assert built == outcome(RECORD_PATH, raws)[0]


def test_the_chunk_path_is_taken_only_by_formats_it_can_compute():
    assert NEO_CRM.events is not None
    assert shipped("cloudtrail").events is None  # candidate paths and joins: record by record
    assert shipped("pgaudit").events is None  # csv


def _string_leaves(doc: dict, path: tuple = ()) -> list[tuple]:
    out = []
    for key, value in doc.items():
        if isinstance(value, dict):
            out += _string_leaves(value, path + (key,))
        elif isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], str)):
            out.append(path + (key,))
    return out


def _with_broken_bytes(at: tuple) -> bytes:
    record = json.loads(json.dumps({**good, "emp": {"id": "E1", "name": "张伟"}}))
    node = record
    for key in at[:-1]:
        node = node[key]
    node[at[-1]] = ["BROKEN"] if isinstance(node[at[-1]], list) else "BROKEN"
    return json.dumps(record, ensure_ascii=False).encode().replace(b"BROKEN", b"ok\xff\xfe")


@pytest.mark.parametrize("at", _string_leaves({**good, "emp": {"id": "E1", "name": "张伟"}}))
def test_the_closed_decode_lets_no_broken_byte_through(at):
    fmt = shipped("neo-crm")  # its own chunk decoder: nothing before has made it skip the closed decode
    decoder = fmt.events.__self__
    assert decoder._skip_closed == 0
    records = [ORDINARY[0], _with_broken_bytes(at), line(emp={"id": "E2", "name": "李娜"})]
    assert fmt.events(records, offsets_of(records), PREFIX, "/var/log/app.log", fmt.dataset) is None
    events, quarantined, _ = outcome(fmt, records)
    assert [offset for offset, _ in quarantined] == [offsets_of(records)[1]] and len(events) == 2
    assert decoder._skip_closed == 0  # a bad record is not a log with unread keys: no rest


def test_the_closed_decode_rests_after_a_chunk_with_unread_keys_and_comes_back():
    fmt = shipped("neo-crm")
    decoder = fmt.events.__self__
    known = [line(emp={"id": "E1", "name": "张伟"}), line(purpose="售后")]
    unread = [line(note="备注"), line(emp={"id": "E2", "name": "李娜", "dept": "门店"})]

    def build(records):
        return fmt.events(records, offsets_of(records), PREFIX, "/var/log/app.log", fmt.dataset)

    assert build(known) is not None and decoder._skip_closed == 0  # the closed decode took it
    assert build(unread) is not None  # the UTF-8 pass and the open structs took it
    assert decoder._skip_closed == CLOSED_RETRY_CHUNKS
    for left in range(CLOSED_RETRY_CHUNKS - 1, -1, -1):
        assert build(known) is not None and decoder._skip_closed == left
    assert build(known) is not None and decoder._skip_closed == 0  # tried again, and it held
