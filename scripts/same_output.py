#!/usr/bin/env python3
"""Same output with 1 and N workers: replay the example log twice, into two state
directories, and compare what the two runs left.

    python scripts/same_output.py [--lines 20000] [--workers 2] [--batch-records 2000] [--json]

Compared: the `replay --json` summaries (less their timings), and from each store the
alerts, incidents, their timelines and subjects, the events as stored, the evidence,
quarantined records, rule state and checkpoints, less what is wall-clock time (when an
incident was discovered or updated, when a row was written, `*_at` keys in a timeline
entry's data) or derived from it (a timeline's hash chain). Exit 0 when identical, 1 with the differences otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# table -> (columns compared, order); wall-clock columns are left out
TABLES = {
    "alerts": ("alert_id, incident_id, rule_id, severity, timestamp, doc", "alert_id"),
    "incidents": ("incident_id, group_key, actor, title, tier, auto_tier, status, severity, first_seen, last_seen, "
                  "alert_count, affected_count, max_record_count, sensitive, band, rules, categories, timeline_seq",
                  "incident_id"),
    "incident_timeline": ("incident_id, seq, kind, who, data", "incident_id, seq"),
    "incident_subjects": ("*", "1, 2"),
    "event_segments": ("source, first_ts, last_ts, count, doc", "seq"),
    "evidence": ("event_id, ts, doc", "event_id"),
    "quarantine": ("source, path, offset, reason, length, record", "path, offset"),
    "detector_state": ("rule_id, rule_hash, key, touched, value", "rule_id, rule_hash, key"),
    "checkpoints": ("source, fingerprint, path, offset, tail_hash, cursor", "source, fingerprint"),
}
SUMMARY_TIMINGS = ("seconds", "events_per_second", "seconds_with_shipping")


def store_digest(db: Path) -> dict[str, dict]:
    """Per table: its rows' count and a SHA-256 of them in a fixed order."""
    out = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        for table, (columns, order) in TABLES.items():
            try:
                rows = conn.execute(f"SELECT {columns} FROM {table} ORDER BY {order}").fetchall()  # noqa: S608
            except sqlite3.OperationalError as exc:  # a column an older schema lacks
                out[table] = {"error": str(exc)}
                continue
            if table == "incident_timeline":  # an entry's data may carry the wall clock (discovered_at)
                rows = [(*r[:4], {k: v for k, v in json.loads(r[4]).items() if not k.endswith("_at")}) for r in rows]
            digest = hashlib.sha256(repr(rows).encode()).hexdigest()
            out[table] = {"rows": len(rows), "sha256": digest}
    return out


def example(workdir: Path, lines: int, batch_records: int) -> tuple[Path, Path]:
    """The example log and a config with the shipped rules and the example directory."""
    log = workdir / "data" / "access.log"
    if not log.exists():
        subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--out", str(workdir / "data"),
                        "--lines", str(lines), "--seed", "7"], check=True, capture_output=True)
    key = workdir / "pseudonym.key"
    if not key.exists():
        subprocess.run([sys.executable, "-m", "auditd.cli", "keygen", str(key)], check=True, capture_output=True)
    config = workdir / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [data/access.log]\n    format: neo-crm\n"
        "pseudonym:\n  key_file: pseudonym.key\n"
        f"directory:\n  path: {REPO / 'examples' / 'directory.yaml'}\n"
        f"pipeline: {{batch_records: {batch_records}}}\n"
        "ops:\n  metrics: {enabled: false}\n")
    return config, log


def replay(config: Path, log: Path, state: Path, workers: int) -> dict:
    shutil.rmtree(state, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "auditd.cli", "replay", "-c", str(config), "--state-dir", str(state),
                           "--workers", str(workers), "--json", str(log)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"replay --workers {workers} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    return {k: v for k, v in summary.items() if k not in SUMMARY_TIMINGS}


def differences(a: dict, b: dict) -> list[str]:
    return [f"{key}: {a.get(key)!r} != {b.get(key)!r}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-records", type=int, default=2000, help="small batches: several in flight")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="neo-same-output-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        config, log = example(workdir, args.lines, args.batch_records)
        runs = {}
        for n in (1, args.workers):
            state = workdir / f"state-{n}"
            summary = replay(config, log, state, n)
            runs[n] = {"summary": summary, "store": store_digest(state / "neo-auditd.db")}
        one, many = runs[1], runs[args.workers]
        found = differences(one["summary"], many["summary"]) + differences(one["store"], many["store"])
        result = {"lines": args.lines, "workers": args.workers, "identical": not found, "differences": found,
                  "alerts": one["summary"]["alerts"], "incidents": one["summary"]["incidents"],
                  "tables": one["store"]}
    if args.json:
        print(json.dumps(result, indent=2))
    elif found:
        print(f"DIFFERENT with 1 and {args.workers} workers:\n  " + "\n  ".join(found))
    else:
        rows = ", ".join(f"{table} {d.get('rows')}" for table, d in result["tables"].items())
        print(f"identical with 1 and {args.workers} workers: {result['alerts']} alerts, {result['incidents']} "
              f"incidents; rows: {rows}")
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
