"""The quarantine file: a JSON-lines mirror of the store's quarantine table.

The table is the authority (written in the batch's transaction); the file is for people
and tools. It is appended after each commit and, at start, caught up from the table, so a
crash between the commit and the append loses nothing from the file either.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import msgspec

from auditd.decode.quarantine import Quarantined
from auditd.store.sqlite import Store

_encode = msgspec.json.Encoder().encode


def _line(seq: int, source: str, path: str, offset: int, reason: str, length: int, record: bytes, at: str) -> bytes:
    try:
        text, encoding = record.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(record).decode("ascii"), "base64"
    return _encode({
        "seq": seq, "at": at, "source": source, "path": path, "offset": offset, "reason": reason,
        "length": length, "truncated": length > len(record), "encoding": encoding, "record": text,
    }) + b"\n"


class QuarantineFile:
    def __init__(self, path: Path, store: Store):
        self.path = Path(path)
        self.store = store
        self._last_seq = 0

    def catch_up(self) -> int:
        """Append the table's rows that the file lacks (after a crash); returns how many."""
        self._last_seq = self._file_last_seq()
        return self._copy_new_rows()

    def append(self, items: list[Quarantined]) -> None:
        if items:
            # the rows were just committed; read their seq numbers back rather than guess them
            self._copy_new_rows()

    def _copy_new_rows(self) -> int:
        rows = self.store.conn.execute(
            "SELECT seq, source, path, offset, reason, length, record, at FROM quarantine WHERE seq > ? ORDER BY seq",
            (self._last_seq,),
        ).fetchall()
        self._write([_line(*row) for row in rows])
        if rows:
            self._last_seq = rows[-1][0]
        return len(rows)

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)  # raw lines hold PI
        try:
            size = os.fstat(fd).st_size
            # a crash may have cut the last line short: never glue a record onto it
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            os.write(fd, (b"\n" if torn else b"") + b"".join(lines))
        finally:
            os.close(fd)

    def _file_last_seq(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 256 * 1024))
                tail = fh.read().splitlines()
        except FileNotFoundError:
            return 0
        for raw in reversed(tail):
            try:
                return int(msgspec.json.decode(raw)["seq"])
            except (msgspec.DecodeError, KeyError, TypeError, ValueError):
                continue  # a torn last line from a crash mid-write
        return 0


__all__ = ["QuarantineFile"]
