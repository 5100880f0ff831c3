#!/usr/bin/env python3
"""Benchmark: ship N events from a store to Elasticsearch with the EventShipper.

Prints events/s end to end (read the store's segments, build ECS documents, bulk
create, record the position), and, for context, the client-side ceiling (reading and
encoding alone, no network). Usage:

    bash scripts/elasticsearch.sh start      # or any cluster: --url https://...
    python benchmarks/elastic_ship.py --events 200000 [--url http://127.0.0.1:9250]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auditd.elastic import templates  # noqa: E402
from auditd.elastic.client import build_client  # noqa: E402
from auditd.elastic.feeds import EventFeed  # noqa: E402
from auditd.elastic.sink import EventShipper  # noqa: E402
from auditd.elastic.testing import fill_store, scratch_settings, synthetic_events  # noqa: E402


def encode_only(store_path: Path, bulk_docs: int) -> float:
    """Events/s of reading and encoding alone: the shipper's own ceiling."""
    feed = EventFeed("bench", "bench", lambda: dt.datetime.now(dt.timezone.utc))
    conn = sqlite3.connect(store_path)
    started, events = time.perf_counter(), 0
    while (page := feed.read(conn, bulk_docs, 64 << 20)) is not None:
        events += len(page.items)
        feed.recorded(page)
    conn.close()
    return events / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("NEO_ES_URL", "http://127.0.0.1:9250"))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--bulk-docs", type=int, default=5000)
    parser.add_argument("--segment", type=int, default=20_000, help="events per store segment (pipeline batch)")
    parser.add_argument("--compress", action="store_true", help="gzip bulk bodies (level 9, the client's)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    settings = scratch_settings(args.url, http_compress=args.compress)
    settings = dataclasses.replace(settings, ship=dataclasses.replace(settings.ship, bulk_max_docs=args.bulk_docs))
    es = build_client(settings)
    print(f"cluster {args.url}: {es.cluster.health()['status']}")
    templates.install(es, settings)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="neo-elastic-bench-"))
    store_path = workdir / "neo.db"

    started = time.perf_counter()
    fill_store(store_path, synthetic_events(args.events), batch=args.segment).close()
    print(f"store: {args.events:,} events in {time.perf_counter() - started:.1f} s ({store_path})")
    ceiling = encode_only(store_path, args.bulk_docs)

    shipper = EventShipper(es, store_path, settings, agent="bench")
    started = time.perf_counter()
    shipped = shipper.ship_pending()
    seconds = time.perf_counter() - started
    stats = shipper.stats()
    shipper.close()
    es.indices.refresh(index=settings.events_data_stream)
    count = es.count(index=settings.events_data_stream)["count"]

    print(f"shipped {shipped:,} events in {seconds:.1f} s: {shipped / seconds:,.0f} events/s end to end")
    print(f"  {stats.requests} bulk requests of up to {args.bulk_docs} docs, "
          f"{stats.bytes_sent / seconds / 1e6:.1f} MB/s, {stats.bytes_sent / max(1, shipped):.0f} B/event, "
          f"retries {stats.retries}, dead letters {stats.dead_letters}")
    print(f"  client-side ceiling (read + encode only): {ceiling:,.0f} events/s")
    print(f"  indexed: {count:,} (expected {args.events:,})")
    return 0 if count == args.events else 1


if __name__ == "__main__":
    sys.exit(main())
