#!/usr/bin/env python3
"""Benchmark: the behaviour rules' state for many actors, built through the kinds' own
update path, in a real store.

    python benchmarks/behaviour_memory.py [--actors 100000] [--days 14] [--per-day 20]
                                          [--workdir /var/tmp/neo-behaviour] [--rules rules]

Feeds `--per-day` accesses per actor and working day, for `--days` days, as events
through `RuleSet.evaluate_all` of the shipped rules (per-event and behaviour rules
alike), flushing the rules' state in one store transaction per batch as the pipeline
does. No state is written directly. Prints the time taken, the peak RSS of the process,
the store's size on disk, and per stateful rule its keys and evictions.

The events: actors in five roles, one workstation address each, working 09:00-17:00
with their accesses spread through the shift; reads, searches and lists of one to a
few customers drawn from 160,000, a few exports a day, categories from the role's mix.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import resource
import shutil
import sys
import time
from pathlib import Path

from auditd.config.located import Problems
from auditd.detect import KindContext, load_rules
from auditd.detect.state import StateStore, rule_counters
from auditd.event import AccessEvent
from auditd.store.sqlite import Store

REPO = Path(__file__).resolve().parents[1]
ROLES = ("store_clerk", "store_manager", "cs_agent", "dispatcher", "finance")
CATEGORIES = {"store_clerk": ("identity", "order", "contact"), "store_manager": ("identity", "order", "property"),
              "cs_agent": ("identity", "order", "contact", "property"), "dispatcher": ("order", "contact", "location"),
              "finance": ("property", "order")}
ACTIONS = ("read", "read", "read", "search", "list", "read", "update", "read", "print", "read")
ZONE = dt.timezone(dt.timedelta(hours=8))
BATCH = 4096
MACROS = """- list: data_actions
  items: [read, search, list, export, download, print, unmask, share]
- macro: succeeded
  condition: event.outcome = success
- macro: data_access
  condition: event.action in data_actions
"""


def batches(actors: int, days: int, per_day: int, seed: int = 11):
    """Batches of events in time order: each actor's `per_day` accesses spread over
    09:00-17:00 of each weekday (weekends off)."""
    rng = random.Random(seed)
    start = dt.datetime(2026, 11, 2, 9, 0, tzinfo=ZONE)
    step = dt.timedelta(hours=8) / per_day
    roles = [ROLES[a % len(ROLES)] for a in range(actors)]
    ids = [f"E{a:06d}" for a in range(actors)]
    ips = [f"10.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}" for a in range(actors)]
    out: list[AccessEvent] = []
    n = 0
    for d in range(days):
        day = start + dt.timedelta(days=d)
        if day.weekday() >= 5:
            continue
        for k in range(per_day):
            base = (day + step * k).astimezone(dt.timezone.utc)
            for a in range(actors):
                role = roles[a]
                action = "export" if (k == per_day // 2 and a % 3 == 0) else ACTIONS[rng.randrange(len(ACTIONS))]
                customers = rng.randrange(1, 160_000)
                n += 1
                out.append(AccessEvent(
                    timestamp=base + dt.timedelta(seconds=a % 1200), action=action, user_id=ids[a],
                    user_roles=(role,), source_ip=ips[a], resource_type="customer",
                    resource_seq_block=f"b{customers >> 6}", resource_seq_offset=customers & 63,
                    categories=(CATEGORIES[role][k % len(CATEGORIES[role])],),
                    record_count=rng.randrange(1, 6) if action != "export" else rng.randrange(20, 300),
                    subject_ids=(f"p{customers}",), event_id=f"m:{n}", dataset="neo-crm.access",
                    actor_known=True, actor_off_shift=False, entitlement_granted=True,
                ))
                if len(out) >= BATCH:
                    yield out
                    out = []
    if out:
        yield out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--per-day", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/neo-behaviour"))
    parser.add_argument("--rules", type=Path, nargs="+",
                        help="rule files or folders (default: the shipped behaviour rules and the macros they use)")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    if not args.rules:  # the stateful rules only: the per-event rules keep no state
        (args.workdir / "rules").mkdir()
        shutil.copy(REPO / "rules" / "behaviour.yaml", args.workdir / "rules" / "behaviour.yaml")
        (args.workdir / "rules" / "macros.yaml").write_text(MACROS)
        args.rules = [args.workdir / "rules"]
    store = Store(args.workdir / "neo-auditd.db").open()
    state = StateStore()
    state.bind(store.conn)
    problems = Problems()
    ruleset = load_rules(args.rules, problems, context=KindContext(state=state))
    problems.raise_if_any()
    started = time.perf_counter()
    events = alerts = 0
    for batch in batches(args.actors, args.days, args.per_day):
        alerts += len(ruleset.evaluate_all(batch))
        events += len(batch)
        with store.transaction() as conn:
            state.flush(conn)
        if events % (BATCH * 250) < BATCH:
            print(f"  {events:,} events, {time.perf_counter() - started:.0f} s, "
                  f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", file=sys.stderr)
    seconds = time.perf_counter() - started
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counters = rule_counters(store.conn)
    store.close()
    disk = sum(p.stat().st_size for p in args.workdir.iterdir() if p.name.startswith("neo-auditd.db")
               and not p.name.endswith(".bak"))
    print(f"actors {args.actors:,}, days {args.days} (working days only), {args.per_day} accesses a day: "
          f"{events:,} events through {len(ruleset.rules)} rules in {seconds:.0f} s ({events / seconds:,.0f}/s)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
          f"state on disk {disk / 2**20:.0f} MB; alerts {alerts:,}")
    for rule_id, _, keys, evicted, bad in counters:
        print(f"  {rule_id:<40} keys {keys:>8,}  evicted {evicted:>6,}  unreadable {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
