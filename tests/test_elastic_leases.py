"""Leases against a real Elasticsearch: fair shares, takeover of expired ones, one
winner per race. (The cluster rules that run under them: test_elastic_cluster_rules.py.)"""

from __future__ import annotations

import threading

import pytest

from auditd.config.typed import Duration
from auditd.elastic import templates
from auditd.elastic.client import build_client
from auditd.elastic.leases import LeaseManager
from auditd.elastic.settings import ClusterSettings
from auditd.elastic.testing import scratch_settings, unique_name

pytestmark = pytest.mark.elasticsearch

CLUSTER = ClusterSettings(partitions=8, lease_ttl=Duration(3), heartbeat=Duration(1), clock_skew=Duration(0.5),
                          evaluate_every=Duration(1))


def settings_for(url: str, tag: str):
    return scratch_settings(url, cluster=CLUSTER)


def test_leases_share_fairly_and_expired_ones_are_taken_over(elasticsearch_url: str) -> None:
    settings = settings_for(elasticsearch_url, unique_name("l"))
    es = build_client(settings)
    templates.install(es, settings)
    now = [1_000_000]
    a = LeaseManager(es, settings.leases_index, CLUSTER, "a", wall_ms=lambda: now[0])
    b = LeaseManager(es, settings.leases_index, CLUSTER, "b", wall_ms=lambda: now[0])

    assert a.heartbeat() == frozenset(range(8))  # alone: everything
    assert b.heartbeat() == frozenset()  # all held and unexpired
    now[0] += 1000
    assert len(a.heartbeat()) == 4  # gives back the surplus
    assert len(b.heartbeat()) == 4  # and b takes it
    assert a.owned() | b.owned() == frozenset(range(8)) and not a.owned() & b.owned()

    now[0] += 3000  # a stops beating; its leases expire (ttl 3 s + skew 0.5 s)
    assert len(b.heartbeat()) == 4
    now[0] += 1000
    assert b.heartbeat() == frozenset(range(8))
    assert b.takeovers == 4
    assert a.owned() == frozenset()  # a, if it wakes up, no longer trusts its leases


def test_a_lease_race_has_one_winner(elasticsearch_url: str) -> None:
    settings = settings_for(elasticsearch_url, unique_name("r"))
    es = build_client(settings)
    templates.install(es, settings)
    managers = [LeaseManager(build_client(settings), settings.leases_index, CLUSTER, f"d{i}") for i in range(4)]
    results: dict[str, frozenset[int]] = {}
    barrier = threading.Barrier(len(managers))

    def beat(manager: LeaseManager) -> None:
        barrier.wait()
        results[manager.owner] = manager.heartbeat()

    threads = [threading.Thread(target=beat, args=(m,)) for m in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [p for share in results.values() for p in share]
    assert len(claimed) == len(set(claimed))  # no partition has two owners
