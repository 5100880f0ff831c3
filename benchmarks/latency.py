#!/usr/bin/env python3
"""Benchmark: how long a line takes from being written to being committed in the store,
with `neo-auditd run` tailing the file (inotify), at a steady write rate.

    python benchmarks/latency.py [--rate 5000] [--seconds 20] [--alert-percent 1] [--workers N]
                                 [--workdir /var/tmp/neo-auditd-latency]

Every 100 ms the writer appends a burst and notes the time; a watcher polls the store
and, when the committed event count passes a burst's last line, records the delay.
Prints events/s sustained and latency percentiles (p50, p90, p99, max).

With `--alert-percent P`, P % of the lines (evenly spread) are face-data reads that the
shipped rule `biometric_data_access` alerts on, one alert each; the watcher also
records, per burst holding such lines, the delay from the append to the moment the
store holds all their alerts (append -> alert committed). The other lines never alert.
`--workers N` is passed to `neo-auditd run`; with more than one, the writing starts once
the daemon says its workers are ready (until then it prepares the batches itself, and
the figures would be those of its start). The daemon's log is kept in the workdir.

With `--directory-employees N --directory-every S`, the HR directory holds N more
employees (the example's and N generated ones) and is rewritten every S seconds while
the lines are written, as an HR export lands: the latencies then include the daemon
reloading it (and its workers with it), and the result counts the reloads.

With `--sighup-every S`, the daemon is sent SIGHUP every S seconds while the lines are
written, as an operator or a deployment tool does after changing a rule: the latencies
then include reloading the whole configuration (with the directory of
`--directory-employees`), and the result counts the reloads the daemon logged.
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


ALERT_LINE = ('{{"ts":"2026-11-02T10:00:00.{ms:03d}+08:00","app":"crm","host":"crm-web-01","req":"r-{n:08d}",'
              '"emp":{{"id":"E10002","name":"x"}},"ip":"10.20.1.5","op":"face.view",'
              '"res":{{"type":"face","id":"F{n:09d}","store":"S011"}},"subjects":["C{c:08d}"],"count":1,'
              '"fields":["face"],"masked":false,"result":"ok"}}\n')
ALERT_RULE = "biometric_data_access"


def write_directory(path: Path, extra: int, version: int) -> None:
    """The example directory with `extra` more clerks (E2xxxxxx); `version` changes one name."""
    import yaml

    doc = yaml.safe_load((REPO / "examples" / "directory.yaml").read_text(encoding="utf-8"))
    model = next(e for e in doc["employees"] if e["id"] == "E10002")
    doc["employees"] += [dict(model, id=f"E2{n:06d}", name=f"clerk {n}") for n in range(extra)]
    doc["employees"][-1]["name"] = f"clerk v{version}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.dump(doc, Dumper=yaml.CSafeDumper, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)  # as an export lands: whole, never half-written


def setup(workdir: Path, directory: Path | None = None) -> Path:
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "logs").mkdir(parents=True)
    create_key_file(workdir / "pseudonym.key")
    config = workdir / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n    poll_interval_s: 0.5\n"
        "pseudonym:\n  key_file: pseudonym.key\n"
        f"directory:\n  path: {directory or REPO / 'examples' / 'directory.yaml'}\n  reload_check_s: 1\n"
        f"rules:\n  paths: [{REPO / 'examples' / 'rules.d'}]\n"
        "pipeline: {batch_records: 5000}\n"
        "ops:\n  metrics: {enabled: false}\n"
    )
    (workdir / "logs" / "access.log").touch()
    return config


def committed(db: Path) -> int:
    return counts(db)[0]


def counts(db: Path) -> tuple[int, int]:
    """Events committed, and alerts of the alerting lines' rule committed."""
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            events = conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_segments").fetchone()[0]
            alerts = conn.execute("SELECT COUNT(*) FROM alerts WHERE rule_id = ?", (ALERT_RULE,)).fetchone()[0]
            return events, alerts
    except sqlite3.OperationalError:
        return 0, 0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=5000, help="lines per second written")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/neo-auditd-latency"))
    parser.add_argument("--alert-percent", type=float, default=0.0,
                        help="share of lines that alert (0: none, as before)")
    parser.add_argument("--workers", type=int, default=None, help="passed to neo-auditd run")
    parser.add_argument("--directory-employees", type=int, default=0,
                        help="employees added to the example directory (e.g. 10000)")
    parser.add_argument("--directory-every", type=float, default=0.0,
                        help="rewrite the directory every this many seconds while writing (0: never)")
    parser.add_argument("--sighup-every", type=float, default=0.0,
                        help="send the daemon SIGHUP every this many seconds while writing (0: never)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    every = round(100 / args.alert_percent) if args.alert_percent > 0 else 0  # every n-th line alerts

    directory = None
    if args.directory_employees or args.directory_every:
        args.workdir.mkdir(parents=True, exist_ok=True)
        directory = args.workdir.parent / f"{args.workdir.name}-directory.yaml"
        write_directory(directory, args.directory_employees, 0)
    config = setup(args.workdir, directory)
    db = args.workdir / "state" / "neo-auditd.db"
    neo = shutil.which("neo-auditd") or str(Path(sys.executable).with_name("neo-auditd"))
    command = [neo, "run", "-c", str(config)] + (["--workers", str(args.workers)] if args.workers else [])
    daemon_log = args.workdir / "daemon.log"
    daemon = subprocess.Popen(command, stdout=daemon_log.open("wb"), stderr=subprocess.STDOUT)
    while committed(db) == 0 and not db.exists():
        time.sleep(0.05)
    deadline = time.monotonic() + 120
    while args.workers and args.workers > 1 and b'"workers ready"' not in daemon_log.read_bytes():
        if time.monotonic() > deadline or daemon.poll() is not None:
            sys.exit(f"the daemon's workers did not get ready: see {daemon_log}")
        time.sleep(0.1)
    time.sleep(1.0)

    bursts: list[tuple[int, float, int]] = []  # (lines written so far, when, alerting lines so far)
    delays: list[float] = []
    alert_delays: list[float] = []
    done = threading.Event()

    def watch() -> None:
        seen = alerted = 0
        patience = None  # after the writer stopped: how long to wait for the last alerts
        while not done.is_set() or seen < len(bursts) or (alerted < len(bursts) and time.monotonic() < patience):
            if done.is_set() and patience is None:
                patience = time.monotonic() + 30
            count, alerts = counts(db)
            now = time.monotonic()
            while seen < len(bursts) and bursts[seen][0] <= count:
                delays.append(now - bursts[seen][1])
                seen += 1
            while alerted < len(bursts) and bursts[alerted][2] <= alerts:
                if bursts[alerted][2] > (bursts[alerted - 1][2] if alerted else 0):  # the burst had alerting lines
                    alert_delays.append(now - bursts[alerted][1])
                alerted += 1
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    per_burst = max(1, args.rate // 10)
    written, alerting, started = 0, 0, time.monotonic()
    rewrites, next_rewrite = 0, started + args.directory_every if args.directory_every else None
    sighups, next_sighup = 0, started + args.sighup_every if args.sighup_every else None
    with open(args.workdir / "logs" / "access.log", "a") as fh:
        while time.monotonic() - started < args.seconds:
            numbers = range(written, written + per_burst)
            alerting += sum(1 for n in numbers if every and n % every == every - 1)
            fh.write("".join((ALERT_LINE if every and n % every == every - 1 else LINE).format(
                ms=n % 1000, n=n, c=n % 50000) for n in numbers))
            fh.flush()
            written += per_burst
            bursts.append((written, time.monotonic(), alerting))
            if next_rewrite is not None and time.monotonic() >= next_rewrite:
                rewrites += 1
                write_directory(directory, args.directory_employees, rewrites)
                next_rewrite += args.directory_every
            if next_sighup is not None and time.monotonic() >= next_sighup:
                sighups += 1
                daemon.send_signal(signal.SIGHUP)
                next_sighup += args.sighup_every
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
    if directory is not None:
        reloads = daemon_log.read_bytes().count(b'"directory reloaded"')
        result["directory"] = {"employees": args.directory_employees, "rewrites": rewrites, "reloads": reloads}
    if sighups:
        result["sighup"] = {"sent": sighups, "reloads": daemon_log.read_bytes().count(b'"message":"reloaded"')}
    if every:
        alert_ms = [d * 1000 for d in alert_delays]
        result["alerting_lines"] = alerting
        result["alert_latency_ms"] = {"alerts": counts(db)[1], "bursts_timed": len(alert_ms)}
        if alert_ms:
            result["alert_latency_ms"].update({
                "p50": round(percentile(alert_ms, 50), 1), "p90": round(percentile(alert_ms, 90), 1),
                "p99": round(percentile(alert_ms, 99), 1), "max": round(max(alert_ms), 1)})
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lat = result["latency_ms"]
        print(f"neo-auditd run: {written:,} lines at {args.rate:,}/s for {result['seconds']} s, "
              f"{result['events_per_second']:,} events/s committed; write-to-commit latency "
              f"p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
        if directory is not None:
            d = result["directory"]
            print(f"  directory of {d['employees']:,} more employees rewritten {d['rewrites']} times, "
                  f"reloaded {d['reloads']} times")
        if sighups:
            h = result["sighup"]
            print(f"  SIGHUP sent {h['sent']} times, configuration reloaded {h['reloads']} times")
        if every:
            a = result["alert_latency_ms"]
            print(f"  {alerting:,} alerting lines, {a['alerts']:,} alerts; write-to-alert latency "
                  f"p50 {a.get('p50')} ms, p90 {a.get('p90')} ms, p99 {a.get('p99')} ms, max {a.get('max')} ms")


if __name__ == "__main__":
    main()
