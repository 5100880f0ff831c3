#!/usr/bin/env python3
"""Benchmark of the enrich stage on the example log: events/s for the directory join
alone and for the whole stage (join, sensitivity, pseudonyms), on one core.

    python benchmarks/enrich.py [--lines 500000] [--log DIR/access.log]

Events are built from the log with a minimal reading of docs/example-access-log.md
(outside the timing), so that the figure is enrich's own. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402

from auditd.config.located import Problems  # noqa: E402
from auditd.directory import load_directory  # noqa: E402
from auditd.enrich import Enricher, Pseudonymiser  # noqa: E402
from auditd.event import AccessEvent, parse_time  # noqa: E402

OP_ACTION = {"auth.login": "login", "auth.logout": "logout", "report.print": "print"}
VERB_ACTION = {"view": "read", "search": "search", "export": "export", "unmask": "unmask", "update": "update",
               "delete": "delete", "share": "share", "list": "list"}
CATEGORY = {"customer": "identity", "address": "contact", "order": "order", "payment": "property",
            "points": "property", "location": "location", "face": "biometric"}


def read_events(log: Path, limit: int) -> list[AccessEvent]:
    decode = msgspec.json.Decoder().decode
    events = []
    with open(log, "rb") as f:
        for line in f:
            if len(events) >= limit:
                break
            r = decode(line)
            op = r["op"]
            res = r.get("res") or {}
            dest = r.get("dest") or {}
            events.append(AccessEvent(
                timestamp=parse_time(r["ts"]), action=OP_ACTION.get(op) or VERB_ACTION[op.split(".")[1]],
                user_id=r["emp"]["id"], user_name=r["emp"].get("name"), source_ip=r.get("ip"),
                resource_type=res.get("type"), resource_id=res.get("id"), resource_store=res.get("store"),
                categories=(CATEGORY[res["type"]],) if res else (), subject_ids=tuple(r.get("subjects", ())),
                record_count=r.get("count", 1), fields=tuple(r.get("fields", ())), masked=r.get("masked"),
                purpose=r.get("purpose"), ticket=r.get("ticket"), destination_partner=dest.get("partner"),
            ))
    return events


def best_rate(run, events: list[AccessEvent], copies: int) -> float:
    """Events/s of the best of `copies` runs, each on fresh copies (enrich works in place)."""
    best = 0.0
    for _ in range(copies):
        batch = [msgspec.structs.replace(e) for e in events]
        start = time.perf_counter()
        run(batch)
        best = max(best, len(batch) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--log", type=Path, help="an access.log from examples/generate.py (default: generate one)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.log is None:
        out = Path(tempfile.mkdtemp(prefix="neo-bench-enrich-"))
        sys.path.insert(0, str(REPO / "examples"))
        from generate import generate  # examples/generate.py, the example log's generator

        generate(out, args.lines, seed=7, start=__import__("datetime").date(2026, 11, 2))
        args.log = out / "access.log"
    directory = load_directory(REPO / "examples" / "directory.yaml", Problems())
    events = read_events(args.log, args.lines)
    key = os.urandom(32)
    join = best_rate(Enricher(directory, Pseudonymiser(key)).join_directory, events, args.runs)
    whole = best_rate(Enricher(directory, Pseudonymiser(key)).enrich, events, args.runs)
    print(json.dumps({"events": len(events), "directory_join_events_per_s": round(join),
                      "enrich_events_per_s": round(whole)}))


if __name__ == "__main__":
    main()
