"""An incident's append-only timeline, hash-chained so that tampering shows.

Each entry stores sha256(prev_hash + canonical JSON of the entry), the first one
chaining from GENESIS; the incident row keeps the seq and hash of the last entry, so
that cutting entries off the end shows too. The chain proves nothing against someone
who rewrites every later hash and the incident row; anchoring heads outside the
database (a log line, Elasticsearch) is what closes that.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from typing import Any

import msgspec

from auditd.correlate.model import TimelineEntry, UnknownIncident
from auditd.store.times import from_db

GENESIS = "0" * 64

INSERT_ENTRY = (
    "INSERT INTO incident_timeline (incident_id, seq, at, kind, who, data, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(slots=True)
class Head:
    """The last entry of a timeline: where the next one chains from."""

    seq: int = 0
    hash: str = GENESIS


# Canonical JSON: keys sorted at every level, no whitespace, UTF-8 as is (not \u-escaped).
_canonical = msgspec.json.Encoder(order="sorted")
_decode = msgspec.json.Decoder()


def entry_hash(prev_hash: str, incident_id: str, seq: int, at: str, kind: str, who: str,
               data: dict[str, Any]) -> str:
    # the incident id and seq are inside the hash, so entries cannot be moved or reordered
    canonical = _canonical.encode({"at": at, "data": data, "incident_id": incident_id,
                                   "kind": kind, "seq": seq, "who": who})
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


def next_entry(incident_id: str, head: Head, at: str, kind: str, who: str,
               data: dict[str, Any]) -> tuple[Any, ...]:
    """The row of the next entry (for INSERT_ENTRY); advances head in place."""
    seq = head.seq + 1
    digest = entry_hash(head.hash, incident_id, seq, at, kind, who, data)
    row = (incident_id, seq, at, kind, who, _canonical.encode(data).decode("utf-8"), head.hash, digest)
    head.seq, head.hash = seq, digest
    return row


def verify_timeline(conn: sqlite3.Connection, incident_id: str) -> tuple[bool, int | None]:
    """(True, None) if the chain holds; else (False, seq of the first entry that fails)."""
    anchor = conn.execute(
        "SELECT timeline_seq, timeline_head FROM incidents WHERE incident_id = ?", (incident_id,)
    ).fetchone()
    if anchor is None:
        raise UnknownIncident(incident_id)
    rows = conn.execute(
        "SELECT seq, at, kind, who, data, prev_hash, hash FROM incident_timeline"
        " WHERE incident_id = ? ORDER BY seq", (incident_id,)
    )
    head = Head()
    for seq, at, kind, who, data_text, prev_hash, stored_hash in rows:
        expected = head.seq + 1
        if seq != expected or prev_hash != head.hash:  # an entry removed, or re-chained
            return False, expected
        try:
            data = _decode.decode(data_text)
        except msgspec.DecodeError:
            return False, seq
        digest = entry_hash(head.hash, incident_id, seq, at, kind, who, data)
        if digest != stored_hash:
            return False, seq
        head.seq, head.hash = seq, digest
    if (head.seq, head.hash) != tuple(anchor):  # entries cut off the end
        return False, head.seq + 1
    return True, None


def read_timeline(conn: sqlite3.Connection, incident_id: str) -> list[TimelineEntry]:
    rows = conn.execute(
        "SELECT seq, at, kind, who, data, hash FROM incident_timeline"
        " WHERE incident_id = ? ORDER BY seq", (incident_id,)
    )
    return [
        TimelineEntry(seq=seq, at=from_db(at), kind=kind, who=who, data=_data(data), hash=digest)
        for seq, at, kind, who, data, digest in rows
    ]


def _data(text: str) -> dict[str, Any]:
    # a damaged entry must still be shown, so that people can see what verify_timeline found
    try:
        data = _decode.decode(text)
    except msgspec.DecodeError:
        return {"unreadable": text}
    return data if isinstance(data, dict) else {"unreadable": text}
