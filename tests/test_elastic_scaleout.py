"""Scale-out against a real Elasticsearch: leases, takeover, alerts once, incidents merged."""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch, helpers

from auditd.config.typed import Duration
from auditd.detect.alert import Alert, alert_id
from auditd.elastic import templates
from auditd.elastic.client import build_client
from auditd.elastic.documents import event_actions
from auditd.elastic.cluster_alerts import ClusterAlertFollower, ClusterAlertReader
from auditd.elastic.leases import LeaseManager
from auditd.elastic.partitioned import ORIGIN, ClusterDetector, windows_to_evaluate
from auditd.elastic.settings import ElasticSettings, ScaleOutSettings, ThresholdRule
from auditd.elastic.testing import T0, synthetic_events, unique_name
from auditd.event import FIELDS, AccessEvent

pytestmark = pytest.mark.elasticsearch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
EVALUATED_AT = T0 + dt.timedelta(hours=3)  # the detectors' clock for windows (leases use the real one)
RULES = (
    ThresholdRule(id="many-reads", title="Many reads", threshold=8, window=Duration(600),
                  filter={"event.action": "read"}),
    ThresholdRule(id="many-customers", title="Many customers", threshold=25, window=Duration(1800),
                  distinct="neo.data.subject_ids", severity="critical"),
)
SCALE = ScaleOutSettings(rules=RULES, partitions=8, lease_ttl=Duration(3), heartbeat=Duration(1),
                         clock_skew=Duration(0.5), evaluate_every=Duration(1), settle=Duration(6 * 3600))


def settings_for(url: str, tag: str) -> ElasticSettings:
    return ElasticSettings(
        hosts=[url], number_of_replicas=0, events_data_stream=f"logs-neo_auditd.{tag}-default",
        alerts_index=f"neo-{tag}-alerts", incidents_index=f"neo-{tag}-incidents",
        leases_index=f"neo-{tag}-leases", scale_out=SCALE)


def worker_main(raw: str) -> None:
    """A daemon's cluster detector in its own process, until it is killed."""
    args = json.loads(raw)
    settings = settings_for(args["url"], args["tag"])
    detector = ClusterDetector(build_client(settings), settings, agent=args["agent"], clock=lambda: EVALUATED_AT)
    detector.start()
    while True:
        time.sleep(1)


def spawn(url: str, tag: str, agent: str, log_dir: Path) -> subprocess.Popen:
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_elastic_scaleout as t; t.worker_main(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log_dir / f"{agent}.log", "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-c", code, json.dumps({"url": url, "tag": tag, "agent": agent})],
                                env=env, stdout=log, stderr=subprocess.STDOUT)


def expected_alert_ids(events: list[AccessEvent]) -> set[str]:
    """The oracle: the rules counted in Python over the same events."""
    expected = set()
    for rule in RULES:
        windows = windows_to_evaluate(rule, EVALUATED_AT, SCALE.settle.timedelta)
        for window in windows:
            per_actor: dict[str, list[AccessEvent]] = collections.defaultdict(list)
            for e in events:
                if window.start <= e.timestamp < window.end and all(
                        getattr(e, FIELDS[name].attr) == value for name, value in rule.filter.items()):
                    per_actor[e.user_id].append(e)
            for actor, mine in per_actor.items():
                value = len({s for e in mine for s in e.subject_ids}) if rule.distinct else len(mine)
                if value >= rule.threshold:
                    expected.add(alert_id(f"cluster:{rule.id}", rule.group_by, actor, window.key))
    return expected


def alerts_in(es: Elasticsearch, index: str) -> dict[str, dict]:
    es.indices.refresh(index=index)
    return {hit["_id"]: hit["_source"] for hit in helpers.scan(es, index=index, query={"query": {"match_all": {}}})}


def owners(es: Elasticsearch, settings: ElasticSettings) -> dict[int, str | None]:
    leases = LeaseManager(es, settings.leases_index, SCALE, "observer").read_leases()
    now = int(time.time() * 1000)
    return {lease.partition: lease.owner if lease.expires_at_ms > now else None for lease in leases}


def actors_of(es: Elasticsearch, settings: ElasticSettings, partitions: set[int]) -> list[str]:
    """Which actors Elasticsearch hashes into these partitions."""
    found = []
    for partition in sorted(partitions):
        response = es.search(index=settings.events_data_stream, size=0, aggs={"a": {"terms": {
            "field": "user.id", "size": 1000, "include": {"partition": partition, "num_partitions": SCALE.partitions}}}})
        found += [b["key"] for b in response["aggregations"]["a"]["buckets"]]
    return found


def wait_for(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_killed_daemons_share_is_taken_over_and_every_alert_exists_once(
        elasticsearch_url: str, tmp_path: Path) -> None:
    tag = unique_name("s")
    settings = settings_for(elasticsearch_url, tag)
    es = build_client(settings)
    templates.install(es, settings)
    events = list(synthetic_events(3000, spacing=dt.timedelta(seconds=1)))  # T0 .. T0+50 min
    helpers.bulk(es, event_actions(events, settings.events_data_stream), refresh=True)
    before = expected_alert_ids(events)
    assert len(before) > 20  # the rules do fire on this data

    workers = {agent: spawn(elasticsearch_url, tag, agent, tmp_path) for agent in ("daemon-a", "daemon-b")}
    try:
        wait_for(lambda: sorted(collections.Counter(owners(es, settings).values()).values()) == [4, 4]
                 and None not in owners(es, settings).values(), 60, "two shares of four partitions")
        wait_for(lambda: set(alerts_in(es, settings.alerts_index)) == before, 60, "the alerts of both shares")

        share_a = {p for p, owner in owners(es, settings).items() if owner == "daemon-a"}
        workers["daemon-a"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        # activity, after the kill, of employees whose partitions daemon-a held
        victims = actors_of(es, settings, share_a)[:3]
        burst = [AccessEvent(timestamp=T0 + dt.timedelta(hours=2, seconds=i), action="read", user_id=actor,
                             subject_ids=(f"p:late{actor}{i}",), event_id=f"feedbeef:{actor}:{i}")
                 for actor in victims for i in range(10)]
        helpers.bulk(es, event_actions(burst, settings.events_data_stream), refresh=True)
        after = expected_alert_ids(events + burst)
        assert len(after - before) == len(victims)

        wait_for(lambda: set(owners(es, settings).values()) == {"daemon-b"}, 30, "daemon-b to own every partition")
        takeover_s = time.monotonic() - killed
        wait_for(lambda: set(alerts_in(es, settings.alerts_index)) == after, 30, "the alerts after the takeover")
        time.sleep(3)  # a few more rounds of re-evaluation: still nothing doubled
    finally:
        for worker in workers.values():
            worker.kill()
            worker.wait()

    stored = alerts_in(es, settings.alerts_index)
    assert set(stored) == after  # none lost, none extra
    windows = collections.Counter((d["rule"]["id"], d["user"]["id"], d["neo"]["alert"]["window"]["start"])
                                  for d in stored.values())
    assert max(windows.values()) == 1  # one alert per rule, actor and window
    assert {stored[i]["agent"]["name"] for i in after - before} == {"daemon-b"}
    ttl = SCALE.lease_ttl.seconds + SCALE.clock_skew.seconds + SCALE.heartbeat.seconds
    assert takeover_s < ttl + 3, f"takeover took {takeover_s:.1f} s"
    print(f"takeover in {takeover_s:.1f} s (lease_ttl {SCALE.lease_ttl.seconds:g} s)")


def test_leases_share_fairly_and_expired_ones_are_taken_over(elasticsearch_url: str) -> None:
    settings = settings_for(elasticsearch_url, unique_name("l"))
    es = build_client(settings)
    templates.install(es, settings)
    now = [1_000_000]
    a = LeaseManager(es, settings.leases_index, SCALE, "a", wall_ms=lambda: now[0])
    b = LeaseManager(es, settings.leases_index, SCALE, "b", wall_ms=lambda: now[0])

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
    managers = [LeaseManager(build_client(settings), settings.leases_index, SCALE, f"d{i}") for i in range(4)]
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


def an_alert(n: int, rule: str = "many-reads") -> Alert:
    return Alert(alert_id=f"{rule}-{n}", rule_id=rule, rule_kind="threshold", severity="high",
                 title="Many reads", timestamp=T0 + dt.timedelta(minutes=n), event_ids=(f"e:{n}",),
                 actor="E1001", categories=("identity",), record_count=n)


def test_windows_cover_the_settle_period_and_the_open_window() -> None:
    rule = RULES[0]  # 10 min windows
    now = ORIGIN + dt.timedelta(days=20000, minutes=35)
    windows = windows_to_evaluate(rule, now, dt.timedelta(minutes=15))
    assert [(w.start - now).total_seconds() / 60 for w in windows] == [-15, -5]
    assert windows[0].end > now - dt.timedelta(minutes=15) >= windows[0].start
    assert windows[-1].start <= now < windows[-1].end  # the open window: alerts as soon as crossed


def test_every_daemon_reads_every_cluster_alert_back_and_stop_releases(elasticsearch_url: str) -> None:
    """Cluster alerts enter each daemon's correlator from the alerts index: whichever
    daemon evaluated a window, every daemon gets the alert, each once per reading."""
    settings = settings_for(elasticsearch_url, unique_name("d"))
    es = build_client(settings)
    templates.install(es, settings)
    events = list(synthetic_events(3000, spacing=dt.timedelta(seconds=1)))
    helpers.bulk(es, event_actions(events, settings.events_data_stream), refresh=True)
    detector = ClusterDetector(es, settings, agent="solo", clock=lambda: EVALUATED_AT)
    detector.start()
    try:
        wait_for(lambda: detector.last_report is not None and len(detector.last_report.partitions) == 8,
                 30, "a round over every partition")
    finally:
        detector.stop()  # a clean stop hands the partitions over at once
    assert set(owners(es, settings).values()) == {None}
    es.indices.refresh(index=settings.alerts_index)

    expected = sorted(expected_alert_ids(events))
    for reader_agent in ("daemon-a", "daemon-b"):  # neither evaluated anything
        follower = ClusterAlertFollower(ClusterAlertReader(build_client(settings), settings.alerts_index),
                                        every_s=1, position=None)
        follower.poll_once()
        alerts, position = follower.take()
        assert sorted(a.alert_id for a in alerts) == expected, reader_agent
        assert all(a.rule_kind == "threshold" and a.actor for a in alerts)
        follower.poll_once()  # from the position on: only the look-back again, nothing new
        again, _ = follower.take()
        assert set(a.alert_id for a in again) <= set(expected)
        assert position is not None
