#!/usr/bin/env python3
"""Benchmark: `neo-auditd replay` of the example log with 50 match rules, on one core,
against `fail2ban-regex` (Debian's fail2ban) with one regex over the same file.

Prints events/s, the wall time, peak RSS and the ratio to fail2ban-regex. Usage:

    python benchmarks/replay.py --lines 1000000 [--rounds 3] [--cpu 0] [--workdir /var/tmp/neo-bench]

Needs `taskset` (util-linux) and, for the comparison, `fail2ban-regex`
(`apt-get install fail2ban`); without it only neo-auditd's figures are printed.

With `--elastic URL` the same replay runs a second time shipping to that
Elasticsearch server, and the cost of shipping is printed (the replay waits until
every event is in the cluster).

With `--stateful` each round replays twice, alternating on the same core: the 50 match
rules alone, then with 20 stateful rules added (`twenty_stateful_rules`: baselines,
first-seen, off-hours, thresholds and sequences of the shapes rules/behaviour.yaml
ships, each keeping its state in the store); the median of the rounds' throughput
ratios is printed (the acceptance asks for >= 85 %).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from auditd.enrich.pseudonym import create_key_file

REPO = Path(__file__).resolve().parents[1]
ACTIONS = ["read", "search", "list", "export", "print", "update", "delete", "unmask", "share", "login"]
CATEGORIES = ["identity", "contact", "property", "location", "biometric", "order"]
# fail2ban's one regex: roughly what a single neo-auditd rule tests (an export of customers)
F2B_REGEX = r'"ts":"<F-TIME>[^"]+</F-TIME>".*"ip":"<HOST>".*"op":"customer\.export"'


def fifty_rules() -> str:
    """50 match rules of the shapes operators write, spread over actions and fields."""
    out = []
    for i in range(50):
        action = ACTIONS[i % len(ACTIONS)]
        category = CATEGORIES[i % len(CATEGORIES)]
        shape = i % 5
        if shape == 0:
            cond = f"event.action = {action} and neo.data.record_count > {100 + i}"
        elif shape == 1:
            cond = f"event.action = {action} and neo.data.categories in ({category}) and neo.data.masked = false"
        elif shape == 2:
            cond = f"event.action in ({action}, export) and not source.ip cidr '10.0.0.0/8'"
        elif shape == 3:
            cond = f"event.action = {action} and service.name = pos and host.name startswith 'crm-web-9'"
        else:
            cond = f"neo.data.categories in ({category}) and user.id regex '^E9{i:02d}'"
        out.append(
            f"- rule: bench-{i:02d}\n  desc: benchmark rule {i}\n  condition: {cond}\n"
            f"  severity: low\n  tags: [sandbox, benchmark]\n"
            f"  samples:\n    match: []\n    no_match: []\n"
        )
    return "\n".join(out)


STATEFUL_MACROS = """- list: bench_data_actions
  items: [read, search, list, export, download, print, unmask, share]
- macro: bench_access
  condition: event.action in bench_data_actions and event.outcome = success
"""


def twenty_stateful_rules() -> str:
    """20 stateful rules: the shapes of the shipped behaviour rules, on the fields the
    example log has; a few look at every access, most at a kind of action."""
    specs = [
        ("baseline", "{measure: records, bucket: 1h, min_days: 5, floor: 100}", "bench_access"),
        ("baseline", "{measure: events, bucket: 1h, min_days: 5, floor: 40}", "bench_access"),
        ("baseline", "{measure: events, bucket: 1d, min_days: 3, floor: 10}", "event.action in (export, download)"),
        ("first_seen", "{field: neo.data.categories, learning: 3d, group_by: [user.id, user.roles]}",
         "bench_access"),
        ("first_seen", "{field: source.ip, transform: subnet, learning: 7d}", "bench_access"),
        ("first_seen", "{field: neo.destination.partner, learning: 7d}", "event.action = share"),
        ("off_hours", "{shift: true, realert: 4h}", "bench_access and neo.actor.off_shift = true"),
        ("off_hours", "{shift: false, rest_days: true, realert: 4h}", "event.action in (export, download)"),
        ("threshold", "{gte: 100, distinct: neo.data.subject_ids, timespan: 10m}", "event.action = read"),
        ("threshold", "{gte: 12, distinct: neo.resource.seq_offset, partition_by: neo.resource.seq_block, "
                      "timespan: 30m}", "bench_access and neo.resource.seq_block exists"),
        ("threshold", "{gte: 20, distinct: neo.data.subject_ids, timespan: 1h}",
         "bench_access and neo.actor.off_shift = true"),
        ("threshold", "{gte: 20, timespan: 1h}", "event.action in (export, download)"),
        ("threshold", "{gte: 10, timespan: 10m}", "event.outcome = denied"),
        ("threshold", "{gte: 10, distinct: neo.data.subject_ids, timespan: 1h}", "event.action = unmask"),
        ("threshold", "{gte: 5, timespan: 1h}", "event.action = delete"),
        ("threshold", "{gte: 30, timespan: 1h}", "event.action = print"),
        ("threshold", "{gte: 50, timespan: 1d, group_by: [neo.destination.partner]}", "event.action = share"),
        ("sequence", "{timespan: 1h, steps: [{name: refused, where: {event.outcome: denied}, count: 3}, "
                     "{name: export, where: {event.action: export}}]}",
         "event.outcome = denied or event.action = export"),
        ("sequence", "{timespan: 10m, steps: [{name: failed, where: {event.outcome: failure}, count: 5}, "
                     "{name: ok, where: {event.outcome: success}}]}", "event.action = login"),
        ("sequence", "{timespan: 1h, steps: [{name: unmask, where: {event.action: unmask}}, "
                     "{name: export, where: {event.action: export}}]}", "event.action in (unmask, export)"),
    ]
    out = [STATEFUL_MACROS]
    for i, (kind, params, cond) in enumerate(specs):
        out.append(
            f"- rule: stateful-{i:02d}\n  desc: stateful benchmark rule {i}\n  kind: {kind}\n  params: {params}\n"
            f"  condition: {cond}\n  severity: low\n  tags: [sandbox, benchmark]\n"
            f"  samples:\n    match: []\n    no_match: []\n"
        )
    return "\n".join(out)


def prepare(workdir: Path, lines: int, elastic: str | None = None) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    # An installed daemon runs from bytecode that pip compiled at install; a checkout
    # (editable install, PYTHONDONTWRITEBYTECODE) would compile every module at each start.
    compileall.compile_dir(REPO / "auditd", quiet=1)
    log = workdir / "data" / "access.log"
    if not log.exists() or sum(1 for _ in open(log, "rb")) != lines:
        subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--out", str(workdir / "data"),
                        "--lines", str(lines), "--seed", "7"], check=True)
    (workdir / "rules").mkdir(exist_ok=True)
    (workdir / "rules" / "bench.yaml").write_text(fifty_rules())
    (workdir / "rules-stateful").mkdir(exist_ok=True)
    (workdir / "rules-stateful" / "bench.yaml").write_text(fifty_rules())
    (workdir / "rules-stateful" / "stateful.yaml").write_text(twenty_stateful_rules())
    key = workdir / "pseudonym.key"
    if not key.exists():
        create_key_file(key)
    config = workdir / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [data/access.log]\n    format: neo-crm\n"
        "pseudonym:\n  key_file: pseudonym.key\n"
        f"directory:\n  path: {REPO / 'examples' / 'directory.yaml'}\n"
        "rules:\n  include_shipped: false\n  paths: [rules]\n"
        "ops:\n  metrics: {enabled: false}\n"
    )
    (workdir / "config-stateful.yaml").write_text(config.read_text().replace("paths: [rules]",
                                                                              "paths: [rules-stateful]"))
    if elastic:
        stream = f"logs-neo_auditd.bench{os.getpid()}-default"
        shipping = workdir / "config-elastic.yaml"
        shipping.write_text(config.read_text() + f"elastic:\n  hosts: ['{elastic}']\n  events_data_stream: {stream}\n"
                            f"  alerts_index: neo-bench-alerts-{os.getpid()}\n"
                            f"  incidents_index: neo-bench-incidents-{os.getpid()}\n")
        return shipping, log
    return config, log


def timed(cmd: list[str]) -> tuple[float, int, subprocess.CompletedProcess]:
    """Wall seconds and peak RSS (KiB) of one child command: its own peak, from wait4,
    not the high-water mark of every child so far."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(cmd, child.returncode, out.read().decode(), err.read().decode())
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, usage.ru_maxrss, proc


def pin(cpu: int, cmd: list[str]) -> list[str]:
    return (["taskset", "-c", str(cpu)] + cmd) if shutil.which("taskset") else cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/neo-auditd-bench"))
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate neo-auditd and fail2ban-regex this many times; medians are printed "
                             "(this machine's speed drifts by a fifth within minutes)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--elastic", metavar="URL", help="also measure the replay while shipping to this server")
    parser.add_argument("--stateful", action="store_true",
                        help="paired rounds: 50 match rules, then the same with 20 stateful rules added")
    args = parser.parse_args()

    config, log = prepare(args.workdir, args.lines)
    if args.stateful:
        return stateful_rounds(args, config, log)
    neo = shutil.which("neo-auditd") or str(Path(sys.executable).with_name("neo-auditd"))
    f2b = shutil.which("fail2ban-regex")
    rounds = []  # (neo seconds, peak RSS KiB, summary, fail2ban seconds or None), alternating
    for _ in range(args.rounds):
        shutil.rmtree(args.workdir / "state", ignore_errors=True)
        seconds, rss_kib, proc = timed(pin(args.cpu, [neo, "replay", "-c", str(config), "--json", str(log)]))
        f2b_seconds = timed(pin(args.cpu, [f2b, "--print-no-missed", str(log), F2B_REGEX]))[0] if f2b else None
        rounds.append((seconds, rss_kib, json.loads(proc.stdout), f2b_seconds))
    # the median round by neo-auditd's time; its ratio is the median of the rounds'
    seconds, rss_kib, summary, _ = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
    result = {
        "lines": args.lines,
        "rounds": args.rounds,
        "neo_auditd": {
            "wall_seconds": round(seconds, 2),
            "events_per_second": round(summary["events"] / seconds),
            "pipeline_events_per_second": summary["events_per_second"],
            "peak_rss_mib": round(max(r[1] for r in rounds) / 1024, 1),
            "events": summary["events"], "alerts": summary["alerts"], "incidents": summary["incidents"],
            "wall_seconds_each": [round(r[0], 2) for r in rounds],
        },
    }
    if f2b:
        f2b_seconds = statistics.median(r[3] for r in rounds)
        result["fail2ban_regex"] = {"wall_seconds": round(f2b_seconds, 2),
                                    "lines_per_second": round(args.lines / f2b_seconds),
                                    "wall_seconds_each": [round(r[3], 2) for r in rounds]}
        ratios = [r[3] / r[0] for r in rounds]
        result["ratio"] = round(statistics.median(ratios), 2)
        result["ratio_each"] = [round(x, 2) for x in ratios]
    if args.elastic:
        shipping_config, _ = prepare(args.workdir, args.lines, args.elastic)
        shutil.rmtree(args.workdir / "state", ignore_errors=True)
        s_seconds, _, s_proc = timed(pin(args.cpu, [neo, "replay", "-c", str(shipping_config), "--json", str(log)]))
        shipped = json.loads(s_proc.stdout)
        result["with_shipping"] = {
            "wall_seconds": round(s_seconds, 2), "events_per_second": round(shipped["events"] / s_seconds),
            "pipeline_seconds": shipped["seconds"], "until_all_shipped_seconds": shipped["seconds_with_shipping"],
            "shipped_events_per_second": round(shipped["events"] / shipped["seconds_with_shipping"]),
            "not_shipped": shipped["shipped_lag"], "cost": f"{100 * (s_seconds / seconds - 1):.0f} %",
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    n = result["neo_auditd"]
    print(f"neo-auditd replay: {args.lines:,} lines in {n['wall_seconds']} s = {n['events_per_second']:,} events/s "
          f"end to end (pipeline alone {n['pipeline_events_per_second']:,.0f}/s), peak RSS {n['peak_rss_mib']} MiB")
    if f2b:
        fr = result["fail2ban_regex"]
        print(f"fail2ban-regex:    {args.lines:,} lines in {fr['wall_seconds']} s = {fr['lines_per_second']:,} lines/s")
        print(f"ratio: neo-auditd is {result['ratio']}x fail2ban-regex")
    else:
        print("fail2ban-regex not found (apt-get install fail2ban) — no comparison")
    if args.rounds > 1:
        print(f"{args.rounds} rounds (medians above): neo-auditd {n['wall_seconds_each']} s"
              + (f"; fail2ban-regex {fr['wall_seconds_each']} s; ratios {result['ratio_each']}" if f2b else ""))
    if args.elastic:
        w = result["with_shipping"]
        print(f"with shipping:     {w['wall_seconds']} s = {w['events_per_second']:,} events/s end to end, every event "
              f"in Elasticsearch after {w['until_all_shipped_seconds']} s ({w['shipped_events_per_second']:,} "
              f"events/s shipped); cost {w['cost']}")


def stateful_rounds(args, config: Path, log: Path) -> None:
    neo = shutil.which("neo-auditd") or str(Path(sys.executable).with_name("neo-auditd"))
    stateful = config.with_name("config-stateful.yaml")
    pairs = []
    for _ in range(args.rounds):
        row = []
        for cfg in (config, stateful):
            shutil.rmtree(args.workdir / "state", ignore_errors=True)
            seconds, rss_kib, proc = timed(pin(args.cpu, [neo, "replay", "-c", str(cfg), "--json", str(log)]))
            row.append((seconds, rss_kib, json.loads(proc.stdout)))
        pairs.append(row)
    ratios = [b[2]["events"] / b[0] / (a[2]["events"] / a[0]) for a, b in pairs]
    result = {
        "lines": args.lines, "rounds": args.rounds,
        "match_only_events_per_second": [round(a[2]["events"] / a[0]) for a, _ in pairs],
        "with_stateful_events_per_second": [round(b[2]["events"] / b[0]) for _, b in pairs],
        "ratio_each": [round(r, 3) for r in ratios],
        "ratio_median": round(statistics.median(ratios), 3),
        "peak_rss_mib": {"match_only": round(max(a[1] for a, _ in pairs) / 1024, 1),
                         "with_stateful": round(max(b[1] for _, b in pairs) / 1024, 1)},
        "alerts_with_stateful": pairs[-1][1][2]["alerts"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.lines:,} lines, {args.rounds} paired rounds on cpu {args.cpu}:")
    print(f"  50 match rules:               {result['match_only_events_per_second']} events/s")
    print(f"  + 20 stateful rules:          {result['with_stateful_events_per_second']} events/s")
    print(f"  throughput kept (median):     {100 * result['ratio_median']:.1f} %  (each: {result['ratio_each']})")
    print(f"  peak RSS: {result['peak_rss_mib']}")


if __name__ == "__main__":
    main()
