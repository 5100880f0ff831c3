"""Synthetic access events and stores, for the Elasticsearch tests and benchmark.

Deterministic for a given seed, with realistic shapes: a few dozen employees, reads
and searches of customer records with pseudonymised subjects, now and then an export.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from auditd.elastic.settings import ElasticSettings, ShipSettings
from auditd.event import AccessEvent
from auditd.store.sqlite import Store

T0 = dt.datetime(2026, 3, 2, 1, 0, tzinfo=dt.timezone.utc)  # 09:00 in Shanghai
_ACTIONS = ("read", "read", "read", "search", "list", "export", "update")
_CATEGORIES = (("identity",), ("contact",), ("identity", "contact"), ("order",), ("property",), ("location",))


def unique_name(prefix: str) -> str:
    """Data streams cannot be deleted on the test server: every test uses fresh names."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def scratch_settings(url: str, **changes) -> ElasticSettings:
    """Settings with fresh index names on the given server, replicas off (one node)."""
    tag = unique_name("t")
    ship = changes.pop("ship", ShipSettings(retry_backoff_initial_s=0.2, retry_backoff_max_s=2.0))
    base = ElasticSettings(
        hosts=[url], node_name="host-a", number_of_replicas=0,
        events_data_stream=f"logs-neo_auditd.{tag}-default", alerts_index=f"neo-{tag}-alerts",
        incidents_index=f"neo-{tag}-incidents", leases_index=f"neo-{tag}-leases", ship=ship,
    )
    return dataclasses.replace(base, **changes)


def synthetic_events(count: int, *, seed: int = 7, start: dt.datetime = T0, actors: int = 40,
                     spacing: dt.timedelta = dt.timedelta(milliseconds=50), host: str = "crm-web-1",
                     id_prefix: str = "f00dfacecafe0001") -> Iterator[AccessEvent]:
    rng = random.Random(seed)
    for i in range(count):
        action = rng.choice(_ACTIONS)
        subjects = tuple(f"p:{rng.getrandbits(128):032x}" for _ in range(rng.randint(1, 3)))
        yield AccessEvent(
            timestamp=start + spacing * i,
            action=action,
            user_id=f"E{1000 + rng.randrange(actors)}",
            user_name="staff",
            user_roles=("cs-agent",),
            source_ip=f"10.1.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            host_name=host,
            service_name="crm",
            resource_type="customer",
            resource_id=subjects[0],
            categories=rng.choice(_CATEGORIES),
            record_count=len(subjects) if action != "export" else rng.randint(10, 500),
            subject_ids=subjects,
            fields=("name", "phone"),
            masked=rng.random() < 0.9,
            event_id=f"{id_prefix}:{i * 100}",
            log_path="/var/log/crm/access.log",
            log_offset=i * 100,
            dataset="neo-crm",
            labels={"shard": str(i % 4)},
            actor_known=True,
            actor_status="active",
            entitlement_granted=True,
        )


def fill_store(path: Path, events: Iterable[AccessEvent], *, batch: int = 20_000,
               source: str = "crm") -> Store:
    """A store holding the events, inserted in pipeline-sized transactions (segments)."""
    store = Store(path).open()
    chunk: list[AccessEvent] = []
    for event in events:
        chunk.append(event)
        if len(chunk) >= batch:
            with store.transaction() as conn:
                store.insert_events(conn, source, chunk)
            chunk = []
    if chunk:
        with store.transaction() as conn:
            store.insert_events(conn, source, chunk)
    return store
