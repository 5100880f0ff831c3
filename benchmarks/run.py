#!/usr/bin/env python3
"""The one benchmark command: every throughput figure of issue 19 from one run.

    python benchmarks/run.py [--lines 1000000] [--rounds 5] [--cpu 0] [--workers N]
                             [--rules shipped|bench|stateful] [--latency-seconds 20] [--json]

Each round runs, in turn and on the same input (the example log, `examples/generate.py
--seed 7`):

1. `neo-auditd replay` with one worker, pinned to `--cpu`;
2. `neo-auditd replay --workers N` on every core (only when the daemon has workers);
3. `fail2ban-regex` with one regex over the same file, pinned (Debian's fail2ban:
   `apt-get install fail2ban`; without it that column is left out, with a note);
4. `benchmarks/floor.py`, pinned: the frozen per-event floor of any Python pipeline.

Ratios are taken within a round (neo-auditd / fail2ban-regex, neo-auditd / floor, N
workers / 1 worker), so that a machine whose speed drifts still gives meaningful
ratios; every figure is printed as min / median / max over the rounds. Peak RSS is the
largest of neo-auditd's own peaks (wait4). After the rounds, `benchmarks/latency.py`
runs `neo-auditd run` once at `--rate` lines/s with 1 % alerting lines and gives the
p99 of append -> alert committed.

The rules (`--rules`): `shipped` (default) is the shipped rule files, the behaviour
rules among them (what issue 19's acceptance asks for); `bench` the 50 match rules of
benchmarks/replay.py; `stateful` those 50 plus its 20 stateful rules.

Figures are for a quiet machine: run it pinned and alone. `--lines 2000 --rounds 1
--latency-seconds 2` is the smoke run the test suite makes (it asserts no figure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from replay import F2B_REGEX, pin, prepare, timed  # noqa: E402

RULE_CONFIGS = {"bench": "config.yaml", "stateful": "config-stateful.yaml", "shipped": "config-shipped.yaml"}


def neo_command() -> str:
    return shutil.which("neo-auditd") or str(Path(sys.executable).with_name("neo-auditd"))


def has_workers(neo: str, command: str = "replay") -> bool:
    """Whether this neo-auditd's command takes --workers (issue 19's parallel pipeline)."""
    out = subprocess.run([neo, command, "--help"], capture_output=True, text=True, check=False).stdout
    return "--workers" in out


def spread(values: list[float], digits: int = 2) -> dict[str, float]:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def shipped_config(workdir: Path) -> Path:
    """The benchmark's config with the shipped rules (and only them)."""
    base = (workdir / "config.yaml").read_text()
    config = workdir / RULE_CONFIGS["shipped"]
    config.write_text(base.replace("rules:\n  include_shipped: false\n  paths: [rules]\n",
                                   "rules:\n  include_shipped: true\n"))
    return config


def replay_once(neo: str, config: Path, log: Path, workdir: Path, cpu: int | None,
                workers: int | None) -> tuple[float, int, dict]:
    shutil.rmtree(workdir / "state", ignore_errors=True)
    cmd = [neo, "replay", "-c", str(config), "--json", str(log)]
    if workers is not None:
        cmd[2:2] = ["--workers", str(workers)]
    seconds, rss_kib, proc = timed(pin(cpu, cmd) if cpu is not None else cmd)
    summary = json.loads(proc.stdout)
    return summary["events"] / seconds, rss_kib, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=0, help="the core the one-core runs are pinned to")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="workers of the parallel run (default: the machine's cores)")
    parser.add_argument("--rules", choices=sorted(RULE_CONFIGS), default="shipped")
    parser.add_argument("--rate", type=int, default=20_000, help="lines/s of the latency run")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="0: no latency run")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/neo-auditd-bench"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    _, log = prepare(args.workdir, args.lines)
    shipped_config(args.workdir)
    config = args.workdir / RULE_CONFIGS[args.rules]
    neo = neo_command()
    parallel = has_workers(neo) and args.workers > 1
    f2b = shutil.which("fail2ban-regex")
    floor_cmd = [sys.executable, str(HERE / "floor.py"), "--lines", str(args.lines), "--workdir",
                 str(args.workdir), "--json"]

    rows = []
    for _ in range(args.rounds):
        row: dict = {}
        row["one"], row["rss_one"], summary = replay_once(
            neo, config, log, args.workdir, args.cpu, 1 if parallel else None)
        row["alerts"] = summary["alerts"]
        if parallel:
            row["many"], row["rss_many"], _ = replay_once(neo, config, log, args.workdir, None, args.workers)
        if f2b:
            f2b_seconds = timed(pin(args.cpu, [f2b, "--print-no-missed", str(log), F2B_REGEX]))[0]
            row["f2b"] = args.lines / f2b_seconds
        row["floor"] = json.loads(timed(pin(args.cpu, floor_cmd))[2].stdout)["events_per_second"]
        rows.append(row)

    result: dict = {"lines": args.lines, "rounds": args.rounds, "rules": args.rules, "cpu": args.cpu,
                    "events_per_second": {"neo_auditd_1_worker": spread([r["one"] for r in rows], 0)},
                    "ratios": {}, "notes": []}
    eps, ratios = result["events_per_second"], result["ratios"]
    if parallel:
        eps[f"neo_auditd_{args.workers}_workers"] = spread([r["many"] for r in rows], 0)
        ratios[f"{args.workers}_workers_over_1"] = spread([r["many"] / r["one"] for r in rows])
    else:
        result["notes"].append("this neo-auditd has no --workers (or --workers 1): no parallel figure")
    if f2b:
        eps["fail2ban_regex"] = spread([r["f2b"] for r in rows], 0)
        ratios["1_worker_over_fail2ban"] = spread([r["one"] / r["f2b"] for r in rows])
    else:
        result["notes"].append("fail2ban-regex not found (apt-get install fail2ban): no comparison")
    eps["floor"] = spread([r["floor"] for r in rows], 0)
    ratios["1_worker_over_floor"] = spread([r["one"] / r["floor"] for r in rows])
    result["peak_rss_mib"] = {"1_worker": round(max(r["rss_one"] for r in rows) / 1024, 1)}
    if parallel:
        result["peak_rss_mib"][f"{args.workers}_workers"] = round(max(r["rss_many"] for r in rows) / 1024, 1)
    result["alerts"] = rows[-1]["alerts"]

    if args.latency_seconds > 0:
        cmd = [sys.executable, str(HERE / "latency.py"), "--rate", str(args.rate), "--seconds",
               str(args.latency_seconds), "--alert-percent", "1", "--json",
               "--workdir", str(args.workdir / "latency")]
        if parallel and has_workers(neo, "run"):
            cmd += ["--workers", str(args.workers)]
        else:
            result["notes"].append("latency measured with one process: `run` has no --workers yet")
        result["latency"] = json.loads(timed(cmd)[2].stdout)

    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.lines:,} lines, {args.rules} rules, {args.rounds} paired rounds (min / median / max); "
          f"one-core runs on cpu {args.cpu}")
    for name, s in eps.items():
        print(f"  {name:28s} {s['min']:>10,.0f} {s['median']:>10,.0f} {s['max']:>10,.0f} events/s")
    for name, s in ratios.items():
        print(f"  {name:28s} {s['min']:>10.2f} {s['median']:>10.2f} {s['max']:>10.2f}")
    print(f"  peak RSS (MiB): {result['peak_rss_mib']}")
    if "latency" in result:
        lat = result["latency"]
        alert = lat.get("alert_latency_ms") or {}
        print(f"  live at {args.rate:,} lines/s: append->commit p99 {lat['latency_ms']['p99']} ms, "
              f"append->alert p99 {alert.get('p99', 'n/a')} ms ({alert.get('alerts', 0)} alerts timed)")
    for note in result["notes"]:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
