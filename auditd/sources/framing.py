"""Framers: cut a byte buffer into complete records, keeping an unfinished one for later.

Both return (records, start offsets, consumed). ``consumed`` stops just past the last
complete record, so the caller keeps ``buf[consumed:]`` (an unfinished record) and reads
it again with more bytes; the checkpoint never lands inside a record.
"""

from __future__ import annotations

from itertools import accumulate

_plus_one = (1).__add__  # a record's length plus its newline, without a Python-level lambda


class LineFramer:
    """One record per line: ends at b"\\n"; a trailing b"\\r" is removed.

    The hot path: one bytes.split and one itertools.accumulate, both in C.
    """

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
    """PostgreSQL csvlog: a record ends at a newline outside double quotes.

    Quotes inside a field are doubled, so a newline is inside a quoted field exactly
    when the record so far holds an odd number of quotes; multi-line fields (queries,
    DETAIL, CONTEXT) stay in one record.
    """

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
            quotes += buf.count(b'"', scanned, newline)
            scanned = newline + 1
            if quotes & 1:
                continue  # the newline belongs to a quoted field
            end = newline - 1 if newline > start and buf[newline - 1] == 0x0D else newline
            records.append(buf[start:end])
            offsets.append(base_offset + start)
            start = scanned
            quotes = 0


FRAMERS = {"lines": LineFramer, "csv": CsvFramer}  # framing name → class, for format registries
