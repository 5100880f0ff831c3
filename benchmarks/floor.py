#!/usr/bin/env python3
"""Benchmark: the floor under any Python pipeline that does what DESIGN.md asks of
each event, measured on this machine (µs per event, and the events/s it allows).

    python benchmarks/floor.py [--lines 1000000] [--workdir /var/tmp/neo-auditd-bench]

It runs only the work that no pure-Python design can leave out, each step in C
already, with none of the pipeline's own Python around it:

- read:        the log read in 1 MiB blocks and split into lines;
- decode:      each chunk of 256 lines decoded by msgspec into the neo-crm format's
               typed structs (one call per chunk, as the daemon does);
- pseudonyms:  every customer id (subject ids, and the id of customer records)
               through the keyed HMAC-SHA-256 pseudonymiser with its cache, cold at
               the start as a daemon's is;
- encode:      the decoded records encoded as msgpack (a stand-in for the stored
               events, which hold more);
- write:       the encoded chunks inserted into SQLite (WAL) 20,000 records a commit.

No AccessEvent is built, no directory joined, no rule run, no incident kept. The sum
is therefore a lower bound for the daemon's cost per event; its inverse, an upper
bound for its events/s. Run it pinned (`taskset -c 0`), beside benchmarks/replay.py.

The floor is frozen: the few pieces it once took from `auditd` (the format's structs,
the chunk decode, the pseudonymiser) are copied below as they were when issue 19 set the
targets, so a change to the daemon cannot move the yardstick it is measured against.
`--json` prints the figures for benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hashlib  # noqa: E402
import secrets  # noqa: E402
from collections import deque  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Annotated  # noqa: E402

import msgspec  # noqa: E402

# ---------------------------------------------------------------------------------------
# Frozen copies of what the floor takes from `auditd` (as of issue 19), so that the floor
# cannot move with the code it measures: the neo-crm format's typed structs as the
# decoder derived them, the chunk decode (one msgspec call per chunk, records joined by
# a numeric separator), and the keyed pseudonymiser with its first-in-first-out cache.
# Do not "update" these when the daemon changes: that is the point.
# ---------------------------------------------------------------------------------------
CHUNK_RECORDS = 256  # auditd.pipeline.CHUNK_RECORDS then
NonEmptyText = Annotated[str, msgspec.Meta(min_length=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class Employee(msgspec.Struct, gc=False):
    user_id: NonEmptyText | None = msgspec.field(default=None, name="id")
    user_name: NonEmptyText | None = msgspec.field(default=None, name="name")


class Resource(msgspec.Struct, gc=False):
    resource_type: NonEmptyText | None = msgspec.field(default=None, name="type")
    resource_id: NonEmptyText | None = msgspec.field(default=None, name="id")
    resource_store: NonEmptyText | None = msgspec.field(default=None, name="store")


class Destination(msgspec.Struct, gc=False):
    destination_partner: NonEmptyText | None = msgspec.field(default=None, name="partner")
    destination_host: NonEmptyText | None = msgspec.field(default=None, name="host")
    destination_ip: NonEmptyText | None = msgspec.field(default=None, name="ip")
    destination_country: NonEmptyText | None = msgspec.field(default=None, name="country")


class Record(msgspec.Struct, gc=False):
    service_name: NonEmptyText | None = msgspec.field(default=None, name="app")
    host_name: NonEmptyText | None = msgspec.field(default=None, name="host")
    request_id: NonEmptyText | None = msgspec.field(default=None, name="req")
    source_ip: NonEmptyText | None = msgspec.field(default=None, name="ip")
    subject_ids: tuple[NonEmptyText, ...] = msgspec.field(default=(), name="subjects")
    record_count: NonNegative = msgspec.field(default=1, name="count")
    fields: tuple[NonEmptyText, ...] = ()
    masked: bool | None = None
    ticket: NonEmptyText | None = None
    purpose: NonEmptyText | None = None
    f0: datetime | None = msgspec.field(default=None, name="ts")
    f1: object = msgspec.field(default=None, name="op")
    f2: object = msgspec.field(default=None, name="result")
    f6: Employee | None = msgspec.field(default=None, name="emp")
    f8: Resource | None = msgspec.field(default=None, name="res")
    f15: Destination | None = msgspec.field(default=None, name="dest")


class ChunkDecoder:
    """One msgspec call per chunk: the records joined into one JSON array, a random
    number between them (which proves that no record spilled over its line)."""

    def __init__(self) -> None:
        self._decode = msgspec.json.Decoder(list[Record | int]).decode
        self._separator_value = secrets.randbits(62)
        self._separator = b",%d," % self._separator_value

    def typed(self, records: list[bytes]) -> list:
        out = self._decode(b"".join((b"[", self._separator.join(records), b"]")))
        if len(out) != 2 * len(records) - 1 or out[1::2].count(self._separator_value) != len(records) - 1:
            raise ValueError("a record spilled over its line")
        return out[::2]


class Pseudonymiser:
    """'p:' + 32 hex digits of HMAC-SHA-256(key, id), the keyed pads hashed once; a
    bounded first-in-first-out cache whose hits are one dict lookup in C."""

    def __init__(self, key: bytes, *, cache_size: int):
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._table: dict[str, str] = {}
        self._order: deque[str] = deque()
        self._maxsize = cache_size
        self._known = self._table.get

    def _add(self, raw: str) -> str:
        inner = self._inner.copy()
        inner.update(raw.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        value = "p:" + outer.digest()[:16].hex()
        if len(self._table) >= self._maxsize:
            del self._table[self._order.popleft()]
        self._table[raw] = value
        self._order.append(raw)
        return value

    def each(self, raws: list[str]) -> list[str]:
        out = list(map(self._known, raws))
        if None in out:
            find, at = out.index, 0
            try:
                while True:
                    at = find(None, at)
                    out[at] = self._add(raws[at])
                    at += 1
            except ValueError:
                pass
        return out


BATCH = 20_000
CUSTOMER_TYPES = frozenset({"customer", "address", "payment", "points", "location", "face"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/neo-auditd-bench"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from replay import prepare  # the same example log as the end-to-end benchmark

    _, log = prepare(args.workdir, args.lines)
    clock = time.perf_counter
    spent = dict.fromkeys(("read", "decode", "pseudonyms", "encode", "write"), 0.0)

    t = clock()
    lines: list[bytes] = []
    with open(log, "rb", buffering=0) as fh:
        tail = b""
        while block := fh.read(1 << 20):
            parts = (tail + block).split(b"\n")
            tail = parts.pop()
            lines += parts
    spent["read"] = clock() - t

    decoder = ChunkDecoder()
    pseudonymiser = Pseudonymiser(b"floor-benchmark-key-0123456789ab", cache_size=524_288)
    encode = msgspec.msgpack.Encoder().encode
    with tempfile.TemporaryDirectory(prefix="neo-floor-") as tmp:
        db = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        db.execute("PRAGMA page_size=65536")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE segments (seq INTEGER PRIMARY KEY, doc BLOB NOT NULL)")
        for start in range(0, len(lines), BATCH):
            bodies = []
            for at in range(start, min(start + BATCH, len(lines)), CHUNK_RECORDS):
                chunk = lines[at:at + CHUNK_RECORDS]
                t0 = clock()
                typed = decoder.typed(chunk)
                t1 = clock()
                # gathering the ids is Python work, left out of the floor
                ids = [i for r in typed for i in r.subject_ids]
                ids += [r.f8.resource_id for r in typed
                        if r.f8 is not None and r.f8.resource_type in CUSTOMER_TYPES and r.f8.resource_id]
                t1b = clock()
                pseudonymiser.each(ids)
                t2 = clock()
                bodies.append(encode(typed))
                t3 = clock()
                spent["decode"] += t1 - t0
                spent["pseudonyms"] += t2 - t1b
                spent["encode"] += t3 - t2
            t = clock()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO segments (doc) VALUES (?)", (b"".join(bodies),))
            db.execute("COMMIT")
            spent["write"] += clock() - t
        db.close()

    n = len(lines)
    total = sum(spent.values())
    if args.json:
        print(json.dumps({"lines": n, "us_per_event": {k: round(v / n * 1e6, 3) for k, v in spent.items()},
                          "floor_us_per_event": round(total / n * 1e6, 3), "events_per_second": round(n / total)}))
        return
    for step, seconds in spent.items():
        print(f"{step:11s} {seconds / n * 1e6:6.2f} us/event")
    print(f"{'floor':11s} {total / n * 1e6:6.2f} us/event -> at most {n / total:,.0f} events/s "
          f"for {n:,} lines (the daemon adds its own work on top)")


if __name__ == "__main__":
    main()
