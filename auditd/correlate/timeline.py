"""An incident's append-only timeline, hash-chained so that tampering shows.

Each entry stores sha256(prev_hash + canonical JSON of the entry), the first one
chaining from GENESIS; the incident row keeps the seq and hash of the last entry, so
that cutting entries off the end shows too. The chain proves nothing against someone
who rewrites every later hash and the incident row; anchoring heads outside the
database (a log line, Elasticsearch) is what closes that.

Verification hashes the entry's bytes as stored, never a re-encoding of what they
decode to: the canonical JSON is spliced together from the stored ``data`` text and the
other columns, with a string escaper of our own (``_json_string``), so an upgrade of
the JSON library (a new escaping rule, a different float format) cannot turn a valid
chain invalid. It gives byte for byte what the earlier encoder gave, so chains written
before this change verify as they are.
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


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_ESCAPES.update({chr(c): f"\\u{c:04x}" for c in range(0x20) if chr(c) not in _ESCAPES})
_ESCAPES["\x7f"] = "\x7f"  # DEL is written as is
_TRANSLATE = str.maketrans(_ESCAPES)


def _json_string(text: str) -> str:
    """A JSON string literal: quotes, backslashes and control characters escaped, all
    else (non-ASCII included) as is. Ours, so that it never changes under us."""
    return '"' + text.translate(_TRANSLATE) + '"'


def entry_bytes(incident_id: str, seq: int, at: str, kind: str, who: str, data_text: str) -> bytes:
    """The canonical JSON of an entry (keys sorted), with `data` as the text stored."""
    # the incident id and seq are inside the hash, so entries cannot be moved or reordered
    return (f'{{"at":{_json_string(at)},"data":{data_text},"incident_id":{_json_string(incident_id)},'
            f'"kind":{_json_string(kind)},"seq":{int(seq)},"who":{_json_string(who)}}}').encode("utf-8")


def stored_hash(prev_hash: str, incident_id: str, seq: int, at: str, kind: str, who: str, data_text: str) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + entry_bytes(incident_id, seq, at, kind, who, data_text)).hexdigest()


def entry_hash(prev_hash: str, incident_id: str, seq: int, at: str, kind: str, who: str,
               data: dict[str, Any]) -> str:
    return stored_hash(prev_hash, incident_id, seq, at, kind, who, _canonical.encode(data).decode("utf-8"))


def next_entry(incident_id: str, head: Head, at: str, kind: str, who: str,
               data: dict[str, Any]) -> tuple[Any, ...]:
    """The row of the next entry (for INSERT_ENTRY); advances head in place."""
    seq = head.seq + 1
    data_text = _canonical.encode(data).decode("utf-8")  # encoded once: the bytes stored are the bytes hashed
    digest = stored_hash(head.hash, incident_id, seq, at, kind, who, data_text)
    row = (incident_id, seq, at, kind, who, data_text, head.hash, digest)
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
    for seq, at, kind, who, data_text, prev_hash, recorded in rows:
        expected = head.seq + 1
        if seq != expected or prev_hash != head.hash:  # an entry removed, or re-chained
            return False, expected
        if not all(isinstance(v, str) for v in (at, kind, who, data_text)):
            return False, seq  # a column edited to another type
        digest = stored_hash(head.hash, incident_id, seq, at, kind, who, data_text)
        if digest != recorded:
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
