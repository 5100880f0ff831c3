"""Rules with `scope: cluster` against the real Elasticsearch: one rule language, run
locally or by the lease holder over every host's events, with the same alerts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest
from elasticsearch import helpers

from auditd.config.located import Problems
from auditd.config.typed import Duration
from auditd.correlate import Correlator
from auditd.correlate.settings import CorrelateSettings
from auditd.detect import KindContext, load_rules
from auditd.detect.state import StateStore
from auditd.elastic import templates
from auditd.elastic.client import build_client
from auditd.elastic.cluster_alerts import ClusterAlertReader
from auditd.elastic.cluster_rules import ClusterRuleEvaluator
from auditd.elastic.cluster_state import RuleStateDocuments
from auditd.elastic.documents import event_actions
from auditd.elastic.settings import ClusterSettings
from auditd.elastic.testing import scratch_settings, unique_name
from auditd.event import AccessEvent
from auditd.ops.cluster_rules import render_lines
from auditd.store.migrations import migrate

pytestmark = pytest.mark.elasticsearch

T0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=dt.timezone.utc)  # 10:00 in Shanghai
NOW = T0 + dt.timedelta(days=3)  # the evaluators' clock: every event has settled
CLUSTER = ClusterSettings(partitions=1, lease_ttl=Duration(3), heartbeat=Duration(1), clock_skew=Duration(0.5),
                          evaluate_every=Duration(1), settle=Duration(600), start_at="beginning", page_size=500)

HOSTS = [f"crm-web-{n}" for n in range(1, 6)]

RULES = {
    "event_count": """
- rule: many_exports
  desc: Many exports by one employee within an hour.
  kind: threshold
  params: {gte: 40, timespan: 1h}
  condition: event.action = export
  severity: high
  tags: [incubating]
""",
    "value_count": """
- rule: many_customers
  desc: Many distinct customers read by one employee within an hour, across hosts.
  kind: threshold
  params: {gte: 100, distinct: neo.data.subject_ids, timespan: 1h}
  condition: event.action in (read, export) and neo.data.record_count >= 1
  severity: high
  tags: [incubating]
""",
    "sequence": """
- rule: denied_then_export
  desc: Denied reads, then an export, within ten minutes.
  kind: sequence
  params:
    timespan: 10m
    steps:
      - {name: denied, where: {event.outcome: denied}, count: 3}
      - {name: export, where: {event.action: export}}
  condition: event.action in (read, export)
  severity: high
  tags: [incubating]
""",
    "temporal": """
- rule: search_and_print
  desc: A search and a print in any order within five minutes.
  kind: sequence
  params:
    timespan: 5m
    ordered: false
    steps:
      - {name: search, where: {event.action: search}}
      - {name: print, where: {event.action: print}}
  condition: event.action in (search, print)
  severity: medium
  tags: [incubating]
""",
    "first_seen": """
- rule: new_host_for_actor
  desc: An employee on an application server they never used before.
  kind: first_seen
  params: {field: host.name, learning: 1h}
  condition: event.action = read
  severity: low
  tags: [incubating]
""",
}


def scoped(text: str, scope: str) -> str:
    return text.replace("  kind:", f"  scope: {scope}\n  kind:", 1)


def ruleset_of(tmp_path, text: str, scope: str, conn=None):
    folder = tmp_path / f"rules-{scope}-{unique_name('r')}"
    folder.mkdir()
    (folder / "rules.yaml").write_text(scoped(text, scope))
    state = StateStore()
    if conn is None:
        import sqlite3

        conn = sqlite3.connect(":memory:", isolation_level=None)
        migrate(conn)
    state.bind(conn)
    problems = Problems()
    rules = load_rules([folder], problems, context=KindContext(state=state))
    problems.raise_if_any()
    return rules, state, conn


def local_alerts(tmp_path, text: str, events: list[AccessEvent]) -> list:
    """The rule run locally (scope local), in one batch per host or over all events."""
    rules, state, conn = ruleset_of(tmp_path, text, "local")
    alerts = rules.evaluate_all(events)
    conn.execute("BEGIN")
    state.flush(conn)
    conn.execute("COMMIT")
    return alerts


def event(i: int, t: dt.datetime, actor: str, host: str, action: str = "read", *, outcome: str = "success",
          subjects: tuple[str, ...] = ()) -> AccessEvent:
    return AccessEvent(timestamp=t, action=action, outcome=outcome, user_id=actor, user_roles=("cs-agent",),
                       host_name=host, service_name="crm", resource_type="customer",
                       subject_ids=subjects, record_count=max(1, len(subjects)), categories=("identity",),
                       event_id=f"{host}:{i:08d}", log_path="/var/log/crm/access.log", log_offset=i,
                       dataset="neo-crm", actor_known=True, actor_status="active", entitlement_granted=True)


def mixed_events(seed: int, count: int = 3000) -> list[AccessEvent]:
    """Several actors on five hosts, bursts of every shape the rules look for, times
    strictly increasing (a millisecond or more apart: one order everywhere)."""
    rng = random.Random(seed)
    out, t = [], T0
    actions = ["read"] * 6 + ["export", "search", "print"]
    for i in range(count):
        t += dt.timedelta(milliseconds=rng.choice([5, 200, 900, 4000, 30_000]))
        actor = f"E{1000 + rng.randrange(6)}"
        outcome = "denied" if rng.random() < 0.08 else "success"
        subjects = tuple(f"p:{rng.randrange(400):04d}" for _ in range(rng.randint(1, 3)))
        out.append(event(i, t, actor, rng.choice(HOSTS), rng.choice(actions), outcome=outcome, subjects=subjects))
    # window edges: an actor whose 40th export falls exactly one hour after the first
    edge = T0 + dt.timedelta(hours=30)
    for j in range(40):
        at = edge + (dt.timedelta(hours=1) if j == 39 else dt.timedelta(seconds=60 * j))
        out.append(event(count + j, at, "E2000", HOSTS[j % 5], "export", subjects=(f"p:9{j:03d}",)))
    # first seen: two actors on a server none of them used before
    for j, actor in enumerate(("E1001", "E1003")):
        out.append(event(count + 100 + j, T0 + dt.timedelta(hours=40, minutes=j), actor, "crm-batch-1",
                         subjects=("p:0001",)))
    return sorted(out, key=lambda e: (e.timestamp, e.event_id))


def ship(es, settings, events: list[AccessEvent]) -> None:
    helpers.bulk(es, event_actions(events, settings.events_data_stream, agent="test"), refresh=True)


def fresh(url: str, **cluster):
    settings = scratch_settings(url, cluster=dataclasses.replace(CLUSTER, **cluster))
    es = build_client(settings)
    templates.install(es, settings)
    return settings, es


def evaluate_until_caught_up(evaluator: ClusterRuleEvaluator, rounds: int = 200):
    evaluator.leases.heartbeat()
    for _ in range(rounds):
        costs = evaluator.evaluate_owned()
        if all(not c.behind and c.held and c.last_error is None for c in costs):
            return costs
    raise AssertionError(f"not caught up: {costs}")


def cluster_alerts(es, settings) -> dict[str, object]:
    es.indices.refresh(index=settings.alerts_index)
    reader = ClusterAlertReader(es, settings.alerts_index, settings.fleet)
    return {a.alert_id: a for a in reader.read(None).alerts}


def shape(alert) -> tuple:
    return (alert.alert_id, alert.rule_id, alert.timestamp, alert.actor, alert.event_ids, alert.reason)


# -- the acceptance: five hosts, one actor ---------------------------------------------------

def test_five_hosts_one_actor_alerts_once_on_the_cluster_and_never_per_host(tmp_path, elasticsearch_url):
    """A clerk reads 30 customers on each of five servers in one hour: under every
    host's threshold (100), over the fleet's."""
    rng = random.Random(5)
    events, t, i = [], T0, 0
    for h, host in enumerate(HOSTS):
        for k in range(30):
            t += dt.timedelta(seconds=20)
            events.append(event(i, t, "E10057", host, subjects=(f"p:{h}-{k}",)))
            i += 1
        for _ in range(40):  # colleagues' normal work on the same hosts
            t += dt.timedelta(seconds=1)
            events.append(event(i, t, f"E{rng.randrange(2000, 2010)}", host, subjects=(f"p:x{rng.randrange(50)}",)))
            i += 1
    text = RULES["value_count"]
    per_host = [a for host in HOSTS for a in local_alerts(tmp_path, text, [e for e in events if e.host_name == host])]
    assert per_host == []

    settings, es = fresh(elasticsearch_url)
    ship(es, settings, events)
    rules, _, _ = ruleset_of(tmp_path, text, "cluster")
    assert rules.evaluate_all(events) == []  # the daemon's own per-event path leaves it out
    evaluator = ClusterRuleEvaluator(es, settings, rules, agent="host-a", clock=lambda: NOW)
    evaluate_until_caught_up(evaluator)
    evaluate_until_caught_up(evaluator)  # a second round finds nothing new
    alerts = cluster_alerts(es, settings)
    assert len(alerts) == 1
    (alert,) = alerts.values()
    assert alert.actor == "E10057" and alert.rule_id == "many_customers"
    assert "100 distinct neo.data.subject_ids" in alert.reason

    # through the one seam, like a local alert: one incident
    import sqlite3

    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    correlator = Correlator(CorrelateSettings())
    conn.execute("BEGIN")
    correlator.apply(conn, list(alerts.values()))
    correlator.apply(conn, list(cluster_alerts(es, settings).values()))  # read again: nothing new
    conn.execute("COMMIT")
    assert conn.execute("SELECT COUNT(*), SUM(alert_count) FROM incidents").fetchone() == (1, 1)
    assert conn.execute("SELECT actor FROM incidents").fetchone() == ("E10057",)


# -- one rule, two places: the same alerts ---------------------------------------------------

@pytest.mark.parametrize("kind", sorted(RULES))
def test_local_and_cluster_evaluation_give_the_same_alerts(tmp_path, elasticsearch_url, kind):
    events = mixed_events(seed=len(kind))
    local = local_alerts(tmp_path, RULES[kind], events)
    assert local, f"the events should make the {kind} rule alert"

    settings, es = fresh(elasticsearch_url, max_events_per_round=700)  # several rounds, state carried over
    ship(es, settings, events)
    rules, _, _ = ruleset_of(tmp_path, RULES[kind], "cluster")
    evaluator = ClusterRuleEvaluator(es, settings, rules, agent="host-a", clock=lambda: NOW)
    costs = evaluate_until_caught_up(evaluator)
    remote = cluster_alerts(es, settings)
    assert sorted(map(shape, remote.values())) == sorted(map(shape, local))
    (cost,) = costs
    assert cost.late_events == 0 and cost.query_seconds > 0


def test_the_window_edge_is_inclusive_on_the_cluster_too(tmp_path, elasticsearch_url):
    events = mixed_events(seed=1)
    edge = [a for a in local_alerts(tmp_path, RULES["event_count"], events) if a.actor == "E2000"]
    assert len(edge) == 1  # the 40th export exactly one hour after the first
    settings, es = fresh(elasticsearch_url)
    ship(es, settings, [e for e in events if e.user_id == "E2000"])
    rules, _, _ = ruleset_of(tmp_path, RULES["event_count"], "cluster")
    evaluate_until_caught_up(ClusterRuleEvaluator(es, settings, rules, agent="a", clock=lambda: NOW))
    assert set(cluster_alerts(es, settings)) == {edge[0].alert_id}


# -- state and failover ------------------------------------------------------------------------

class Crash(Exception):
    pass


def test_a_holder_that_dies_between_alerts_and_position_doubles_nothing(tmp_path, elasticsearch_url):
    """The alerts of a round are created, then the holder dies before its position moves:
    the next holder reads those events again from the old position and state, finds the
    same alerts (already there), and goes on. Every alert once, none missing."""
    events = mixed_events(seed=9)
    local = {a.alert_id for a in local_alerts(tmp_path, RULES["value_count"], events)}
    settings, es = fresh(elasticsearch_url, max_events_per_round=400)
    ship(es, settings, events)
    rules, _, _ = ruleset_of(tmp_path, RULES["value_count"], "cluster")
    clock = [NOW]
    a = ClusterRuleEvaluator(es, settings, rules, agent="a", clock=lambda: clock[0], wall_ms=lambda: 1_000_000)
    a.leases.heartbeat()
    for _ in range(3):
        a.evaluate_owned()
    saves = [0]
    real_save = a.documents.save

    def dies_at_the_second_save(*args, **kwargs):
        saves[0] += 1
        if saves[0] == 2:
            raise Crash()
        return real_save(*args, **kwargs)

    a.documents.save = dies_at_the_second_save
    a.evaluate_owned()
    with pytest.raises(Crash):
        a.evaluate_owned()  # its alerts are in the index, its position is not
    created_by_a = set(cluster_alerts(es, settings))

    # b takes over once a's lease expires (a's clock froze with it)
    b = ClusterRuleEvaluator(es, settings, rules, agent="b", clock=lambda: clock[0], wall_ms=lambda: 1_010_000)
    evaluate_until_caught_up(b)
    es.indices.refresh(index=settings.alerts_index)
    docs = es.search(index=settings.alerts_index, size=1000, query={"match_all": {}})["hits"]["hits"]
    ids = [h["_id"] for h in docs]
    assert len(ids) == len(set(ids)) == len(local)
    assert set(ids) == local
    assert created_by_a and created_by_a < set(ids)
    head = RuleStateDocuments(es, settings.leases_index, settings.fleet).head(
        "many_customers", b._runners["many_customers"].rule_hash)
    selected = sum(1 for e in events if e.action in ("read", "export"))  # what the condition's query reads
    assert head.owner == "b" and head.evaluated == selected
    print(f"alerts: {len(local)} expected, {len(created_by_a)} created before the crash, {len(ids)} in the index")


# -- cost, late events, fleets -------------------------------------------------------------------

def test_late_events_are_counted_and_an_overrun_is_reported(tmp_path, elasticsearch_url):
    events = mixed_events(seed=2, count=1200)
    settings, es = fresh(elasticsearch_url, evaluate_every=Duration(0.001))
    early, late = events[:800], events[800:]
    ship(es, settings, late)  # the later half arrives first; then a host ships its backlog
    rules, _, _ = ruleset_of(tmp_path, RULES["value_count"], "cluster")
    evaluator = ClusterRuleEvaluator(es, settings, rules, agent="a", clock=lambda: NOW)
    evaluate_until_caught_up(evaluator)
    ship(es, settings, early)
    (cost,) = evaluate_until_caught_up(evaluator)
    selected = sum(1 for e in early if e.action in ("read", "export"))
    assert cost.late_events == selected
    assert cost.overruns >= 1  # every round is longer than a millisecond
    assert cost.lag_seconds is not None and cost.cursor_time is not None
    text = "\n".join(render_lines({"evaluate_every_s": 0.001, "settle_s": 600, "rules": [cost.as_dict()]}))
    assert f"{selected:,} events reached the cluster after the rule had passed their time" in text
    assert "rounds took longer than" in text


def test_two_fleets_on_one_cluster_are_apart(tmp_path, elasticsearch_url):
    """Same dataset, same alerts and leases indices, two namespaces: each fleet's rule
    sees its own events, and reads back only its own cluster alerts."""
    base = scratch_settings(elasticsearch_url, cluster=CLUSTER)
    stream = base.events_data_stream.rsplit("-", 1)[0]
    east = dataclasses.replace(base, events_data_stream=f"{stream}-east")
    west = dataclasses.replace(base, events_data_stream=f"{stream}-west")
    es = build_client(east)
    templates.install(es, east)
    templates.install(es, west)
    events = mixed_events(seed=4)
    ship(es, east, events)
    ship(es, west, [e for e in events if e.user_id != "E2000"])
    expected = {a.alert_id for a in local_alerts(tmp_path, RULES["event_count"], events)}
    rules, _, _ = ruleset_of(tmp_path, RULES["event_count"], "cluster")
    for settings, agent in ((east, "east-1"), (west, "west-1")):
        evaluate_until_caught_up(ClusterRuleEvaluator(es, settings, rules, agent=agent, clock=lambda: NOW))
    east_alerts, west_alerts = cluster_alerts(es, east), cluster_alerts(es, west)
    assert set(east_alerts) == expected
    assert {a.actor for a in east_alerts.values()} - {a.actor for a in west_alerts.values()} == {"E2000"}
    assert not set(east_alerts) & set(west_alerts) or all(
        east_alerts[i].event_ids == west_alerts[i].event_ids for i in set(east_alerts) & set(west_alerts))
    es.indices.refresh(index=east.leases_index)
    owners = es.search(index=east.leases_index, size=100, query={"term": {"kind": "lease"}})["hits"]["hits"]
    assert {h["_source"]["group"] for h in owners} == {"east", "west"}


def test_a_runtime_suppression_holds_back_a_cluster_alert_as_it_does_a_local_one(tmp_path, elasticsearch_url):
    """`suppress add` for one actor: the lease holder's round creates every other
    actor's alerts and none of that actor's, and counts what it held back."""
    from auditd.detect import suppressions

    events = mixed_events(seed=3)
    local = local_alerts(tmp_path, RULES["value_count"], events)
    quiet = local[0].actor
    assert any(a.actor != quiet for a in local), "the scenario should alert on more than one actor"

    settings, es = fresh(elasticsearch_url)
    ship(es, settings, events)
    rules, _, conn = ruleset_of(tmp_path, RULES["value_count"], "cluster")
    suppressions.add(conn, rule_id="many_customers", match={"user.id": quiet}, owner="secops@example.com",
                     reason="stock-take, ticket OPS-12", expires_at=NOW + dt.timedelta(days=30),
                     now=T0 - dt.timedelta(days=1))
    rules.set_suppressions(suppressions.compile_suppressions(suppressions.read_all(conn)))
    evaluator = ClusterRuleEvaluator(es, settings, rules, agent="host-a", clock=lambda: NOW)
    (cost,) = evaluate_until_caught_up(evaluator)
    remote = cluster_alerts(es, settings)
    assert sorted(map(shape, remote.values())) == sorted(shape(a) for a in local if a.actor != quiet)
    assert cost.suppressed == sum(1 for a in local if a.actor == quiet) > 0


BASELINE = """
- rule: exports_far_above_usual_fleet
  desc: An hour with far more exports than the employee's usual, over every server.
  kind: baseline
  params: {measure: events, bucket: 1h, min_days: 5, floor: 20}
  condition: event.action = export
  severity: high
  tags: [incubating]
"""


def spread_exports(seed: int = 9) -> list[AccessEvent]:
    """Seven working days of an analyst's usual exports (about three an hour, 10:00 to
    17:00 Shanghai) on five servers, colleagues beside them, then on the eighth day an
    hour of 60 exports, 12 on each server: under every server's floor (20), far over the
    fleet's usual."""
    rng = random.Random(seed)
    out, i = [], 0
    for day in range(8):
        start = T0 + dt.timedelta(days=day)  # 10:00 Shanghai
        for hour in range(7):
            count = 60 if (day == 7 and hour == 1) else rng.randint(2, 4)
            for k in range(count):
                at = start + dt.timedelta(hours=hour, seconds=(3590 * (k + 1)) // (count + 1))
                out.append(event(i, at, "E3000", HOSTS[k % 5], "export", subjects=(f"p:{day}{hour}{k:03d}",)))
                i += 1
            for _ in range(rng.randint(1, 3)):  # colleagues' exports in the same hour
                at = start + dt.timedelta(hours=hour, seconds=rng.randrange(1, 3599), milliseconds=rng.randrange(999))
                out.append(event(i, at, f"E{rng.randrange(3001, 3004)}", rng.choice(HOSTS), "export",
                                 subjects=(f"p:x{i}",)))
                i += 1
    return sorted(out, key=lambda e: (e.timestamp, e.event_id))


def test_a_baseline_runs_on_the_cluster_finds_the_hour_no_server_sees_and_survives_a_handover(tmp_path,
                                                                                             elasticsearch_url):
    events = spread_exports()
    per_host = [a for host in HOSTS
                for a in local_alerts(tmp_path, BASELINE, [e for e in events if e.host_name == host])]
    assert per_host == []
    local = local_alerts(tmp_path, BASELINE, events)  # one daemon that saw every server's events
    assert [a.actor for a in local] == ["E3000"]
    assert local[0].reason.startswith("20 accesses this hour (Mon 11:00); E3000's usual around 11:00")

    settings, es = fresh(elasticsearch_url, max_events_per_round=30)  # many rounds: the profiles carried over
    ship(es, settings, events)
    clock = lambda: T0 + dt.timedelta(days=10)  # noqa: E731
    rules, _, _ = ruleset_of(tmp_path, BASELINE, "cluster")
    first = ClusterRuleEvaluator(es, settings, rules, agent="host-a", clock=clock)
    first.leases.heartbeat()
    assert len(events) > 300
    for _ in range(6):  # about four days of profiles learnt, then the holder hands over
        (cost,) = first.evaluate_owned()
        assert cost.held and cost.last_error is None
    assert cluster_alerts(es, settings) == {}
    first.stop()  # releases the lease; the next holder reads the profiles from Elasticsearch
    rules_b, _, _ = ruleset_of(tmp_path, BASELINE, "cluster")
    second = ClusterRuleEvaluator(es, settings, rules_b, agent="host-b", clock=clock)
    evaluate_until_caught_up(second, rounds=400)
    remote = cluster_alerts(es, settings)
    assert sorted(map(shape, remote.values())) == sorted(map(shape, local))
