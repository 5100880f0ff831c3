"""The fleet's delivery: one daemon sends at a time, and every daemon learns what was sent.

Several daemons on one cluster each run the respond stage on their own store, so the
same episode's notices are rendered on every one of them, under the same fleet-wide
idempotency keys. Two things keep each recipient at one message:

- **the deliver lease**: a lease document (``leases.py``: compare-and-set, expiry,
  takeover after ``elastic.cluster.lease_ttl``) for the group ``<fleet>-deliver`` (the
  fleet is the events data stream's namespace) of one partition. Only its holder sends; the others keep their outbox rows pending;
- **delivery records**: the holder writes one document per message and route it
  delivered (``deliveries_index``, id = hash of key and route, created, never
  overwritten). Before it sends a batch, a daemon looks its keys up there: a message
  another daemon delivered is marked ``fleet`` with that daemon's receipt, not sent.
  A daemon without the lease marks its pending rows the same way, so its backlog and
  its breach register show the fleet's receipts.

What is left: a holder that dies after sending and before recording; its successor
sends those messages again with the same keys (receivers drop repeats by key). If the
cluster is unreachable for four lease times, every daemon sends on its own (the keys
still let receivers drop repeats): a legal notice that waits for a cluster is worse
than a repeat a receiver can recognise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from elasticsearch import Elasticsearch

from auditd.deliver.outbox import Row
from auditd.elastic.leases import LeaseManager
from auditd.elastic.settings import ElasticSettings

log = logging.getLogger("neo_auditd.elastic.deliveries")


def record_id(row: Row) -> str:
    return hashlib.sha256(f"{row.wire_key}\0{row.route}".encode("utf-8")).hexdigest()[:40]


class FleetDeliveries:
    """Constructing it does no I/O; may_send() heartbeats the lease at most once per `heartbeat`."""

    def __init__(self, es: Elasticsearch, settings: ElasticSettings, agent: str, *,
                 monotonic: Callable[[], float] = time.monotonic, wall_ms: Callable[[], int] | None = None):
        scale = dataclasses.replace(settings.cluster, partitions=1)
        self.es = es
        self.index = settings.deliveries_index
        self.agent = agent
        self.monotonic = monotonic
        self.every_s = scale.heartbeat.seconds
        self.degraded_after_s = 4 * scale.lease_ttl.seconds
        self.leases = LeaseManager(es, settings.leases_index, scale, agent, group=f"{settings.fleet}-deliver",
                                   **({"wall_ms": wall_ms} if wall_ms else {}))
        self._last_beat = float("-inf")
        self._last_ok = monotonic()

    def may_send(self) -> bool:
        now = self.monotonic()
        if now - self._last_beat >= self.every_s:
            self._last_beat = now
            try:
                self.leases.heartbeat()
                self._last_ok = now
            except Exception as exc:  # noqa: BLE001 - the cluster is away
                if now - self._last_ok >= self.degraded_after_s:
                    log.warning("cluster unreachable: sending without the deliver lease (keys let receivers drop "
                                "repeats)", extra={"error": f"{type(exc).__name__}"})
                    return True
        return 0 in self.leases.owned()

    def holder(self) -> str | None:
        leases = self.leases.read_leases()
        return leases[0].owner if leases else None

    def delivered_elsewhere(self, rows: Sequence[Row]) -> dict[int, dict[str, Any]]:
        if not rows:
            return {}
        try:
            response = self.es.mget(index=self.index, ids=[record_id(r) for r in rows])
        except Exception as exc:  # noqa: BLE001 - unknown: send (the key lets receivers drop a repeat)
            log.warning("cannot read the fleet's deliveries", extra={"error": type(exc).__name__})
            return {}
        found = {}
        for row, doc in zip(rows, response["docs"]):
            if doc.get("found"):
                source = doc["_source"]
                found[row.id] = {"fleet": source.get("agent"), **(source.get("receipt") or {})}
        return found

    def record(self, delivered: Sequence[tuple[Row, dict[str, Any]]]) -> None:
        operations: list[dict[str, Any]] = []
        for row, receipt in delivered:
            operations.append({"create": {"_index": self.index, "_id": record_id(row)}})
            operations.append({"wire_key": row.wire_key, "route": row.route, "channel": row.channel,
                               "agent": self.agent, "receipt": receipt,
                               "delivered_at_ms": int(time.time() * 1000)})
        response = self.es.bulk(operations=operations, refresh=False)
        if response.get("errors"):
            bad = [i for i in response["items"] if i["create"].get("status") not in (200, 201, 409)]
            if bad:
                log.warning("fleet delivery records refused", extra={"count": len(bad)})

    def reconcile(self, rows: Sequence[Row]) -> dict[int, dict[str, Any]]:
        """For a daemon without the lease: which of its pending rows the fleet delivered."""
        return self.delivered_elsewhere(rows)

    def release(self) -> None:
        try:
            self.leases.release_all()
        except Exception:  # noqa: BLE001 - it expires by itself
            log.debug("deliver lease not released", exc_info=True)
