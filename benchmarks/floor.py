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
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402

from auditd.config.located import Problems  # noqa: E402
from auditd.decode import load_format  # noqa: E402
from auditd.decode.typed_json import _struct_reader  # noqa: E402
from auditd.enrich.pseudonym import Pseudonymiser  # noqa: E402
from auditd.pipeline import CHUNK_RECORDS  # noqa: E402

BATCH = 20_000
CUSTOMER_TYPES = frozenset({"customer", "address", "payment", "points", "location", "face"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/neo-auditd-bench"))
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

    decoder = load_format("neo-crm", Problems()).events.__self__  # the daemon's chunk decoder
    path_of = {plan.attr: plan.names for plan in decoder._plans}  # event attribute -> struct attributes
    subject_ids, resource_type, resource_id = (_struct_reader(path_of[a]) for a in ("subject_ids", "resource_type",
                                                                             "resource_id"))
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
                typed = decoder._typed(chunk)
                t1 = clock()
                # gathering the ids is Python work, left out of the floor
                ids = [i for r in typed for i in subject_ids(r)]
                ids += [resource_id(r) for r in typed if resource_type(r) in CUSTOMER_TYPES and resource_id(r)]
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
    for step, seconds in spent.items():
        print(f"{step:11s} {seconds / n * 1e6:6.2f} us/event")
    print(f"{'floor':11s} {total / n * 1e6:6.2f} us/event -> at most {n / total:,.0f} events/s "
          f"for {n:,} lines (the daemon adds its own work on top)")


if __name__ == "__main__":
    main()
