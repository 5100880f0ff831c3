#!/usr/bin/env python3
"""Benchmark: decode + normalise of a neo-crm log on one core (records/s).

    python benchmarks/decode.py [LOG] [--lines 200000] [--batch 20000] [--repeat 3]

Without LOG, examples/generate.py writes one. Prints records/s (CPU time of this
process, best of --repeat), each batch taken in the pipeline's chunks, of the chunk
path (what the daemon uses: decode.columnar), of the typed JSON path record by record
(where a chunk with an unusual record goes), of the generic path (the reference
semantics), and of msgspec decoding to dicts alone, as a yardstick of the machine:
compare ratios across machines, not raw figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402

from auditd.config.located import Problems  # noqa: E402
from auditd.decode import Normaliser, load_format  # noqa: E402
from auditd.pipeline import CHUNK_RECORDS  # noqa: E402
from auditd.sources.base import Batch, Checkpoint  # noqa: E402


def generated_log(lines: int) -> Path:
    out = Path(tempfile.mkdtemp(prefix="neo-bench-decode-"))
    subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--out", str(out),
                    "--lines", str(lines), "--seed", "1", "--start", "2026-11-02"], check=True, capture_output=True)
    return out / "access.log"


def batches(lines: list[bytes], size: int) -> list[Batch]:
    out, offset = [], 0
    for start in range(0, len(lines), size):
        chunk = lines[start:start + size]
        offsets = []
        for line in chunk:
            offsets.append(offset)
            offset += len(line) + 1
        out.append(Batch("bench", "/var/log/neo-crm/access.log", "f" * 40, chunk, offsets,
                         Checkpoint("bench", "f" * 40, "/var/log/neo-crm/access.log", offset)))
    return out


def rate(normaliser: Normaliser, work: list[Batch], repeat: int) -> tuple[float, int, int]:
    best = 0.0
    for _ in range(repeat):
        records = events = quarantined = 0
        start = time.process_time()
        for batch in work:
            for at in range(0, len(batch), CHUNK_RECORDS):
                ev, q, _ = normaliser.process(batch, "bench", start=at, stop=at + CHUNK_RECORDS)
                events += len(ev)
                quarantined += len(q)
            records += len(batch)
        best = max(best, records / (time.process_time() - start))
        del ev
        gc.collect()
    return best, events, quarantined


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("log", nargs="?")
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    log = Path(args.log) if args.log else generated_log(args.lines)
    lines = log.read_bytes().splitlines()
    problems = Problems()
    fmt = load_format("neo-crm", problems)
    problems.raise_if_any()
    work = batches(lines, args.batch)
    chunks, events, quarantined = rate(Normaliser(fmt), work, args.repeat)
    typed, _, _ = rate(Normaliser(dataclasses.replace(fmt, events=None)), work, args.repeat)
    generic_fmt = dataclasses.replace(fmt, facts=fmt.generic_facts, typed=False, events=None)
    generic, _, _ = rate(Normaliser(generic_fmt), work, args.repeat)
    decode = msgspec.json.Decoder().decode
    start = time.process_time()
    for line in lines:
        decode(line)
    yardstick = len(lines) / (time.process_time() - start)
    print(f"{len(lines):,} records, {events:,} events, {quarantined:,} quarantined")
    print(f"chunk path   : {chunks:>10,.0f} records/s")
    print(f"typed path   : {typed:>10,.0f} records/s (record by record)")
    print(f"generic path : {generic:>10,.0f} records/s")
    print(f"yardstick    : {yardstick:>10,.0f} records/s msgspec.json decode to dict, nothing else")


if __name__ == "__main__":
    main()
