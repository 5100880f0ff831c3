"""Threshold rules over every host's events, evaluated where the events are.

A rule such as "one employee read more than 200 distinct customers within an hour"
needs the events of every application host; each host's daemon ships its events to
one cluster, and the rule runs there as an aggregation:

    terms(group_by, include: {partition: p, num_partitions: N}, min_doc_count: threshold)
      └ filters(one range per window)
          └ cardinality(distinct) | doc_count, and evidence (latest events, categories)

The actors are split into N partitions by Elasticsearch's hash of the term; each
daemon evaluates only the partitions it holds a lease for (``leases.py``), so the
work is shared and every partition has one evaluator.

Windows are fixed: ``window`` long, one starting every ``step`` (from local midnight). At
each evaluation the windows that are open or closed less than ``settle`` ago are
evaluated again, so events shipped late still count. An alert's id is the rule, the
group value and the window start: re-evaluating a window (next round, a takeover,
two owners for a moment) finds the same id, and alerts are created, never
overwritten, so an alert is never doubled. Its content is what the first evaluation
above the threshold saw.

Cluster alerts become incidents like every other alert, through the correlator's
seam: every daemon reads them back from the alerts index (``cluster_alerts.py``) and
applies them in its own store, so the fleet's stores hold the same incidents, and the
incidents index is their replica (``feeds.IncidentFeed``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import ApiError, Elasticsearch, TransportError

from auditd.config.typed import DEFAULT_ZONE
from auditd.detect.alert import Alert, alert_id
from auditd.elastic import templates
from auditd.elastic.documents import alert_document, encode
from auditd.elastic.leases import LeaseManager
from auditd.elastic.settings import ElasticSettings, ScaleOutSettings, ThresholdRule
from auditd.elastic.source import TIME_FIELD, term_filters
from auditd.event import parse_time

log = logging.getLogger("neo_auditd.elastic.cluster")

EVIDENCE_EVENTS = 10  # latest event ids kept on an alert
# Count rules up to this threshold time their alert by the event that crossed it (the
# threshold-th of the window); above it, and for distinct counts, by the latest event
# the first evaluation over the threshold saw.
MAX_CROSSING_HITS = 100  # Elasticsearch's index.max_inner_result_window
# Cardinality counts are near-exact below the precision threshold and cost about 8
# bytes per unit of it per bucket (actors x windows); only the count around the rule's
# threshold matters, so a small multiple of it is enough.
MAX_PRECISION_THRESHOLD = 40_000  # Elasticsearch's maximum


def precision_threshold(rule: ThresholdRule) -> int:
    return min(MAX_PRECISION_THRESHOLD, max(1000, 2 * rule.threshold))
# Windows and incident buckets count from local midnight, so a 1d window is a
# company day (Asia/Shanghai has no daylight saving time since 1991).
ORIGIN = dt.datetime(1970, 1, 1, tzinfo=DEFAULT_ZONE).astimezone(dt.timezone.utc)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class Window:
    start: dt.datetime
    end: dt.datetime

    @property
    def key(self) -> str:
        return self.start.isoformat()


def windows_to_evaluate(rule: ThresholdRule, now: dt.datetime, settle: dt.timedelta) -> list[Window]:
    """Windows that have started and ended less than `settle` ago (or not yet)."""
    step, length = rule.step_seconds, rule.window.seconds
    now_s = (now - ORIGIN).total_seconds()
    oldest_end = now_s - settle.total_seconds()
    first = int((oldest_end - length) // step) + 1  # the first k with k*step + length > oldest_end
    last = int(now_s // step)
    return [Window(ORIGIN + dt.timedelta(seconds=k * step), ORIGIN + dt.timedelta(seconds=k * step + length))
            for k in range(first, last + 1)]


def group_key(rule: ThresholdRule, value: str) -> str:
    return value if rule.group_by == "user.id" else f"{rule.group_by}:{value}"


@dataclass(slots=True)
class EvaluationReport:
    partitions: tuple[int, ...] = ()
    searches: int = 0
    alerts: list[Alert] = field(default_factory=list)  # every alert at or over threshold
    created: list[Alert] = field(default_factory=list)  # first written by this evaluation
    truncated: list[tuple[str, int]] = field(default_factory=list)  # (rule, partition) over the terms size
    errors: int = 0


class ClusterDetector:
    """Evaluates the threshold rules on the partitions this daemon holds.

    ``evaluate_owned(now)`` does one round; ``start()`` runs heartbeats and rounds on
    threads. Alerts go to the alerts index, create-only; every daemon reads them back
    from there (``cluster_alerts.ClusterAlertReader``).
    """

    def __init__(self, es: Elasticsearch, settings: ElasticSettings, *, agent: str,
                 clock: Callable[[], dt.datetime] = _utc_now, wall_ms: Callable[[], int] | None = None,
                 installer: templates.Installer | None = None):
        if settings.scale_out is None:
            raise ValueError("ClusterDetector needs elastic.scale_out settings")
        self.es = es
        self.installer = installer or templates.Installer(es, settings)
        self.settings = settings
        self.scale: ScaleOutSettings = settings.scale_out
        self.agent = agent
        self.clock = clock
        lease_options = {"wall_ms": wall_ms} if wall_ms else {}
        self.leases = LeaseManager(es, settings.leases_index, self.scale, agent, **lease_options)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.rounds = 0
        self.last_report: EvaluationReport | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Heartbeats and evaluation rounds, each on its own thread: a slow round must
        not delay the renewal of the leases it depends on."""
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._loop, args=(self._heartbeat, self.scale.heartbeat.seconds),
                             name="cluster-leases", daemon=True),
            threading.Thread(target=self._loop, args=(self._round, self.scale.evaluate_every.seconds),
                             name="cluster-detector", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop; with release, hand the partitions to the other daemons at once."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.settings.request_timeout_s + 5)
        self._threads = []
        if release:
            self.leases.release_all()

    def _heartbeat(self) -> None:
        self.installer.ensure()  # the leases index must have its mapping before the first lease
        self.leases.heartbeat()

    def _round(self) -> None:
        self.last_report = self.evaluate_owned(self.clock())
        self.rounds += 1

    def _loop(self, work: Callable[[], object], every_s: float) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                work()
            except Exception:  # noqa: BLE001 - an outage must not end the thread; leases expire meanwhile
                log.exception("cluster detector: %s failed", getattr(work, "__name__", work))
            self._stop.wait(max(0.05, every_s - (time.monotonic() - started)))

    # -- evaluation --------------------------------------------------------------------------
    def evaluate_owned(self, now: dt.datetime) -> EvaluationReport:
        report = EvaluationReport(partitions=tuple(sorted(self.leases.owned())))
        settle = self.scale.settle.timedelta
        for rule in self.scale.rules:
            windows = windows_to_evaluate(rule, now, settle)
            for partition in report.partitions:
                if partition not in self.leases.owned():  # lost meanwhile (a slow round)
                    continue
                try:
                    self._evaluate(rule, partition, windows, report)
                except (ApiError, TransportError) as exc:
                    report.errors += 1
                    log.warning("rule %s partition %d not evaluated: %s", rule.id, partition, exc)
        return report

    def _evaluate(self, rule: ThresholdRule, partition: int, windows: list[Window],
                  report: EvaluationReport) -> None:
        response = self.es.search(index=self.settings.events_pattern, size=0, track_total_hits=False,
                                  query=self._query(rule, windows), aggs=self._aggs(rule, partition, windows),
                                  ignore_unavailable=True, allow_no_indices=True)
        report.searches += 1
        groups = response.body.get("aggregations", {}).get("groups", {})
        if groups.get("sum_other_doc_count", 0):
            report.truncated.append((rule.id, partition))
            log.warning("rule %s partition %d: more groups than max_groups_per_partition", rule.id, partition)
        alerts = [alert for bucket in groups.get("buckets", [])
                  for alert in self._alerts_of(rule, partition, bucket, windows)]
        if not alerts:
            return
        report.alerts.extend(alerts)
        report.created.extend(self._create_alerts(rule, partition, alerts))

    def _query(self, rule: ThresholdRule, windows: list[Window]) -> dict[str, Any]:
        span = {"gte": windows[0].start.isoformat(), "lt": windows[-1].end.isoformat()}
        return {"bool": {"filter": [{"range": {TIME_FIELD: span}}, *term_filters(rule.filter)]}}

    def _aggs(self, rule: ThresholdRule, partition: int, windows: list[Window]) -> dict[str, Any]:
        per_window: dict[str, Any] = {
            "latest": {"top_hits": {"size": EVIDENCE_EVENTS, "sort": [{TIME_FIELD: "desc"}],
                                    "_source": ["event.id", TIME_FIELD, "neo.data.subject_ids"]}},
            "categories": {"terms": {"field": "neo.data.categories", "size": 20}},
            "records": {"sum": {"field": "neo.data.record_count"}},
            "sensitive": {"max": {"field": "neo.data.sensitive"}},
        }
        if rule.distinct:
            per_window["distinct"] = {"cardinality": {"field": rule.distinct,
                                                      "precision_threshold": precision_threshold(rule)}}
        elif rule.threshold <= MAX_CROSSING_HITS:
            # the event that crossed the threshold: its time is the alert's, the same
            # whichever evaluation first sees the window over it (a later one sees more)
            per_window["crossing"] = {"top_hits": {"size": rule.threshold, "sort": [{TIME_FIELD: "asc"}],
                                                   "_source": [TIME_FIELD]}}
        ranges = {w.key: {"range": {TIME_FIELD: {"gte": w.start.isoformat(), "lt": w.end.isoformat()}}}
                  for w in windows}
        return {"groups": {
            "terms": {"field": rule.group_by, "size": self.scale.max_groups_per_partition,
                      # distinct <= count: a group below the threshold in events cannot reach it
                      "min_doc_count": rule.threshold,
                      "include": {"partition": partition, "num_partitions": self.scale.partitions}},
            "aggs": {"windows": {"filters": {"filters": ranges}, "aggs": per_window}},
        }}

    def _alerts_of(self, rule: ThresholdRule, partition: int, bucket: dict[str, Any],
                   windows: list[Window]) -> list[Alert]:
        value_of_group = str(bucket["key"])
        by_key = {w.key: w for w in windows}
        alerts = []
        for key, stats in bucket["windows"]["buckets"].items():
            value = int(stats["distinct"]["value"]) if rule.distinct else int(stats["doc_count"])
            if value < rule.threshold:
                continue
            alerts.append(self._alert(rule, partition, value_of_group, by_key[key], value, stats))
        return alerts

    def _alert(self, rule: ThresholdRule, partition: int, value_of_group: str, window: Window,
               value: int, stats: dict[str, Any]) -> Alert:
        hits = [hit["_source"] for hit in stats["latest"]["hits"]["hits"]]
        crossing = [hit["_source"] for hit in stats.get("crossing", {}).get("hits", {}).get("hits", [])]
        subjects = sorted({s for hit in hits for s in _as_list(hit.get("neo", {}).get("data", {}).get("subject_ids"))})
        counted = f"distinct {rule.distinct}" if rule.distinct else "events"
        return Alert(
            alert_id=alert_id(f"cluster:{rule.id}", rule.group_by, value_of_group, window.key),
            rule_id=rule.id, rule_kind="threshold", severity=rule.severity, title=rule.title,
            timestamp=(parse_time(crossing[-1][TIME_FIELD]) if len(crossing) >= rule.threshold
                       else parse_time(hits[0][TIME_FIELD]) if hits else window.start),
            event_ids=tuple(hit["event"]["id"] for hit in hits if hit.get("event", {}).get("id")),
            actor=value_of_group if rule.group_by == "user.id" else None,
            subject_ids=tuple(subjects),
            categories=tuple(sorted(b["key"] for b in stats["categories"]["buckets"])),
            sensitive=bool(stats["sensitive"].get("value")),
            record_count=int(stats["records"].get("value") or 0),
            reason=f"{value} {counted} in {rule.window.seconds:g} s (threshold {rule.threshold})",
            tags=rule.tags,
            output_fields={rule.group_by: value_of_group, "window.start": window.start.isoformat(),
                           "window.end": window.end.isoformat(), "value": value, "partition": partition},
        )

    def _create_alerts(self, rule: ThresholdRule, partition: int, alerts: list[Alert]) -> list[Alert]:
        """Create-only writes; returns the alerts that did not exist yet."""
        lines = []
        for alert in alerts:
            fields = alert.output_fields
            extra = {"window": {"start": fields["window.start"], "end": fields["window.end"]},
                     "value": fields["value"], "threshold": rule.threshold, "partition": partition}
            document = alert_document(alert, origin="cluster", agent=self.agent, extra=extra,
                                      ingested=_utc_now().isoformat(timespec="microseconds"))
            lines += [b'{"create":{"_id":' + encode(alert.alert_id) + b"}}", encode(document)]
        response = self.es.bulk(index=self.settings.alerts_index, operations=b"\n".join(lines) + b"\n",
                                filter_path="items.*.status,items.*.error.type")
        created = []
        for alert, item in zip(alerts, response.body.get("items", [])):
            (answer,) = item.values()
            if answer["status"] == 201:
                created.append(alert)
            elif answer["status"] != 409:  # not written: the next round evaluates the window again
                log.warning("alert %s not written: %s", alert.alert_id, answer)
        return created


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
