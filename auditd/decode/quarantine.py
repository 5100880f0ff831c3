"""A record that could not be decoded or mapped: kept with its reason, never fatal."""

from __future__ import annotations

import msgspec

MAX_KEPT_BYTES = 64 * 1024  # a 1 MB garbage line is kept in part; the source file has it whole


class Quarantined(msgspec.Struct, kw_only=True, frozen=True):
    source: str
    path: str
    offset: int
    reason: str
    length: int  # bytes of the whole record
    record: bytes  # at most MAX_KEPT_BYTES of it

    @classmethod
    def of(cls, source: str, path: str, offset: int, reason: str, record: bytes) -> "Quarantined":
        return cls(source=source, path=path, offset=offset, reason=reason,
                   length=len(record), record=record[:MAX_KEPT_BYTES])
