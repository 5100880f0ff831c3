"""Framers: complete records only, exact offsets, and the same records however the bytes arrive."""

from __future__ import annotations

import csv
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from auditd.sources.framing import FRAMERS, CsvFramer, JsonDocumentFramer, LineFramer


def frame_in_chunks(framer, stream: bytes, cuts: list[int]) -> tuple[list[bytes], list[int], int]:
    """Feed `stream` cut at `cuts`, keeping the unconsumed rest as a tailer does."""
    records: list[bytes] = []
    offsets: list[int] = []
    pending = b""
    base = 0
    bounds = sorted({c for c in cuts if 0 < c < len(stream)}) + [len(stream)]
    start = 0
    for end in bounds:
        buf = pending + stream[start:end]
        got, starts, consumed = framer.split(buf, base)
        records += got
        offsets += starts
        pending = buf[consumed:]
        base += consumed
        start = end
    return records, offsets, base


# -- LineFramer -----------------------------------------------------------------------------------

def test_line_framer_returns_complete_lines_and_holds_the_partial_last_one():
    records, offsets, consumed = LineFramer().split(b"a\nbb\n\nccc", 100)
    assert records == [b"a", b"bb", b""]
    assert offsets == [100, 102, 105]
    assert consumed == 6  # stops before the unfinished "ccc"


def test_line_framer_without_a_newline_consumes_nothing():
    assert LineFramer().split(b"no newline yet", 0) == ([], [], 0)
    assert LineFramer().split(b"", 0) == ([], [], 0)


def test_line_framer_strips_one_trailing_carriage_return_but_keeps_offsets_exact():
    records, offsets, consumed = LineFramer().split(b"a\r\nb\r\r\nc\rd\n", 0)
    assert records == [b"a", b"b\r", b"c\rd"]
    assert offsets == [0, 3, 7]
    assert consumed == 11


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=40),
       st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")))
def test_line_framer_offsets_point_at_each_record(lines, tail):
    stream = b"".join(line + b"\n" for line in lines) + tail
    records, offsets, consumed = LineFramer().split(stream, 7)
    assert consumed == len(stream) - len(tail)
    for record, offset in zip(records, offsets):
        raw = stream[offset - 7: offset - 7 + len(record)]
        assert raw == record
    assert [r + b"\r" if line.endswith(b"\r") else r for r, line in zip(records, lines)] == lines


@settings(max_examples=300)
@given(st.binary(max_size=400).map(lambda b: b.replace(b"\x00", b"\n")),
       st.lists(st.integers(0, 400), max_size=12))
def test_line_framer_gives_the_same_records_for_any_chunking(stream, cuts):
    whole = LineFramer().split(stream, 0)
    assert frame_in_chunks(LineFramer(), stream, cuts) == whole


# -- CsvFramer ------------------------------------------------------------------------------------

CSVLOG = (
    b'2026-11-02 10:00:00.001 CST,"app","crm",1,"10.0.0.1:5432",1,1,"SELECT",2026-11-02,3/1,0,LOG,00000,'
    b'"statement: SELECT name,\n       phone\n  FROM customer WHERE id = \'C1\'",,,,,,,,,"psql"\n'
    b'2026-11-02 10:00:00.002 CST,"app","crm",1,"10.0.0.1:5432",1,2,"SELECT",2026-11-02,3/1,0,LOG,00000,'
    b'"say ""hi""\nthere",,,,,,,,,"psql"\n'
    b'2026-11-02 10:00:00.003 CST,"app","crm",1,"10.0.0.1:5432",1,3,"idle",2026-11-02,3/1,0,LOG,00000,"unfin'
)


def test_csv_framer_keeps_multi_line_quoted_fields_in_one_record():
    records, offsets, consumed = CsvFramer().split(CSVLOG, 0)
    assert len(records) == 2
    assert b"FROM customer" in records[0] and records[0].endswith(b'"psql"')
    assert records[1].endswith(b'"psql"') and b'""hi""\nthere' in records[1]
    assert offsets == [0, CSVLOG.index(b"2026-11-02 10:00:00.002")]
    assert consumed == CSVLOG.index(b"2026-11-02 10:00:00.003")


def test_csv_framer_strips_the_carriage_return_of_a_crlf_record_end_only():
    records, _, consumed = CsvFramer().split(b'a,"x\r\ny"\r\nb,c\r\n', 0)
    assert records == [b'a,"x\r\ny"', b"b,c"]
    assert consumed == 15


csv_field = st.text(alphabet=st.sampled_from('ab ,"\n1é'), max_size=12)
# An unquoted "\r" before the newline cannot be told from a CRLF ending; PostgreSQL quotes
# its text fields, so fields with "\r" are tested quoted.
csv_field_with_cr = st.text(alphabet=st.sampled_from('ab ,"\n\r1é'), max_size=12)


def write_csv(rows: list[list[str]], quoting: int = csv.QUOTE_MINIMAL) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", quoting=quoting).writerows(rows)
    return out.getvalue().encode()


def parse_records(records: list[bytes]) -> list[list[str]]:
    return [next(csv.reader(io.StringIO(r.decode(), newline=""))) for r in records]


@settings(max_examples=200)
@given(st.lists(st.lists(csv_field, min_size=1, max_size=5), min_size=1, max_size=12))
def test_csv_framer_records_parse_back_to_the_rows_written(rows):
    stream = write_csv(rows)
    records, offsets, consumed = CsvFramer().split(stream, 0)
    assert consumed == len(stream)
    assert parse_records(records) == rows
    assert [stream.index(r, o) for r, o in zip(records, offsets)] == offsets


@settings(max_examples=100)
@given(st.lists(st.lists(csv_field_with_cr, min_size=1, max_size=5), min_size=1, max_size=12))
def test_csv_framer_quoted_carriage_returns_stay_in_their_field(rows):
    records, _, _ = CsvFramer().split(write_csv(rows, csv.QUOTE_ALL), 0)
    assert parse_records(records) == rows


@settings(max_examples=300)
@given(st.lists(st.lists(csv_field, min_size=1, max_size=4), max_size=10),
       st.lists(st.integers(0, 600), max_size=12))
def test_csv_framer_gives_the_same_records_for_any_chunking(rows, cuts):
    stream = write_csv(rows) + b'tail,"open\n'
    whole = CsvFramer().split(stream, 0)
    assert frame_in_chunks(CsvFramer(), stream, cuts) == whole


def test_framers_registry_names_each():
    assert {"lines": LineFramer, "csv": CsvFramer, "json": JsonDocumentFramer} == FRAMERS


def test_csv_framer_counts_the_configured_quote_character():
    # main counted '"' whatever the format's quote: one stray '"' in a field joined every
    # later line into one record, up to max_record_bytes
    stream = b"a,say \"hi,x\nb,'multi\nline',y\nc,'it''s',z\n"
    records, offsets, consumed = CsvFramer(quote="'").split(stream, 0)
    assert records == [b'a,say "hi,x', b"b,'multi\nline',y", b"c,'it''s',z"]
    assert [stream[o:o + len(r)] for r, o in zip(records, offsets)] == records and consumed == len(stream)


def test_json_document_framer_cuts_cloudtrail_arrays_and_pretty_documents():
    framer = JsonDocumentFramer()
    doc = b'{"Records": [{"eventName": "A"}, {"eventName": "B"}]}'
    assert framer.split_document(doc) == ([b'{"eventName": "A"}', b'{"eventName": "B"}'], [13, 33], [])
    pretty = b'[\n  {"a": 1},\n  {"a": 1}\n]\n{\n  "b": "}{"\n}\n'
    records, offsets, rejected = framer.split_document(pretty)
    assert records == [b'{"a": 1}', b'{"a": 1}', b'{\n  "b": "}{"\n}'] and rejected == []
    assert [pretty[o:o + len(r)] for r, o in zip(records, offsets)] == records


def test_json_document_framer_rejects_what_is_not_a_document_with_the_reason():
    framer = JsonDocumentFramer()
    _, _, rejected = framer.split_document(b'{"Records": [{"a": 1}, {"b": ')
    assert [(r.offset, r.reason) for r in rejected] == [
        (0, "the document ends inside a JSON value (Input data was truncated)")]
    records, _, rejected = framer.split_document(b'{"a": 1} 42 {"Records": "x"}')
    assert records == [b'{"a": 1}']
    assert [r.reason for r in rejected] == ["expected a JSON object or array, found a number",
                                            "expected an array under 'Records', found a string"]
