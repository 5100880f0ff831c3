#!/usr/bin/env python3
"""Benchmark: how long a line takes from being written to being committed in the store,
with `neo-auditd run` tailing the file (inotify), at a steady write rate.

    python benchmarks/latency.py [--rate 5000] [--seconds 20] [--workdir /var/tmp/neo-auditd-latency]

Every 100 ms the writer appends a burst and notes the time; a watcher polls the store
and, when the committed event count passes a burst's last line, records the delay.
Prints events/s sustained and latency percentiles (p50, p90, p99, max).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from auditd.enrich.pseudonym import create_key_file

REPO = Path(__file__).resolve().parents[1]
LINE = ('{{"ts":"2026-11-02T10:00:00.{ms:03d}+08:00","app":"crm","host":"crm-web-01","req":"r-{n:08d}",'
        '"emp":{{"id":"E10002","name":"x"}},"ip":"10.20.1.5","op":"order.view",'
        '"res":{{"type":"order","id":"O{n:09d}","store":"S011"}},"subjects":["C{c:08d}"],"count":1,'
        '"fields":["items"],"masked":true,"result":"ok"}}\n')


def setup(workdir: Path) -> Path:
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "logs").mkdir(parents=True)
    create_key_file(workdir / "pseudonym.key")
    config = workdir / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n    poll_interval_s: 0.5\n"
        "pseudonym:\n  key_file: pseudonym.key\n"
        f"directory:\n  path: {REPO / 'examples' / 'directory.yaml'}\n"
        f"rules:\n  paths: [{REPO / 'examples' / 'rules.d'}]\n"
        "pipeline: {batch_records: 5000}\n"
        "ops:\n  metrics: {enabled: false}\n"
    )
    (workdir / "logs" / "access.log").touch()
    return config


def committed(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_segments").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=5000, help="lines per second written")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/neo-auditd-latency"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = setup(args.workdir)
    db = args.workdir / "state" / "neo-auditd.db"
    neo = shutil.which("neo-auditd") or str(Path(sys.executable).with_name("neo-auditd"))
    daemon = subprocess.Popen([neo, "run", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    while committed(db) == 0 and not db.exists():
        time.sleep(0.05)
    time.sleep(1.0)

    bursts: list[tuple[int, float]] = []  # (lines written so far, when)
    delays: list[float] = []
    done = threading.Event()

    def watch() -> None:
        seen = 0
        while not done.is_set() or seen < len(bursts):
            count = committed(db)
            now = time.monotonic()
            while seen < len(bursts) and bursts[seen][0] <= count:
                delays.append(now - bursts[seen][1])
                seen += 1
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    per_burst = max(1, args.rate // 10)
    written, started = 0, time.monotonic()
    with open(args.workdir / "logs" / "access.log", "a") as fh:
        while time.monotonic() - started < args.seconds:
            fh.write("".join(LINE.format(ms=(written + i) % 1000, n=written + i, c=(written + i) % 50000)
                             for i in range(per_burst)))
            fh.flush()
            written += per_burst
            bursts.append((written, time.monotonic()))
            time.sleep(max(0.0, started + len(bursts) * 0.1 - time.monotonic()))
    done.set()
    watcher.join(timeout=60)
    elapsed = time.monotonic() - started
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=60)

    ms = [d * 1000 for d in delays]
    result = {"lines": written, "seconds": round(elapsed, 1), "events_per_second": round(committed(db) / elapsed),
              "latency_ms": {"p50": round(percentile(ms, 50), 1), "p90": round(percentile(ms, 90), 1),
                             "p99": round(percentile(ms, 99), 1), "max": round(max(ms), 1)}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lat = result["latency_ms"]
        print(f"neo-auditd run: {written:,} lines at {args.rate:,}/s for {result['seconds']} s, "
              f"{result['events_per_second']:,} events/s committed; write-to-commit latency "
              f"p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")


if __name__ == "__main__":
    main()
