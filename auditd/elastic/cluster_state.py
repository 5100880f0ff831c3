"""What a cluster rule has learned, kept in Elasticsearch so that any daemon can go on.

A cluster rule runs on whichever daemon holds its lease; when that daemon dies the
next holder must continue from the same place with the same state, or a window is
lost or an alert doubled. So the rule's position in the events (the sort values of
the last event it evaluated) and its detector state (the rows the kind keeps in
``detector_state``, exactly as a local rule keeps them) are written to the leases
index after every round:

- the state as one msgpack map {group key: the kind's value}, cut into parts of at
  most ``PART_BYTES`` (``<fleet>/rule/<id>/<hash>/<slot>/<n>``), written to the slot the
  head does not point at;
- then the head (``<fleet>/rule/<id>/<hash>/head``: generation, slot, parts, cursor,
  counts) by compare-and-set on its ``_seq_no``/``_primary_term``.

Two slots make the switch atomic: a holder killed while writing parts leaves the head
on the old slot, whose parts are whole. A holder that lost its lease meanwhile loses
the compare-and-set and drops what it computed. Alerts are created before the head
moves, create-only with ids derived from the events they cite, so the next holder
reading the same events again from the old head finds the same alerts (409), never
new ones: each alert once, no window lost.

Window kinds forget keys whose newest entry is older than the timespan (and the
realert time) before the cursor: such a key behaves exactly like a new one.
"""

from __future__ import annotations

import base64
import sqlite3
from dataclasses import dataclass
from typing import Any

import msgspec
from elasticsearch import ConflictError, Elasticsearch

PART_BYTES = 4 * 1024 * 1024
_encode = msgspec.msgpack.Encoder().encode
_decode_map = msgspec.msgpack.Decoder(dict[str, bytes]).decode
_generic = msgspec.msgpack.Decoder().decode


@dataclass(frozen=True, slots=True)
class Head:
    generation: int
    slot: int
    parts: int
    cursor: list[Any] | None  # the sort values of the last event evaluated
    cursor_time: str | None  # its @timestamp (ISO), for lag and status
    start: str | None  # the oldest event time this rule version evaluates from
    evaluated: int  # events read at or before the cursor (the late count compares with it)
    alerts: int
    owner: str | None
    seq_no: int | None = None  # of the head document as read; None: no head yet
    primary_term: int | None = None


def _base(fleet: str, rule_id: str, rule_hash: str) -> str:
    return f"{fleet}/rule/{rule_id}/{rule_hash}"


class RuleStateDocuments:
    """Reads and writes one fleet's cluster-rule heads and state parts."""

    def __init__(self, es: Elasticsearch, index: str, fleet: str):
        self.es = es
        self.index = index
        self.fleet = fleet

    def head(self, rule_id: str, rule_hash: str) -> Head | None:
        doc = self._get(_base(self.fleet, rule_id, rule_hash) + "/head")
        if doc is None:
            return None
        src = doc["_source"]
        return Head(int(src["generation"]), int(src["slot"]), int(src["parts"]), src.get("cursor"),
                    src.get("cursor_time"), src.get("start"), int(src.get("evaluated", 0)),
                    int(src.get("alerts", 0)), src.get("owner"), doc["_seq_no"], doc["_primary_term"])

    def _get(self, doc_id: str) -> dict | None:
        response = self.es.mget(index=self.index, ids=[doc_id])  # real-time: the latest write
        doc = response["docs"][0]
        return doc if doc.get("found") else None

    def load_state(self, rule_id: str, rule_hash: str, head: Head) -> dict[str, bytes]:
        """The state map the head points at."""
        if head.parts == 0:
            return {}
        base = _base(self.fleet, rule_id, rule_hash)
        ids = [f"{base}/{head.slot}/{n}" for n in range(head.parts)]
        docs = self.es.mget(index=self.index, ids=ids)["docs"]
        chunks = []
        for doc in docs:
            if not doc.get("found") or doc["_source"].get("generation") != head.generation:
                raise StateMissing(f"state part {doc.get('_id')} of generation {head.generation} is missing")
            chunks.append(base64.b64decode(doc["_source"]["data"]))
        return _decode_map(b"".join(chunks))

    def save(self, rule_id: str, rule_hash: str, previous: Head | None, state: dict[str, bytes], *,
             cursor: list[Any] | None, cursor_time: str | None, start: str | None, evaluated: int,
             alerts: int, owner: str, now_ms: int) -> Head | None:
        """Write the state to the free slot, then move the head; None if another daemon
        moved the head first (this one no longer holds the rule)."""
        generation = (previous.generation + 1) if previous else 1
        slot = generation % 2
        blob = _encode(state) if state else b""
        parts = [blob[i:i + PART_BYTES] for i in range(0, len(blob), PART_BYTES)]
        base = _base(self.fleet, rule_id, rule_hash)
        if parts:
            lines = []
            for n, part in enumerate(parts):
                lines.append({"index": {"_id": f"{base}/{slot}/{n}"}})
                lines.append({"kind": "rule_state_part", "group": self.fleet, "generation": generation,
                              "data": base64.b64encode(part).decode()})
            response = self.es.bulk(index=self.index, operations=lines, filter_path="errors,items.*.error")
            if response.body.get("errors"):
                raise StateNotWritten(f"state parts not written: {response.body.get('items')}")
        document = {"kind": "rule_state", "group": self.fleet, "rule_id": rule_id, "rule_hash": rule_hash,
                    "generation": generation, "slot": slot, "parts": len(parts), "cursor": cursor,
                    "cursor_time": cursor_time, "start": start, "evaluated": evaluated, "alerts": alerts,
                    "owner": owner, "renewed_at_ms": now_ms}
        condition: dict[str, Any] = (
            {"op_type": "create"} if previous is None or previous.seq_no is None
            else {"if_seq_no": previous.seq_no, "if_primary_term": previous.primary_term})
        try:
            answer = self.es.index(index=self.index, id=f"{base}/head", document=document, **condition)
        except ConflictError:
            return None
        return Head(generation, slot, len(parts), cursor, cursor_time, start, evaluated, alerts, owner,
                    answer["_seq_no"], answer["_primary_term"])


class StateMissing(Exception):
    """A head points at parts that are not there (deleted by hand): the rule starts afresh."""


class StateNotWritten(Exception):
    """Elasticsearch refused a state part: the head stays, the round is done again."""


# -- the detector_state rows of a private in-memory store ---------------------------------------

def dump_rows(conn: sqlite3.Connection, rule_id: str, rule_hash: str) -> dict[str, bytes]:
    rows = conn.execute("SELECT key, value FROM detector_state WHERE rule_id = ? AND rule_hash = ?",
                        (rule_id, rule_hash)).fetchall()
    return {key: bytes(value) for key, value in rows}


def load_rows(conn: sqlite3.Connection, rule_id: str, rule_hash: str, state: dict[str, bytes]) -> None:
    conn.execute("BEGIN")
    conn.execute("DELETE FROM detector_state WHERE rule_id = ? AND rule_hash = ?", (rule_id, rule_hash))
    conn.executemany("INSERT INTO detector_state (rule_id, rule_hash, key, touched, value) VALUES (?, ?, ?, 1, ?)",
                     [(rule_id, rule_hash, key, value) for key, value in state.items()])
    conn.execute("COMMIT")


def newest_time(kind: str, value: bytes) -> float | None:
    """The newest time a window kind's value remembers (entries, last alert); None for
    kinds whose state is not a window (first_seen learns for ever: never forgotten)."""
    if kind not in ("threshold", "sequence"):
        return None
    raw = _generic(value)

    # Window: [times, ids, values, alerted]; Partitioned: [parts, windows, alerted];
    # Progress: [times per step, ids per step, alerted]. Times are floats; value and
    # partition hashes are ints, so only floats count.
    def floats(node: Any) -> float:
        if isinstance(node, float):
            return node
        if isinstance(node, list):
            return max((floats(item) for item in node), default=0.0)
        return 0.0

    return floats(raw)
