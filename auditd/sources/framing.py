"""Framers: cut a byte buffer into complete records, keeping an unfinished one for later.

Line and CSV framers return (records, start offsets, consumed). ``consumed`` stops just
past the last complete record, so the caller keeps ``buf[consumed:]`` (an unfinished
record) and reads it again with more bytes; the checkpoint never lands inside a record,
except inside one longer than max_record_bytes, which `RecordCutter` rejects once and skips.

The JSON documents framer is for whole files (``whole_file``): a CloudTrail file is one
``{"Records": [...]}`` document, and cannot be cut before it is complete. Its
``split_document`` takes the whole (decompressed) file.
"""

from __future__ import annotations

import re
from itertools import accumulate

import msgspec

from auditd.sources.base import Rejected

_plus_one = (1).__add__  # a record's length plus its newline, without a Python-level lambda


class LineFramer:
    """One record per line: ends at b"\\n"; a trailing b"\\r" is removed.

    The hot path: one bytes.split and one itertools.accumulate, both in C.
    """

    whole_file = False

    def split(self, buf: bytes, base_offset: int) -> tuple[list[bytes], list[int], int]:
        last_newline = buf.rfind(b"\n")
        if last_newline < 0:
            return [], [], 0
        records = buf.split(b"\n")
        records.pop()  # the unfinished tail after the last newline (b"" if there is none)
        offsets = list(accumulate(map(_plus_one, map(len, records)), initial=base_offset))
        offsets.pop()  # that value is where the next record starts
        if b"\r" in buf:  # rare (CRLF files); offsets above were taken before stripping
            records = [r[:-1] if r.endswith(b"\r") else r for r in records]
        return records, offsets, last_newline + 1


class CsvFramer:
    """CSV (PostgreSQL csvlog too): a record ends at a newline outside quotes.

    Quotes inside a field are doubled, so a newline is inside a quoted field exactly
    when the record so far holds an odd number of quote characters; multi-line fields
    (queries, DETAIL, CONTEXT) stay in one record. The quote character is the format's
    (``options.quote``): with ``'`` a stray ``"`` in a field means nothing.
    """

    whole_file = False

    def __init__(self, quote: str = '"'):
        self._quote = quote.encode("utf-8")  # UTF-8 never hides one character inside another

    def split(self, buf: bytes, base_offset: int) -> tuple[list[bytes], list[int], int]:
        records: list[bytes] = []
        offsets: list[int] = []
        start = 0  # where the current record starts
        scanned = 0  # bytes of the current record whose quotes are counted
        quotes = 0
        while True:
            newline = buf.find(b"\n", scanned)
            if newline < 0:
                return records, offsets, start
            quotes += buf.count(self._quote, scanned, newline)
            scanned = newline + 1
            if quotes & 1:
                continue  # the newline belongs to a quoted field
            end = newline - 1 if newline > start and buf[newline - 1] == 0x0D else newline
            records.append(buf[start:end])
            offsets.append(base_offset + start)
            start = scanned
            quotes = 0


SAMPLE_BYTES = 64 * 1024  # what a rejection keeps of the bytes it is about


class RecordCutter:
    """A stream framer's guard against a record without end (one file's reader each).

    A record longer than ``max_record_bytes`` is not cut into pieces that would each be
    quarantined, counted and stored as records of their own: it is rejected once, where it
    starts, with a sample of its head, and the rest of it is skipped up to its end. Only the
    skip is in memory: after a restart in the middle of one, the rest is read as a record
    of its own (quarantined, nothing lost).
    """

    __slots__ = ("_framer", "_max_bytes", "skipping")

    def __init__(self, framer, max_record_bytes: int):
        self._framer = framer
        self._max_bytes = max_record_bytes
        self.skipping = False  # inside a record rejected before

    def split(self, buf: bytes, base_offset: int) -> tuple[list[bytes], list[int], int, Rejected | None]:
        """The framer's (records, offsets, consumed), and the rejection of the unfinished
        record after them once it is longer than the limit (then all of `buf` is consumed)."""
        records, offsets, consumed = self._framer.split(buf, base_offset)
        if self.skipping:
            if consumed == 0:
                return records, offsets, len(buf), None  # still inside it: nothing to keep
            self.skipping = False
            del records[0], offsets[0]  # its end
        if len(buf) - consumed < self._max_bytes:
            return records, offsets, consumed, None
        self.skipping = True
        reason = (f"expected a record of at most max_record_bytes ({self._max_bytes}), found a longer one; its "
                  f"first {min(len(buf) - consumed, SAMPLE_BYTES)} bytes are kept, the rest is skipped to its end")
        return records, offsets, len(buf), Rejected(base_offset + consumed, reason,
                                                   bytes(buf[consumed:consumed + SAMPLE_BYTES]))


_DOCUMENT_TOP = dict[str, msgspec.Raw] | list[msgspec.Raw]
_decode_top = msgspec.json.Decoder(_DOCUMENT_TOP).decode
_decode_list = msgspec.json.Decoder(list[msgspec.Raw]).decode
# A JSON string (escapes included) or a bracket: enough to find where top-level values end.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_WHITESPACE = b" \t\r\n"


class JsonDocumentFramer:
    """Whole JSON documents: the records of a CloudTrail file, and the like.

    A file holds one or more JSON values, compact or pretty-printed. An object with an
    array under ``records_key`` (CloudTrail's ``{"Records": [...]}``) gives the
    array's elements; an array gives its elements; any other object is one record
    (JSON lines are a special case). A record's offset is where it starts in the file.
    What is not JSON, or not an object or array, is rejected with the reason.
    """

    whole_file = True

    def __init__(self, records_key: str = "Records"):
        self._records_key = records_key

    def split(self, buf: bytes, base_offset: int) -> tuple[list[bytes], list[int], int]:
        """Only whole files are framed (split_document); a partial buffer holds nothing yet."""
        return [], [], 0

    def split_document(self, doc: bytes) -> tuple[list[bytes], list[int], list[Rejected]]:
        records: list[bytes] = []
        offsets: list[int] = []
        rejected: list[Rejected] = []
        start, end = _strip(doc, 0, len(doc))
        if start == end:
            return records, offsets, rejected  # an empty file: nothing to read
        try:
            value = _decode_top(doc[start:end] if (start, end) != (0, len(doc)) else doc)
        except (msgspec.DecodeError, RecursionError, ValueError) as exc:
            first_error = _json_error(exc)
        else:
            self._take(doc, start, end, value, records, offsets, rejected)
            return records, offsets, rejected
        for span_start, span_end, problem in _top_level_values(doc, first_error):
            if problem is not None:
                rejected.append(Rejected(span_start, problem, doc[span_start:min(span_end, span_start + SAMPLE_BYTES)]))
                continue
            try:
                value = _decode_top(doc[span_start:span_end])
            except (msgspec.DecodeError, RecursionError, ValueError) as exc:
                reason = f"invalid JSON: {_json_error(exc)}"
                rejected.append(Rejected(span_start, reason, doc[span_start:min(span_end, span_start + SAMPLE_BYTES)]))
                continue
            self._take(doc, span_start, span_end, value, records, offsets, rejected)
        return records, offsets, rejected

    def _take(self, doc: bytes, start: int, end: int, value: dict | list, records: list[bytes],
              offsets: list[int], rejected: list[Rejected]) -> None:
        """The records of one top-level value that spans doc[start:end]."""
        if type(value) is dict:
            inner = value.get(self._records_key)
            if inner is None:
                records.append(doc[start:end])  # a record on its own
                offsets.append(start)
                return
            try:
                value = _decode_list(inner)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError):
                found = _json_kind(bytes(inner))
                rejected.append(Rejected(start, f"expected an array under {self._records_key!r}, found {found}",
                                         doc[start:min(end, start + SAMPLE_BYTES)]))
                return
            start = doc.find(bytes(inner), start)  # where the array starts, for the search below
        position = start
        for element in value:
            data = bytes(element)
            found = doc.find(data, position)  # the next value after the previous one: exact
            records.append(data)
            offsets.append(found)
            position = found + len(data)


def _strip(doc: bytes, start: int, end: int) -> tuple[int, int]:
    while start < end and doc[start] in _WHITESPACE:
        start += 1
    while end > start and doc[end - 1] in _WHITESPACE:
        end -= 1
    return start, end


def _top_level_values(doc: bytes, first_error: str):
    """(start, end, problem) of each top-level value, and of what is none; problem None
    for a value to decode. Only brackets and strings are looked at: the decoder judges
    the rest of each value."""
    depth = 0
    value_start = 0
    gap_start = 0
    for match in _JSON_TOKEN.finditer(doc):
        first = doc[match.start()]
        if first == 0x22:  # a string
            if depth == 0:
                depth = -1  # a bare string at the top: junk until the next bracket
            continue
        if first in (0x7B, 0x5B):  # { [
            if depth <= 0:
                if depth < 0 or _strip(doc, gap_start, match.start())[0] < match.start():
                    yield from _junk(doc, gap_start, match.start())
                depth, value_start = 0, match.start()
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                yield value_start, match.end(), None
                gap_start = match.end()
    if depth > 0:
        yield value_start, len(doc), f"the document ends inside a JSON value ({first_error})"
    else:
        yield from _junk(doc, gap_start, len(doc))


def _junk(doc: bytes, start: int, end: int):
    start, end = _strip(doc, start, end)
    if start < end:
        yield start, end, f"expected a JSON object or array, found {_json_kind(doc[start:end])}"


def _json_kind(data: bytes) -> str:
    try:
        value = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, ValueError):
        return f"text that is not JSON ({len(data)} bytes)"
    return {dict: "an object", list: "an array", str: "a string", bool: "true or false",
            type(None): "null"}.get(type(value), "a number")


def _json_error(exc: BaseException) -> str:
    return str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"


FRAMERS = {  # framing name → class, for format registries
    "lines": LineFramer,
    "csv": CsvFramer,
    "json": JsonDocumentFramer,
}
