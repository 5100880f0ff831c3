#!/usr/bin/env python3
"""Benchmark: what the least-privilege check adds to an end-to-end replay.

A company of 10,000 employees in 200 roles (the example's 8 roles, 25 variants each),
200 stores in 20 regions, and 100,000 orders assigned to dispatchers, whose order
views are judged by the `assigned` scope through an SQLite lookup behind the cache. The
same generated log is replayed through the whole pipeline (decode, enrich, detect with
the shipped rules, correlate, store) without and with the entitlement checker; each run
is a fresh process on one pinned core with a fresh state directory, the two modes
interleaved (in flipped order each round), and the best of `--repeat` runs of each is
compared (medians too). The checker also times itself per batch, which gives its own
share without the noise of a shared machine.

    python benchmarks/entitlement.py [--lines 500000] [--repeat 2] [--cpu 0] [--json]

Prints both replay times, the overhead (the acceptance limit is 30 %), and what the
checker did. Everything is written under --workdir and reused when the sizes match.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from auditd.enrich.pseudonym import create_key_file

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "directory.yaml"
VARIANTS = 25  # per example role: 8 x 25 = 200 roles
REGIONS, STORES_PER_REGION = 20, 10
# employees per store and head-office headcounts: 200 x 31 + 3,800 = 10,000
PER_STORE = {"store_manager": 1, "store_clerk": 30}
HEAD_OFFICE = {"cs_agent": 1500, "dispatcher": 800, "finance": 500, "analyst": 400, "dpo": 50, "it_admin": 550}
SHIFTS = {"store_clerk": ("store_early", "store_late"), "store_manager": ("store_early",),
          "cs_agent": ("cs_day", "cs_evening"), "dispatcher": ("dispatch",)}  # the rest: office


# -- the company ---------------------------------------------------------------------------------

def variant_grants(base: str, grants: list[dict], v: int) -> list[dict]:
    """The example role's grants, reshaped and widened a little per variant (never
    narrowed, so the generator's normal traffic stays entitled)."""
    out = [dict(g) for g in grants]
    if base == "dispatcher":  # an order is viewed by the dispatcher it is assigned to
        out = [{"categories": ["identity", "contact"], "actions": ["read", "search", "list"], "scope": "own_region"},
               {"categories": ["order"], "actions": ["search", "list"], "scope": "own_region"},
               {"categories": ["order"], "actions": ["read"], "scope": "assigned"},
               *out[1:]]
    extra = [None, {"categories": ["media"], "actions": ["read"], "scope": "own_store"},
             {"categories": ["device"], "actions": ["read", "list"], "scope": "all", "purpose_required": True},
             {"categories": ["order"], "actions": ["print"], "scope": "own_region"}, None][v % 5]
    return out + ([extra] if extra else [])


def write_directory(workdir: Path) -> tuple[Path, list[str]]:
    """bench-directory.yaml with employees in employees.csv; returns it and the dispatchers."""
    example = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    regions = [{"id": f"R{r:02d}"} for r in range(1, REGIONS + 1)]
    stores = [{"id": f"S{r * STORES_PER_REGION + s + 1:03d}", "region": f"R{r + 1:02d}", "hours": "08:30-22:00"}
              for r in range(REGIONS) for s in range(STORES_PER_REGION)]
    roles = [{"id": f"{role['id']}_{v:02d}", "grants": variant_grants(role["id"], role["grants"], v)}
             for role in example["roles"] for v in range(VARIANTS)]
    rows, dispatchers = _employees(stores)
    with open(workdir / "employees.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "name", "roles", "store", "region", "shift", "hire_date"])
        writer.writerows(rows)
    directory = {"regions": regions, "stores": stores, "shifts": example["shifts"], "roles": roles,
                 "partners": example["partners"], "employees_csv": ["employees.csv"]}
    path = workdir / "bench-directory.yaml"
    path.write_text(yaml.safe_dump(directory, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path, dispatchers


def _employees(stores: list[dict]) -> tuple[list[list[str]], list[str]]:
    rows: list[list[str]] = []
    dispatchers: list[str] = []

    def add(base: str, store: str, region: str) -> None:
        n = len(rows)
        emp_id = f"E{100_000 + n}"
        shifts = SHIFTS.get(base, ("office",))
        rows.append([emp_id, f"员工{n}", f"{base}_{n % VARIANTS:02d}", store, region, shifts[n % len(shifts)],
                     "2024-01-01"])
        if base == "dispatcher":
            dispatchers.append(emp_id)

    for store in stores:
        for base, count in PER_STORE.items():
            for _ in range(count):
                add(base, store["id"], "")
    for base, count in HEAD_OFFICE.items():
        for i in range(count):
            add(base, "", f"R{i % REGIONS + 1:02d}" if base == "dispatcher" else "R01")
    return rows, dispatchers


def write_assignments(workdir: Path, log: Path, dispatchers: list[str], total: int) -> tuple[Path, int]:
    """Every order a dispatcher viewed in the log, assigned to them, plus random others
    up to `total`, in an SQLite table keyed by order id."""
    mine = set(dispatchers)
    table: dict[str, str] = {}
    with open(log, encoding="utf-8") as f:
        for line in f:
            if '"op":"order.view"' in line:
                record = json.loads(line)
                if record["emp"]["id"] in mine:
                    table.setdefault(record["res"]["id"], record["emp"]["id"])
    seen = len(table)
    rng = random.Random(3)
    while len(table) < total:
        table.setdefault(f"O{rng.randrange(10**10):010d}", rng.choice(dispatchers))
    path = workdir / "assignments.db"
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE assignments (id TEXT PRIMARY KEY, assignee TEXT NOT NULL) WITHOUT ROWID")
        conn.executemany("INSERT INTO assignments VALUES (?, ?)", table.items())
    return path, seen


def prepare(args: argparse.Namespace) -> dict:
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = {"lines": args.lines, "orders": args.orders, "version": 1}
    meta_path = workdir / "prepared.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("stamp") == stamp:
        return json.loads(meta_path.read_text())
    directory, dispatchers = write_directory(workdir)
    subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--out", str(workdir / "data"),
                    "--lines", str(args.lines), "--seed", "7", "--directory", str(directory)], check=True)
    db, seen = write_assignments(workdir, workdir / "data" / "access.log", dispatchers, args.orders)
    key = workdir / "pseudonym.key"
    if not key.exists():
        create_key_file(key)
    meta = {"stamp": stamp, "directory": str(directory), "assignments": str(db), "orders_viewed": seen}
    meta_path.write_text(json.dumps(meta))
    return meta


# -- one measured run (a child process) ------------------------------------------------------------

def _timed_checker_class():
    from auditd.entitlement import EntitlementChecker

    class TimedChecker(EntitlementChecker):
        """Adds up its own time, per batch (so the timing itself costs nothing)."""

        seconds = 0.0

        def check(self, events):
            started = time.perf_counter()
            super().check(events)
            self.seconds += time.perf_counter() - started

    return TimedChecker


def child(workdir: Path, mode: str) -> None:
    """Replay the log once; print a JSON line with the figures."""
    import dataclasses

    from auditd.enrich import Enricher
    from auditd.entitlement import CachedAssignments, SqliteAssignments
    from auditd.runtime import load_runtime
    from auditd.opening import open_store
    from auditd.replay import replay
    from auditd.workdays import WorkingCalendar

    _TimedChecker = _timed_checker_class()
    meta = json.loads((workdir / "prepared.json").read_text())
    state = workdir / f"state-{mode}"
    shutil.rmtree(state, ignore_errors=True)
    config = workdir / "config.yaml"
    config.write_text("state_dir: state\nsources:\n  - {name: crm, paths: [data/access.log], format: neo-crm}\n"
                      f"pseudonym: {{key_file: pseudonym.key}}\ndirectory: {{path: {meta['directory']}}}\n",
                      encoding="utf-8")
    started = time.perf_counter()
    runtime = load_runtime(config)
    loaded = time.perf_counter() - started
    old, checker, lookup = runtime.enricher, None, None
    if mode == "with":
        lookup = CachedAssignments(SqliteAssignments(meta["assignments"]), size=100_000, ttl_s=300)
        checker = _TimedChecker(assignments=lookup, pseudonymise=old.pseudonymiser, zone=runtime.settings.zone)
    # the same enricher both times (the calendar included); only the checker differs
    enricher = Enricher(runtime.directory, old.pseudonymiser, sensitive_categories=old.sensitive_categories,
                        zone=old.zone, working_days_between=WorkingCalendar().working_days_between,
                        entitlement=checker)
    runtime = dataclasses.replace(runtime, enricher=enricher)
    store, quarantine = open_store(runtime, state)
    pipeline = replay(runtime, store, quarantine, [workdir / "data" / "access.log"], "crm")
    store.close()
    totals = pipeline.totals
    print(json.dumps({
        "mode": mode, "seconds": totals.seconds, "load_seconds": loaded, "events": totals.events,
        "employees": len(runtime.directory), "roles": len(runtime.directory.roles),
        "alerts_by_rule": totals.alerts_by_rule,
        "checker": None if checker is None else {"checked": checker.checked, "denied": checker.denied,
                                                 "unverified": checker.unverified,
                                                 "seconds": round(checker.seconds, 3)},
        "lookups": None if lookup is None else {"misses": lookup.misses, "hits": lookup.hits},
    }))


# -- the comparison ----------------------------------------------------------------------------------

def measure(args: argparse.Namespace) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    pin = ["taskset", "-c", str(args.cpu)] if shutil.which("taskset") else []
    for i in range(args.repeat):
        # interleaved, and the order flipped each round, so drift in a shared machine's load
        # hits both modes alike
        for mode in (("without", "with") if i % 2 == 0 else ("with", "without")):
            proc = subprocess.run([*pin, sys.executable, __file__, "--child", mode, "--workdir", str(args.workdir)],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return runs


def report(args: argparse.Namespace, meta: dict, runs: dict[str, list[dict]]) -> dict:
    best = {mode: min(r["seconds"] for r in rs) for mode, rs in runs.items()}
    median = {mode: statistics.median(r["seconds"] for r in rs) for mode, rs in runs.items()}
    with_run = min(runs["with"], key=lambda r: r["seconds"])
    ours = {rule: n for rule, n in with_run["alerts_by_rule"].items()
            if rule in ("least_privilege_violation", "sensitive_data_outside_grants", "unmask_without_grant",
                        "departed_employee_activity", "transfer_outside_allowed_destinations",
                        "partner_fields_beyond_allowance")}
    return {
        "employees": with_run["employees"], "roles": with_run["roles"], "assigned_orders": args.orders,
        "orders_viewed_in_log": meta["orders_viewed"], "events": with_run["events"],
        "without_seconds": round(best["without"], 3), "with_seconds": round(best["with"], 3),
        "without_events_per_second": round(with_run["events"] / best["without"]),
        "with_events_per_second": round(with_run["events"] / best["with"]),
        "overhead_percent": round(100 * (best["with"] / best["without"] - 1), 1),
        "median_overhead_percent": round(100 * (median["with"] / median["without"] - 1), 1),
        "runs": {mode: [round(r["seconds"], 3) for r in rs] for mode, rs in runs.items()},
        "directory_load_seconds": round(with_run["load_seconds"], 2),
        "checker": with_run["checker"], "lookups": with_run["lookups"], "entitlement_alerts": ours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--orders", type=int, default=100_000, help="assigned orders in the lookup table")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/neo-auditd-entitlement-bench"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=["with", "without"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.workdir, args.child)
        return
    meta = prepare(args)
    result = report(args, meta, measure(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    r = result
    print(f"entitlement benchmark: {r['employees']:,} employees, {r['roles']} roles, {r['assigned_orders']:,} "
          f"assigned orders ({r['orders_viewed_in_log']:,} of them viewed), {r['events']:,} log lines")
    print(f"  replay without the entitlement checker: {r['without_seconds']:.2f} s "
          f"({r['without_events_per_second']:,} events/s)  runs {r['runs']['without']}")
    print(f"  replay with the entitlement checker:    {r['with_seconds']:.2f} s "
          f"({r['with_events_per_second']:,} events/s)  runs {r['runs']['with']}")
    verdict = "within" if r["overhead_percent"] <= 30 else "OVER"
    print(f"  overhead: {r['overhead_percent']:+.1f} % best against best, {r['median_overhead_percent']:+.1f} % "
          f"median against median ({verdict} the 30 % limit)")
    checker = r["checker"]
    share = 100 * checker["seconds"] / r["with_seconds"]
    print(f"  time inside the checker: {checker['seconds']:.2f} s = {share:.1f} % of the replay with it "
          f"({1e6 * checker['seconds'] / max(checker['checked'], 1):.2f} us per event)")
    print(f"  checker: {checker['checked']:,} judged, {checker['denied']} denied, {checker['unverified']} unverified; "
          f"assignment lookups {r['lookups']}; entitlement alerts {r['entitlement_alerts']}")


if __name__ == "__main__":
    main()
