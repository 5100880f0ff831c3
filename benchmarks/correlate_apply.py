"""Benchmark: Correlator.apply throughput (prints figures; not a test).

    python benchmarks/correlate_apply.py [--alerts N] [--batch B] [--actors A] [--subjects S]
"""
import argparse
import datetime as dt
import os
import sqlite3
import tempfile
import time

from auditd.correlate import CorrelateSettings, Correlator
from auditd.store.migrations import migrate
from auditd.detect.alert import Alert, alert_id

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 29, 1, 0, tzinfo=UTC)


def make_alerts(n, actors, subjects_per_alert):
    out = []
    for i in range(n):
        actor = f"E{i % actors:05d}"
        out.append(Alert(
            alert_id=alert_id("bulk-view", f"ev-{i}"), rule_id="bulk-view" if i % 5 else "entitlement-cat",
            rule_kind="threshold" if i % 5 else "entitlement", severity="high" if i % 97 else "critical",
            title="Bulk customer views", timestamp=T0 + dt.timedelta(seconds=i * 0.05),
            event_ids=(f"ev-{i}",), actor=actor,
            subject_ids=tuple(f"hm:{(i * 7 + k) % 50000:08x}" for k in range(subjects_per_alert)),
            categories=("identity", "order") if i % 3 else ("property",), sensitive=i % 3 == 0,
            record_count=subjects_per_alert,
        ))
    return out


def run(conn, correlator, alerts, batch):
    apply_s = commit_s = 0.0
    for start in range(0, len(alerts), batch):
        conn.execute("BEGIN IMMEDIATE")
        t = time.perf_counter()
        correlator.apply(conn, alerts[start:start + batch])
        t2 = time.perf_counter()
        conn.execute("COMMIT")
        apply_s += t2 - t
        commit_s += time.perf_counter() - t2
    return apply_s, commit_s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--alerts", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=5_000)
    p.add_argument("--actors", type=int, default=1_000)
    p.add_argument("--subjects", type=int, default=2)
    args = p.parse_args()
    alerts = make_alerts(args.alerts, args.actors, args.subjects)
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(os.path.join(tmp, "state.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn)
        correlator = Correlator(CorrelateSettings())
        a, c = run(conn, correlator, alerts, args.batch)
        n = args.alerts
        print(f"fresh:  {n} alerts, batch {args.batch}, {args.actors} actors, {args.subjects} subjects/alert:"
              f" apply {a:.2f}s ({n / a:,.0f} alerts/s), commit {c:.2f}s, total {n / (a + c):,.0f} alerts/s")
        a, c = run(conn, correlator, alerts, args.batch)
        print(f"replay: same alerts again (all duplicates): apply {a:.2f}s ({n / a:,.0f} alerts/s)")
        incidents = conn.execute("SELECT count(*) FROM incidents").fetchone()[0]
        print(f"incidents: {incidents}; timeline entries:"
              f" {conn.execute('SELECT count(*) FROM incident_timeline').fetchone()[0]}")


if __name__ == "__main__":
    main()
