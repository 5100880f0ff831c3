#!/usr/bin/env python3
"""Benchmark: the file source alone — FileTailer (polling), ReplaySource and LineFramer
on a 1,000,000-line file. Prints lines per second for each.

    python benchmarks/sources.py
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from auditd.sources.framing import LineFramer
from auditd.sources.replay import ReplaySource
from auditd.sources.settings import FileSourceSettings
from auditd.sources.tail import FileTailer

LINE = (b'{"ts":"2026-11-02T10:00:00.000+08:00","app":"crm","host":"crm-web-01","req":"r-00000001",'
        b'"emp":{"id":"E10001","name":"x"},"ip":"10.20.1.5","op":"order.view"}\n')
LINES = 1_000_000


def write_log(folder: Path) -> Path:
    log = folder / "access.log"
    with open(log, "wb") as fh:
        block = LINE * 10_000
        for _ in range(LINES // 10_000):
            fh.write(block)
    return log


def bench_tailer(log: Path) -> None:
    settings = FileSourceSettings(name="bench", paths=(log,), format="neo-crm", use_inotify=False)
    tailer = FileTailer(settings, LineFramer(), {}, first_start=True)
    start, got = time.perf_counter(), 0
    while got < LINES:
        got += sum(len(batch) for batch in tailer.poll(20_000))
    seconds = time.perf_counter() - start
    tailer.stop()
    size_mb = log.stat().st_size / 1e6
    print(f"FileTailer: {LINES:,} lines ({size_mb:.0f} MB) in {seconds:.2f} s = {LINES / seconds / 1e6:.2f} M lines/s")


def bench_replay(log: Path) -> None:
    reader = ReplaySource("bench", [log], LineFramer())
    start = time.perf_counter()
    got = sum(len(batch) for batch in reader.batches(20_000))
    seconds = time.perf_counter() - start
    print(f"ReplaySource: {got:,} lines in {seconds:.2f} s = {got / seconds / 1e6:.2f} M lines/s")


def bench_framer() -> None:
    framer, chunk = LineFramer(), LINE * (1024 * 1024 // len(LINE))
    best = 0.0
    for _ in range(5):
        start, lines = time.perf_counter(), 0
        for _ in range(100):
            lines += len(framer.split(chunk, 0)[0])
        best = max(best, lines / (time.perf_counter() - start))
    print(f"LineFramer.split on 1 MiB chunks of {len(LINE)}-byte lines: {best / 1e6:.1f} M lines/s")


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="neo-bench-sources-"))
    try:
        log = write_log(folder)
        bench_tailer(log)
        bench_replay(log)
        bench_framer()
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
