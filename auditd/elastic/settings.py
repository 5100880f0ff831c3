"""The `elastic:` section: the cluster, what this daemon ships to it, what it reads
from it, and the cluster-side threshold rules shared across hosts.

    elastic:
      hosts: [https://es1:9200, https://es2:9200]
      api_key_file: /etc/neo-auditd/es.key
      events_data_stream: logs-neo_auditd.access-default
      ship: {bulk_max_docs: 5000, retry_backoff_max_s: 60}
      cluster: {evaluate_every: 60s, settle: 10m}   # runs the rules with `scope: cluster`
      sources:   # read back what other daemons shipped (names share the file sources' space)
        - {name: fleet, index: "logs-neo_auditd.access-*", settle: 2m}

Like every settings block these are converted by ``auditd.config.typed.convert``, so
unknown keys and bad values are located configuration errors (exit 78).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from auditd.config.typed import Duration
from auditd.event import FIELDS
from auditd.ops.settings import LEGAL_BASIS, LEGAL_MINIMUM_RETENTION

MIB = 1024 * 1024
Severity = Literal["info", "low", "medium", "high", "critical"]
# ES index names: lowercase, no spaces or \ / * ? " < > | , # : and not starting with - _ +
_INDEX_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
# data stream naming scheme <type>-<dataset>-<namespace>; the dataset may hold dots
_STREAM_NAME = re.compile(r"[a-z0-9]+-[a-z0-9_.]+-[a-z0-9_.]+")
# fields the events data stream maps besides FIELDS (added by the shipper)
EXTRA_EVENT_FIELDS = frozenset({"event.ingested", "agent.name", "agent.type"})


def _positive(obj: object, *names: str) -> Iterator[tuple[str, str]]:
    for name in names:
        value = getattr(obj, name)
        seconds = value.seconds if isinstance(value, Duration) else value
        if seconds <= 0:
            yield name, "must be greater than 0"


def _unknown_field(name: str) -> str | None:
    if name in FIELDS or name in EXTRA_EVENT_FIELDS or name.startswith("labels."):
        return None
    return f"unknown event field {name!r} (use an ECS or neo. name of the canonical event)"


@dataclass(frozen=True, slots=True)
class ShipSettings:
    """How the store's events (and alerts, incidents) are shipped to the cluster."""

    enabled: bool = True
    bulk_max_docs: int = 5000
    bulk_max_bytes: int = 8 * MIB  # well under http.max_content_length (100 MB)
    idle_poll_s: float = 0.5  # when caught up; the service may also wake the shipper
    retry_backoff_initial_s: float = 0.5
    retry_backoff_max_s: float = 60.0
    drain_timeout_s: float = 10.0  # at stop: what is left is shipped at the next start
    # Gone: incidents are shipped from the incident change log, which misses nothing.
    incidents_rescan: Any = None
    alerts: bool = True
    incidents: bool = True

    def check(self) -> Iterator[tuple[str, str]]:
        yield from _positive(self, "bulk_max_docs", "idle_poll_s", "retry_backoff_initial_s",
                             "retry_backoff_max_s", "drain_timeout_s")
        if self.bulk_max_bytes < 64 * 1024:
            yield "bulk_max_bytes", "must be at least 64 KiB"
        if self.retry_backoff_max_s < self.retry_backoff_initial_s:
            yield "retry_backoff_max_s", "must be at least retry_backoff_initial_s"
        if self.incidents_rescan is not None:
            yield "incidents_rescan", "no longer used: incidents are shipped from the change log; remove it"


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """How the rules written with ``scope: cluster`` run over every host's events.

    The rules themselves are in the rule files, in the one rule language; this says
    who runs them (the holders of leases, ``leases.py``) and how often.
    """

    partitions: int = 16  # leases: each cluster rule belongs to one partition (by its id)
    lease_ttl: Duration = Duration(30)
    heartbeat: Duration = Duration(10)
    # Clocks of the daemons agree within this; a lease is taken over only this long
    # after it expired, and its owner stops trusting it this long before.
    clock_skew: Duration = Duration(2)
    evaluate_every: Duration = Duration(60)
    # Events are evaluated once they are this old: hosts ship with some delay. An event
    # that reaches the cluster after the rule has gone past its time is counted as late
    # (status, metrics) and evaluated only by `replay`.
    settle: Duration = Duration(600)
    # a rule met for the first time starts at the settle horizon (end) or at the
    # oldest event of the data stream (beginning)
    start_at: Literal["beginning", "end"] = "end"
    page_size: int = 2000
    max_events_per_round: int = 200_000  # per rule; the rest waits for the next round (lag)

    def check(self) -> Iterator[tuple[str | tuple[str | int, ...], str]]:
        yield from _positive(self, "partitions", "lease_ttl", "heartbeat", "evaluate_every", "page_size",
                             "max_events_per_round")
        if self.heartbeat.seconds * 2 > self.lease_ttl.seconds:
            yield "heartbeat", "must be at most half of lease_ttl, so one missed beat does not lose a lease"
        if self.clock_skew.seconds * 2 >= self.lease_ttl.seconds:
            yield "clock_skew", "must be less than half of lease_ttl"
        if self.settle.seconds < 0:
            yield "settle", "must not be negative"
        if self.page_size > 10_000:
            yield "page_size", "must be at most 10000 (index.max_result_window)"


_MOVED_TO_CLUSTER = ("partitions", "lease_ttl", "heartbeat", "clock_skew", "evaluate_every", "settle")


def scale_out_migration(raw: Any) -> str:
    """What an operator with a `scale_out:` block (ThresholdRule and its filter
    dialect, removed) writes instead: the rules in a rule file with `scope: cluster`,
    the lease settings under `elastic.cluster`."""
    raw = raw if isinstance(raw, dict) else {}
    moved = {k: raw[k] for k in _MOVED_TO_CLUSTER if k in raw}
    rules = [_rule_text(r) for r in raw.get("rules") or () if isinstance(r, dict)]
    text = ("scale_out and its threshold rules are gone: cluster rules are written in the rule files, in the "
            "same language as local ones, with 'scope: cluster' (windows slide as the local kind's); write ")
    text += ("in a rules file: " + "; ".join(rules) + " and ") if rules else "each rule in a rules file and "
    text += ("elastic.cluster: {" + ", ".join(f"{k}: {_flow(v)}" for k, v in moved.items()) + "}"
             if moved else "the lease settings under elastic.cluster")
    return text


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    text = str(value)
    return text if re.fullmatch(r"[A-Za-z0-9_.@/:-]+", text) else '"' + text.replace('"', "'") + '"'


def _condition_text(filters: Any) -> str:
    if not isinstance(filters, dict) or not filters:
        return "true"
    parts = []
    for name, value in filters.items():
        if isinstance(value, list):
            parts.append(f"{name} in ({', '.join(_flow(v) for v in value)})")
        else:
            parts.append(f"{name} = {_flow(value)}")
    return " and ".join(parts)


def _rule_text(rule: dict) -> str:
    threshold = rule.get("threshold", "N")
    params: dict[str, Any] = {"gte": max(2, threshold) if isinstance(threshold, int) else threshold}
    if rule.get("distinct"):
        params["distinct"] = rule["distinct"]
    params["timespan"] = rule.get("window", "1h")
    params["group_by"] = [rule.get("group_by", "user.id")]
    out = {"rule": rule.get("id", "my_rule"), "desc": rule.get("description") or rule.get("title") or "...",
           "kind": "threshold", "scope": "cluster", "params": params,
           "condition": _condition_text(rule.get("filter")), "severity": rule.get("severity", "high"),
           "tags": ["incubating", *(rule.get("tags") or [])]}
    if rule.get("title"):
        out["title"] = rule["title"]
    return "- " + _flow(out)


@dataclass(frozen=True, slots=True)
class ElasticSourceSettings:
    """A source that reads events other daemons already shipped to the cluster.

    Connection settings are the `elastic:` section's. See ``source.py`` for the
    exactly-once guarantee and its limit (documents later than ``settle``).
    """

    name: str
    index: str = "logs-neo_auditd.access-*"
    filter: dict[str, str | list[str]] = field(default_factory=dict)  # term / terms per field
    settle: Duration = Duration(120)  # read only up to now - settle
    page_size: int = 1000
    poll_interval_s: float = 5.0
    start_at: Literal["beginning", "end"] = "beginning"  # without a checkpoint
    tiebreaker: str = "event.id"  # a unique keyword: with @timestamp, a total order

    def check(self) -> Iterator[tuple[str | tuple[str, ...], str]]:
        if not self.name:
            yield "name", "must not be empty"
        yield from _positive(self, "page_size", "poll_interval_s")
        if self.settle.seconds < 0:
            yield "settle", "must not be negative"
        if self.page_size > 10_000:
            yield "page_size", "must be at most 10000 (index.max_result_window)"
        for name in self.filter:
            problem = _unknown_field(name)
            if problem:
                yield ("filter", name), problem


@dataclass(frozen=True, slots=True)
class ElasticSettings:
    hosts: list[str]
    api_key_file: Path | None = None  # the encoded API key; never logged
    ca_certs: Path | None = None
    verify_certs: bool = True
    request_timeout_s: float = 30.0
    # gzip of bulk bodies: ~8x fewer bytes, but the client compresses at level 9, which
    # costs about as much CPU as building the documents; worth it on slow links only
    http_compress: bool = False
    node_name: str | None = None  # this daemon in leases and on shipped documents; default: host name
    events_data_stream: str = "logs-neo_auditd.access-default"
    alerts_index: str = "neo-auditd-alerts"
    incidents_index: str = "neo-auditd-incidents"
    leases_index: str = "neo-auditd-leases"
    deliveries_index: str = "neo-auditd-deliveries"  # the fleet's delivery records (elastic/deliveries.py)
    retention: Duration = LEGAL_MINIMUM_RETENTION  # data stream lifecycle of the events
    number_of_shards: int = 1
    number_of_replicas: int | None = None  # None: the cluster's default
    template_priority: int = 200  # above the built-in logs-*-* template (100)
    install_templates: bool = True
    ship: ShipSettings = field(default_factory=ShipSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)  # runs the rules with scope: cluster
    scale_out: Any = None  # gone (ThresholdRule and its filter dialect): kept only to say what to write instead
    sources: tuple[ElasticSourceSettings, ...] = ()  # events other daemons shipped, read back

    def check(self) -> Iterator[tuple[str | tuple[str | int, ...], str]]:
        if not self.hosts:
            yield "hosts", "needs at least one URL, e.g. https://es1:9200"
        for i, host in enumerate(self.hosts):
            if not re.match(r"https?://", host):
                yield ("hosts", i), f"expected an http:// or https:// URL, got {host!r}"
        if not _STREAM_NAME.fullmatch(self.events_data_stream):
            yield "events_data_stream", ("expected <type>-<dataset>-<namespace> in lowercase, "
                                         "e.g. logs-neo_auditd.access-default")
        for key in ("alerts_index", "incidents_index", "leases_index", "deliveries_index"):
            if not _INDEX_NAME.fullmatch(getattr(self, key)):
                yield key, "expected a lowercase index name (letters, digits, '.', '_', '-')"
            elif _STREAM_NAME.fullmatch(self.events_data_stream) and fnmatch.fnmatchcase(
                    getattr(self, key), self.events_pattern):
                # two templates would claim the index; the cluster refuses the second one
                yield key, (f"{getattr(self, key)!r} matches {self.events_pattern!r}, the pattern of the events "
                            "data stream's template: name it outside that pattern")
        if self.retention < LEGAL_MINIMUM_RETENTION:
            yield "retention", f"{self.retention.seconds / 86400:g} days is shorter than the legal minimum ({LEGAL_BASIS})"
        yield from _positive(self, "request_timeout_s", "number_of_shards")
        if self.number_of_replicas is not None and self.number_of_replicas < 0:
            yield "number_of_replicas", "must be 0 or more"
        if self.scale_out is not None:
            yield "scale_out", scale_out_migration(self.scale_out)
        names = [source.name for source in self.sources]
        for i, name in enumerate(names):
            if names.index(name) != i:
                yield ("sources", i, "name"), f"duplicate source name {name!r}"

    @property
    def fleet(self) -> str:
        """The fleet: the events data stream's namespace (logs-neo_auditd.access-<fleet>).
        Two fleets on one cluster differ in it; cluster rules read their own fleet's
        stream, leases, rule state and cluster alerts are kept per fleet."""
        return self.events_data_stream.rsplit("-", 1)[-1]

    @property
    def events_pattern(self) -> str:
        """The template pattern: the stream's type and dataset, any namespace."""
        return self.events_data_stream.rsplit("-", 1)[0] + "-*"
