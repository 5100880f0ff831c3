"""Rules with ``scope: cluster``: the behaviour kinds over every host's events.

A clerk who exports 30 records from each of five application servers stays under
every host's threshold; the same rule over the fleet's events does not. Such a rule
is written in the rule files like any other, with ``scope: cluster``: the daemons
leave it out of their per-event path, and the daemon holding its lease
(``leases.py``; a rule belongs to partition ``stable_hash(id) % partitions``) runs it
here, against the fleet's events data stream.

Same semantics, not a second implementation: the lease holder reads the events the
rule's condition can select (``rule_query.prefilter``, a superset; the compiled
predicate decides) in one total order, ``@timestamp`` then ``event.id``, and puts
them through the rule exactly as a local daemon does (condition, exceptions, the
kind's detector with its state, the alert with its id derived from the events it
cites). So windows, their edges, group keys and distinct counts are the local kind's,
and the same events give the same alerts, with the same ids, locally and here. (The
local order is the file's; events of one millisecond are ordered by id here.)

Each round reads what has settled (``@timestamp`` at most ``settle`` ago) past the
rule's position, at most ``max_events_per_round`` events, creates the alerts
(create-only in the alerts index, marked with the fleet) and then moves the position
and state in Elasticsearch (``cluster_state.py``), so a failover goes on from there.
Every daemon reads the cluster alerts back into its own correlator
(``cluster_alerts.py``): they become incidents through the one seam, like local ones.

What it costs is kept per rule (``RuleCost``): query time, events, lag behind the
newest event of the stream, rounds longer than ``evaluate_every`` (reported, the next
round simply starts late) and late events: events that reached the cluster after the
rule had passed their time, which only ``replay`` evaluates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import ApiError, Elasticsearch, TransportError

from auditd.detect.alert import Alert
from auditd.detect.kind_support import stable_hash
from auditd.detect.ruleset import CompiledRule, RuleSet
from auditd.detect.state import StateStore
from auditd.elastic import templates
from auditd.elastic.cluster_state import (
    Head,
    RuleStateDocuments,
    StateMissing,
    dump_rows,
    load_rows,
    newest_time,
)
from auditd.elastic.documents import alert_document, encode
from auditd.elastic.ecs_format import decode_document
from auditd.elastic.leases import LeaseManager
from auditd.elastic.rule_query import prefilter
from auditd.elastic.settings import ElasticSettings
from auditd.errors import DecodeError

log = logging.getLogger("neo_auditd.elastic.cluster")

TIME_FIELD = "@timestamp"
TIEBREAKER = "event.id"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _wall_ms() -> int:
    return int(time.time() * 1000)


def partition_of(rule_id: str, partitions: int) -> int:
    """The lease partition a cluster rule belongs to: the same on every daemon."""
    return stable_hash(rule_id) % partitions


@dataclass(slots=True)
class RuleCost:
    """What one cluster rule costs and how far behind it is (status, metrics)."""

    rule_id: str
    held: bool = False  # this daemon holds its lease
    rounds: int = 0
    events: int = 0  # evaluated by this daemon since it started
    alerts: int = 0  # created by this daemon (a 409, one already there, is not counted)
    query_seconds: float = 0.0  # searches of the last round
    round_seconds: float = 0.0
    overruns: int = 0  # rounds longer than evaluate_every
    behind: bool = False  # the last round stopped at max_events_per_round
    cursor_time: str | None = None  # the last event evaluated
    newest_time: str | None = None  # the newest event of the stream
    lag_seconds: float | None = None
    late_events: int = 0  # behind the position, never evaluated here (see replay)
    suppressed: int = 0  # alerts held back by a runtime suppression of this daemon's store
    unreadable: int = 0  # documents that are no access event
    last_round_at: str | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class _Runner:
    """One cluster rule with its own detector and state (never the pipeline's)."""

    rule: CompiledRule
    store: StateStore
    rule_hash: str
    head: Head | None = None  # as this daemon last read or wrote it
    loaded: bool = False
    cost: RuleCost = field(default_factory=lambda: RuleCost(""))


class ClusterRuleEvaluator:
    """Runs the ``scope: cluster`` rules whose leases this daemon holds.

    ``evaluate_owned()`` does one round; ``start()`` runs heartbeats and rounds on
    threads. Construction does no I/O.
    """

    def __init__(self, es: Elasticsearch, settings: ElasticSettings, ruleset: RuleSet, *, agent: str,
                 clock: Callable[[], dt.datetime] = _utc_now, wall_ms: Callable[[], int] = _wall_ms,
                 installer: templates.Installer | None = None,
                 on_round: Callable[[list[RuleCost]], None] | None = None):
        self.es = es
        self.settings = settings
        self.cluster = settings.cluster
        self.agent = agent
        self.clock = clock
        self.wall_ms = wall_ms
        self.installer = installer or templates.Installer(es, settings)
        self.leases = LeaseManager(es, settings.leases_index, self.cluster, agent, group=settings.fleet,
                                   wall_ms=wall_ms)
        self.documents = RuleStateDocuments(es, settings.leases_index, settings.fleet)
        self.on_round = on_round
        self._lock = threading.Lock()
        self._runners: dict[str, _Runner] = {}
        self._ruleset = ruleset
        self.set_rules(ruleset)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- rules ---------------------------------------------------------------------------
    def set_rules(self, ruleset: RuleSet) -> None:
        """Take a reloaded rule set: a rule whose content did not change keeps its runner."""
        runners = {}
        for rule in ruleset.scoped("cluster"):
            store = StateStore.in_memory()
            context = dataclasses.replace(ruleset.context, state=store)
            detector = ruleset.kinds[rule.spec.kind].build(rule.spec, rule.spec.params, context)
            (state,) = store.rules or (None,)
            rule_hash = state.rule_hash if state is not None else "stateless"
            old = self._runners.get(rule.id)
            if old is not None and old.rule_hash == rule_hash:
                runners[rule.id] = dataclasses.replace(old, rule=dataclasses.replace(old.rule, spec=rule.spec))
                continue
            own = dataclasses.replace(rule, detector=detector, many=getattr(detector, "many", None))
            runners[rule.id] = _Runner(own, store, rule_hash, cost=RuleCost(rule.id))
        with self._lock:
            self._runners = runners
            self._ruleset = ruleset

    def costs(self) -> list[RuleCost]:
        with self._lock:
            return [dataclasses.replace(r.cost) for r in self._runners.values()]

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Heartbeats and rounds, each on its own thread: a slow round must not delay
        the renewal of the leases it depends on."""
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._loop, args=(self._heartbeat, self.cluster.heartbeat.seconds),
                             name="cluster-leases", daemon=True),
            threading.Thread(target=self._loop, args=(self.evaluate_owned, self.cluster.evaluate_every.seconds),
                             name="cluster-rules", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.settings.request_timeout_s + 5)
        self._threads = []
        if release:
            try:
                self.leases.release_all()
            except Exception:  # noqa: BLE001 - the leases expire by themselves
                log.warning("cluster rule leases not released", exc_info=True)

    def _heartbeat(self) -> None:
        self.installer.ensure()
        self.leases.heartbeat()

    def _loop(self, work: Callable[[], object], every_s: float) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                work()
            except Exception:  # noqa: BLE001 - an outage must not end the thread
                log.exception("cluster rules: %s failed", getattr(work, "__name__", work))
            self._stop.wait(max(0.05, every_s - (time.monotonic() - started)))

    # -- a round ---------------------------------------------------------------------------
    def evaluate_owned(self) -> list[RuleCost]:
        """One round over every cluster rule whose lease this daemon holds."""
        with self._lock:
            runners = list(self._runners.values())
            ruleset = self._ruleset
        owned = self.leases.owned()
        newest = self._newest() if runners else None
        for runner in runners:
            held = partition_of(runner.rule.id, self.cluster.partitions) in owned
            runner.cost.held = held
            if not held:
                runner.loaded = False  # another daemon may move it on: read its head when it comes back
                continue
            try:
                self._evaluate(runner, ruleset, newest)
                runner.cost.last_error = None
            except (ApiError, TransportError, StateMissing) as exc:
                runner.loaded = False
                runner.cost.last_error = str(exc)[:300]
                log.warning("cluster rule %s not evaluated: %s", runner.rule.id, exc)
        costs = [dataclasses.replace(r.cost) for r in runners]
        if self.on_round is not None:
            self.on_round(costs)
        return costs

    def _evaluate(self, runner: _Runner, ruleset: RuleSet, newest: str | None) -> None:
        started = time.monotonic()
        cost = runner.cost
        rule_id, rule_hash = runner.rule.id, runner.rule_hash
        head = self.documents.head(rule_id, rule_hash)
        if not runner.loaded or head != runner.head:  # a first round, or another daemon moved it
            state = self.documents.load_state(rule_id, rule_hash, head) if head is not None else {}
            load_rows(runner.store.conn, rule_id, rule_hash, state)
            runner.store.bind(runner.store.conn)  # forget what was cached
            for rule_state in runner.store.rules:
                rule_state._forget_changes()
            runner.head, runner.loaded = head, True
        horizon = self.clock() - self.cluster.settle.timedelta
        start = head.start if head is not None else (
            None if self.cluster.start_at == "beginning" else horizon.isoformat())
        cursor = head.cursor if head is not None else None
        evaluated = head.evaluated if head is not None else 0
        query = self._query(runner.rule, start, horizon)
        alerts: list[Alert] = []
        seen = 0
        query_s = 0.0
        caught_up = False
        cursor_time = head.cursor_time if head is not None else None
        while seen < self.cluster.max_events_per_round:
            size = min(self.cluster.page_size, self.cluster.max_events_per_round - seen)
            asked = time.monotonic()
            response = self.es.search(index=self.settings.events_data_stream, query=query, size=size,
                                      sort=[{TIME_FIELD: "asc"}, {TIEBREAKER: "asc"}], search_after=cursor,
                                      track_total_hits=False, ignore_unavailable=True, allow_no_indices=True)
            query_s += time.monotonic() - asked
            hits = response.body["hits"]["hits"]
            for hit in hits:
                seen += 1
                cursor = hit["sort"]
                try:
                    event = decode_document(encode(hit["_source"]))
                except DecodeError:
                    cost.unreadable += 1
                    continue
                cursor_time = event.timestamp.astimezone(dt.timezone.utc).isoformat()
                alert = ruleset.check(runner.rule, event)
                if alert is None:
                    continue
                # after the detector, as locally: the key's state learns, only the alert is held back
                if ruleset.suppressed(runner.rule, event) is not None:
                    cost.suppressed += 1
                    continue
                alerts.append(alert)
            if len(hits) < size:
                caught_up = True
                break
        evaluated += seen
        created = self._create_alerts(alerts)
        late = None
        if caught_up and cursor:
            late, counted_s = self._late(query, start, cursor, evaluated)
            query_s += counted_s
        saved = True if (seen == 0 and head is not None) else self._save(
            runner, head, cursor, cursor_time, start, evaluated, len(created))
        cost.rounds += 1
        cost.events += seen
        cost.alerts += len(created)
        cost.query_seconds = round(query_s, 4)
        cost.behind = not caught_up
        cost.cursor_time = cursor_time
        cost.newest_time = newest
        cost.lag_seconds = _lag(newest, cursor_time, horizon)
        if late is not None:
            if late > cost.late_events:
                log.warning("cluster rule %s: %d events reached the cluster after the rule had passed their "
                            "time (older than the settle horizon): not evaluated; replay them to evaluate",
                            rule_id, late)
            cost.late_events = late
        cost.last_round_at = _utc_now().isoformat(timespec="seconds")
        cost.round_seconds = round(time.monotonic() - started, 4)
        if cost.round_seconds > self.cluster.evaluate_every.seconds:
            cost.overruns += 1
            log.warning("cluster rule %s: a round took %.1f s, longer than evaluate_every (%g s); it falls behind",
                        rule_id, cost.round_seconds, self.cluster.evaluate_every.seconds)
        if not saved:
            runner.loaded = False
            log.warning("cluster rule %s: another daemon moved its position; this round's state is dropped", rule_id)

    def _query(self, rule: CompiledRule, start: str | None, horizon: dt.datetime) -> dict[str, Any]:
        span: dict[str, str] = {"lte": horizon.isoformat()}
        if start is not None:
            span["gte"] = start
        filters: list[dict[str, Any]] = [{"range": {TIME_FIELD: span}}]
        selected = prefilter(rule.condition)
        if selected is not None:
            filters.append(selected)
        return {"bool": {"filter": filters}}

    def _late(self, query: dict[str, Any], start: str | None, cursor: list[Any],
              evaluated: int) -> tuple[int, float]:
        """Events at or before the position that were never read (they came late), and
        the seconds the count took. Called only when a round caught up, so no event of
        the position's millisecond is still to come."""
        filters = query["bool"]["filter"][1:]  # the condition's part; the time range is replaced
        span: dict[str, Any] = {"lte": _iso_ms(cursor[0])}
        if start is not None:
            span["gte"] = start
        asked = time.monotonic()
        answer = self.es.count(index=self.settings.events_data_stream, ignore_unavailable=True,
                               allow_no_indices=True,
                               query={"bool": {"filter": [{"range": {TIME_FIELD: span}}, *filters]}})
        return max(0, int(answer["count"]) - evaluated), time.monotonic() - asked

    def _newest(self) -> str | None:
        try:
            response = self.es.search(index=self.settings.events_data_stream, size=0, track_total_hits=False,
                                      aggs={"newest": {"max": {"field": TIME_FIELD}}},
                                      ignore_unavailable=True, allow_no_indices=True)
        except (ApiError, TransportError):
            return None
        value = response.body.get("aggregations", {}).get("newest", {}).get("value_as_string")
        return value

    def _create_alerts(self, alerts: list[Alert]) -> list[Alert]:
        """Create-only writes; the alerts that did not exist yet. Anything but 201 and
        409 fails the round: the position does not move, the next round tries again."""
        if not alerts:
            return []
        unique = list({a.alert_id: a for a in alerts}.values())
        lines = []
        ingested = _utc_now().isoformat(timespec="microseconds")
        for alert in unique:
            document = alert_document(alert, origin="cluster", agent=self.agent, ingested=ingested,
                                      extra={"fleet": self.settings.fleet})
            lines += [b'{"create":{"_id":' + encode(alert.alert_id) + b"}}", encode(document)]
        response = self.es.bulk(index=self.settings.alerts_index, operations=b"\n".join(lines) + b"\n",
                                filter_path="items.*.status,items.*.error.type")
        created = []
        for alert, item in zip(unique, response.body.get("items", [])):
            (answer,) = item.values()
            if answer["status"] == 201:
                created.append(alert)
            elif answer["status"] != 409:
                raise ApiError(f"alert {alert.alert_id} not written: {answer}", meta=response.meta,
                               body=response.body)
        return created

    def _save(self, runner: _Runner, head: Head | None, cursor: list[Any] | None, cursor_time: str | None,
              start: str | None, evaluated: int, created: int) -> bool:
        conn = runner.store.conn
        conn.execute("BEGIN")
        runner.store.flush(conn)
        conn.execute("COMMIT")
        state = dump_rows(conn, runner.rule.id, runner.rule_hash)
        forget = _forget_before(runner.rule, cursor_time)
        if forget is not None:
            stale = [k for k, v in state.items() if (newest_time(runner.rule.spec.kind, v) or 0.0) < forget]
            for key in stale:
                del state[key]
            if stale:
                conn.executemany("DELETE FROM detector_state WHERE rule_id = ? AND rule_hash = ? AND key = ?",
                                 [(runner.rule.id, runner.rule_hash, k) for k in stale])
                for rule_state in runner.store.rules:
                    rule_state._forget_changes()
        alerts = (head.alerts if head else 0) + created
        new = self.documents.save(runner.rule.id, runner.rule_hash, head, state, cursor=cursor,
                                  cursor_time=cursor_time, start=start, evaluated=evaluated, alerts=alerts,
                                  owner=self.agent, now_ms=self.wall_ms())
        if new is None:
            return False
        runner.head = new
        return True


def _forget_before(rule: CompiledRule, cursor_time: str | None) -> float | None:
    """Window kinds: a key whose newest entry is older than this behaves as a new one."""
    if cursor_time is None or rule.spec.kind not in ("threshold", "sequence"):
        return None
    params = rule.spec.params
    keep = max(params.timespan.seconds, (params.realert or params.timespan).seconds)
    return dt.datetime.fromisoformat(cursor_time).timestamp() - keep - 1.0


def _lag(newest: str | None, cursor_time: str | None, horizon: dt.datetime) -> float | None:
    if newest is None:
        return None
    newest_at = dt.datetime.fromisoformat(newest.replace("Z", "+00:00"))
    if cursor_time is None:
        return max(0.0, (newest_at - horizon).total_seconds())
    return max(0.0, (newest_at - dt.datetime.fromisoformat(cursor_time)).total_seconds())


def _iso_ms(epoch_ms: Any) -> str:
    """A sort value of @timestamp (epoch milliseconds) as ISO 8601, to the millisecond."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=int(epoch_ms))
    return moment.isoformat(timespec="milliseconds")
