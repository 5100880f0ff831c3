"""Leases: which live daemon evaluates which partition of the actors.

Two kinds of documents in the leases index, per ``group`` of daemons (a fleet: the
events data stream's namespace):

- a member document per daemon, rewritten at every heartbeat with an expiry: the live
  members are those whose expiry has not passed;
- a lease document per partition: owner and expiry. Every change is a compare-and-set
  on the document's ``_seq_no``/``_primary_term`` (``if_seq_no``/``if_primary_term``;
  ``op_type=create`` for a first claim), so two daemons can never both think they
  won the same lease: one of them gets a 409 and gives up that partition.

At each heartbeat a daemon renews the leases it holds, gives back the ones above its
fair share (``ceil(partitions / live members)``), and claims free or expired ones up to
it, in an order of its own (rendezvous hashing), so daemons starting together tend to
reach for different partitions. A daemon that dies stops renewing; ``lease_ttl`` (and
``clock_skew``) later its leases count as expired and the survivors take them over
at their next heartbeat.

Clocks: expiries are wall-clock times written by the owner. A daemon trusts its own
lease until ``clock_skew`` before the expiry, and others take it over only
``clock_skew`` after, so clocks that agree within ``clock_skew`` never give one
partition two evaluators. Should that still happen (a daemon frozen for longer than
the lease, a clock far off), nothing is doubled: alerts have deterministic ids and
are created, never overwritten, and incidents are merged under compare-and-set.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from elasticsearch import ConflictError, Elasticsearch

from auditd.elastic.settings import ClusterSettings

log = logging.getLogger("neo_auditd.elastic.leases")


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Lease:
    partition: int
    owner: str | None
    expires_at_ms: int
    seq_no: int | None  # None: no document yet
    primary_term: int | None


def preference(owner: str, partition: int) -> bytes:
    """Rendezvous hash: each daemon ranks the partitions in its own order."""
    return hashlib.blake2b(f"{owner}/{partition}".encode(), digest_size=8).digest()


class LeaseManager:
    """The leases of one daemon. Constructing it does no I/O; heartbeat() does."""

    def __init__(self, es: Elasticsearch, index: str, settings: ClusterSettings, owner: str, *,
                 group: str = "default", wall_ms: Callable[[], int] = _wall_ms):
        self.es = es
        self.group = group  # the fleet: daemons of one group share the partitions
        self.index = index
        self.settings = settings
        self.owner = owner
        self.wall_ms = wall_ms
        self.ttl_ms = int(settings.lease_ttl.seconds * 1000)
        self.skew_ms = int(settings.clock_skew.seconds * 1000)
        self._held: dict[int, int] = {}  # partition -> expiry we wrote
        self._lock = threading.Lock()
        self.conflicts = 0  # compare-and-set races lost (normal, counted for metrics)
        self.takeovers = 0  # expired leases of another daemon taken

    # -- what the detector asks ------------------------------------------------------------
    def owned(self) -> frozenset[int]:
        """Partitions this daemon may evaluate now: held, and not near their expiry."""
        now = self.wall_ms()
        with self._lock:
            return frozenset(p for p, expiry in self._held.items() if expiry - self.skew_ms > now)

    def heartbeat(self) -> frozenset[int]:
        """Announce this daemon, renew, give back the surplus, claim the fair share."""
        now = self.wall_ms()
        self._write_member(now)
        members = self.live_members(now)
        target = math.ceil(self.settings.partitions / max(1, len(members)))
        leases = self.read_leases()
        mine = [lease for lease in leases if lease.owner == self.owner]
        ranked = sorted(mine, key=lambda lease: preference(self.owner, lease.partition))
        for lease in ranked[target:]:
            self._release(lease)
        held = {lease.partition for lease in ranked[:target] if self._renew(lease, now)}
        free = [lease for lease in leases if self._claimable(lease, now)]
        free.sort(key=lambda lease: preference(self.owner, lease.partition))
        for lease in free:
            if len(held) >= target:
                break
            if self._claim(lease, now):
                held.add(lease.partition)
        with self._lock:
            self._held = {p: now + self.ttl_ms for p in held}
        return self.owned()

    def release_all(self) -> None:
        """At a clean stop: hand the partitions over at once instead of after the TTL."""
        for lease in self.read_leases():
            if lease.owner == self.owner:
                self._release(lease)
        with self._lock:
            self._held = {}
        try:
            self.es.delete(index=self.index, id=self._member_id(), refresh=True)
        except Exception:  # noqa: BLE001 - it expires by itself anyway
            log.debug("member document not deleted", exc_info=True)

    # -- documents -------------------------------------------------------------------------
    def _member_id(self) -> str:
        return f"{self.group}/member/{self.owner}"

    def _lease_id(self, partition: int) -> str:
        return f"{self.group}/partition/{partition}"

    def _write_member(self, now: int) -> None:
        # refresh: the other daemons find members by search, which is not real-time
        self.es.index(index=self.index, id=self._member_id(), refresh=True, document={
            "kind": "member", "group": self.group, "owner": self.owner,
            "expires_at_ms": now + self.ttl_ms, "renewed_at_ms": now})

    def live_members(self, now: int) -> list[str]:
        response = self.es.search(index=self.index, size=1000, query={"bool": {"filter": [
            {"term": {"kind": "member"}}, {"term": {"group": self.group}},
            {"range": {"expires_at_ms": {"gt": now - self.skew_ms}}}]}}, source=["owner"])
        owners = {hit["_source"]["owner"] for hit in response["hits"]["hits"]}
        owners.add(self.owner)
        return sorted(owners)

    def read_leases(self) -> list[Lease]:
        ids = [self._lease_id(p) for p in range(self.settings.partitions)]
        response = self.es.mget(index=self.index, ids=ids)  # real-time: sees the latest writes
        leases = []
        for partition, doc in enumerate(response["docs"]):
            if doc.get("found"):
                src = doc["_source"]
                leases.append(Lease(partition, src.get("owner"), int(src.get("expires_at_ms", 0)),
                                    doc["_seq_no"], doc["_primary_term"]))
            else:
                leases.append(Lease(partition, None, 0, None, None))
        return leases

    def _claimable(self, lease: Lease, now: int) -> bool:
        if lease.owner == self.owner:
            return False
        return lease.owner is None or lease.expires_at_ms + self.skew_ms < now

    def _claim(self, lease: Lease, now: int) -> bool:
        won = self._swap(lease, self.owner, now + self.ttl_ms, now)
        if won and lease.owner is not None:
            self.takeovers += 1
            log.info("took over partition %d from %s (lease expired)", lease.partition, lease.owner)
        return won

    def _renew(self, lease: Lease, now: int) -> bool:
        won = self._swap(lease, self.owner, now + self.ttl_ms, now)
        if not won:
            log.warning("lost the lease of partition %d", lease.partition)
        return won

    def _release(self, lease: Lease) -> None:
        self._swap(lease, None, 0, self.wall_ms())

    def _swap(self, lease: Lease, owner: str | None, expires_at_ms: int, now: int) -> bool:
        """Compare-and-set the lease document; False if someone else changed it first."""
        document = {"kind": "lease", "group": self.group, "partition": lease.partition,
                    "owner": owner, "expires_at_ms": expires_at_ms, "renewed_at_ms": now}
        condition: dict[str, Any] = (
            {"op_type": "create"} if lease.seq_no is None
            else {"if_seq_no": lease.seq_no, "if_primary_term": lease.primary_term})
        try:
            self.es.index(index=self.index, id=self._lease_id(lease.partition), document=document, **condition)
        except ConflictError:
            self.conflicts += 1
            return False
        return True
