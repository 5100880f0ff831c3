"""The fleet's delivery against a real Elasticsearch: one daemon of a fleet sends at a
time (the deliver lease), and what it delivered is seen by the others, which then do
not send it again. (Every daemon of a fleet with cluster rules renders the notices of
the fleet's cluster incidents under the same keys: elastic/deliveries.py.)"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from auditd.config.typed import Duration
from auditd.deliver.outbox import Row
from auditd.elastic import templates
from auditd.elastic.client import build_client
from auditd.elastic.deliveries import FleetDeliveries
from auditd.elastic.settings import ClusterSettings
from auditd.elastic.testing import scratch_settings, unique_name

pytestmark = pytest.mark.elasticsearch

CLUSTER = ClusterSettings(partitions=8, lease_ttl=Duration(3), heartbeat=Duration(1), clock_skew=Duration(0.5),
                          evaluate_every=Duration(1))
NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)


def row(n: int, key: str) -> Row:
    return Row(id=n, notice_seq=n, route="customer:email", channel="email", wire_key=key, incident_id="INC-1",
               fleet_key="F1", step_id="notify_customers", kind="customer_notice", audience="customers",
               recipient=f"p:{n}", contact_ref=f"c{n}", body_path=f"/x/{n}", state="sending", attempts=1,
               next_attempt_at=NOW, possible_repeat=False)


def fleet_settings(url: str, namespace: str):
    settings = scratch_settings(url, cluster=CLUSTER)
    return dataclasses.replace(settings, deliveries_index=settings.alerts_index.replace("alerts", "deliveries"),
                               events_data_stream=settings.events_data_stream.rsplit("-", 1)[0] + "-" + namespace)


def test_one_daemon_of_a_fleet_sends_and_the_others_learn_what_it_sent(elasticsearch_url: str) -> None:
    settings = fleet_settings(elasticsearch_url, unique_name("f"))
    es = build_client(settings)
    templates.install(es, settings)
    now = [1_000_000]
    a = FleetDeliveries(es, settings, "a", wall_ms=lambda: now[0])
    b = FleetDeliveries(es, settings, "b", wall_ms=lambda: now[0])
    assert a.may_send() and not b.may_send()  # one holder of the fleet's deliver lease
    assert a.holder() == "a"

    fleet_key = unique_name("F")
    rows = [row(n, f"{fleet_key}/notify_customers/p:{n}/r1") for n in range(3)]
    assert b.delivered_elsewhere(rows) == {}
    a.record([(rows[0], {"queue_id": "Q1"}), (rows[1], {"queue_id": "Q2"})])
    es.indices.refresh(index=settings.deliveries_index)
    seen = b.delivered_elsewhere(rows)
    assert seen == {0: {"fleet": "a", "queue_id": "Q1"}, 1: {"fleet": "a", "queue_id": "Q2"}}
    a.record([(rows[0], {"queue_id": "Q9"})])  # a record is never overwritten: the first receipt stands
    es.indices.refresh(index=settings.deliveries_index)
    assert b.delivered_elsewhere(rows[:1]) == {0: {"fleet": "a", "queue_id": "Q1"}}

    a.release()
    b._last_beat = float("-inf")  # beat now rather than a heartbeat later
    assert b.may_send()  # a stopped: b sends from now on


def test_two_fleets_on_one_cluster_each_have_their_sender(elasticsearch_url: str) -> None:
    east = fleet_settings(elasticsearch_url, unique_name("east"))
    west = dataclasses.replace(east, events_data_stream=east.events_data_stream.rsplit("-", 1)[0] + "-" +
                               unique_name("west"))
    es = build_client(east)
    templates.install(es, east)
    assert FleetDeliveries(es, east, "e1").may_send()
    assert FleetDeliveries(es, west, "w1").may_send()  # another fleet's lease is not this one's
    assert not FleetDeliveries(es, east, "e2").may_send()
