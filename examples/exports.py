#!/usr/bin/env python3
"""Write neo-crm's export manifest for a generated access log (the example's stand-in
for the export module of the source system).

    python examples/exports.py --log examples/out/logs/access.log --out examples/out/logs/exports.jsonl

neo-crm lists the customer ids of a result only up to 50 records (docs/example-access-
log.md); for larger exports its export module writes a manifest, one JSON line per
export: {"req": <the access log's request id>, "customers": [<customer ids>]}.
neo-auditd reads it (respond.export_manifests) to find whom an export carried, and
pseudonymises the ids as it reads them. In this example an export of N records carried
customers C00000001 to C<N>, whatever its store scope; the contact list in
contacts.csv covers the first 300 of them, so a bulk export has people the daemon can
reach one by one and many it cannot (they are counted, and the public announcement is
for them). The same log always gives the same manifest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LISTED = 50  # the app lists the customer ids of results up to this size only


def manifest_lines(log: Path):
    with log.open("r", encoding="utf-8") as lines:
        for line in lines:
            if '.export"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            count = int(record.get("count") or 0)
            if not str(record.get("op", "")).endswith(".export") or count <= len(record.get("subjects") or ()):
                continue
            if count <= LISTED:
                continue
            yield {"req": record["req"], "customers": [f"C{n:08d}" for n in range(1, count + 1)]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, required=True, help="the generated access.log")
    parser.add_argument("--out", type=Path, required=True, help="the manifest to write (JSON lines)")
    args = parser.parse_args(argv)
    written = 0
    partial = args.out.with_name(args.out.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for entry in manifest_lines(args.log):
            out.write(json.dumps(entry, separators=(",", ":")) + "\n")
            written += 1
    partial.replace(args.out)
    print(f"exports: {written} manifest line(s) -> {args.out}")


if __name__ == "__main__":
    main()
