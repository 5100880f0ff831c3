"""Index templates and mappings: the events data stream, alerts, incidents, leases.

The events mapping is generated from ``auditd.event.FIELDS``, so a field added to the
canonical event is mapped with the right type the next time the daemon starts.
Mappings are explicit and ``dynamic: false``: an unexpected field is kept in
``_source`` but never grows the mapping, and a field's type never depends on which
host happened to ship a value first.

Installing is idempotent (templates are overwritten, indices created if missing and
their mappings extended), and runs at every start, so an upgrade that maps a new
field takes effect on the next backing index (events) or at once (the other indices).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from elasticsearch import BadRequestError, Elasticsearch

from auditd.elastic.settings import ElasticSettings
from auditd.errors import NeoError
from auditd.event import FIELDS

_KEYWORD = {"type": "keyword", "ignore_above": 1024}
_BY_KIND: dict[str, dict[str, Any]] = {
    "str": _KEYWORD,
    "list": _KEYWORD,
    "int": {"type": "long"},
    "bool": {"type": "boolean"},
    "time": {"type": "date"},
    # A malformed address in a log is still an access to audit: keep the event, leave
    # the field unindexed (ES lists it in _ignored) rather than reject the document.
    "ip": {"type": "ip", "ignore_malformed": True},
}
# ECS marks these as keyword with a text multi-field for full-text search
_WITH_TEXT = frozenset({"user.name", "neo.entitlement.reason"})
TEMPLATE_PREFIX = "neo-auditd"


def _nest(flat: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{'event.action': {...}} -> {'event': {'properties': {'action': {...}}}}."""
    root: dict[str, Any] = {}
    for name, mapping in flat.items():
        node = root
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[leaf] = mapping
    return root


def event_properties() -> dict[str, Any]:
    flat: dict[str, dict[str, Any]] = {}
    for spec in FIELDS.values():
        if spec.kind == "map":
            # free-form labels: any key, always a keyword
            flat[spec.name] = {"type": "object", "dynamic": True}
            continue
        mapping = dict(_BY_KIND[spec.kind])
        if spec.name in _WITH_TEXT:
            mapping["fields"] = {"text": {"type": "text"}}
        flat[spec.name] = mapping
    flat["event.ingested"] = {"type": "date"}  # when the shipper sent it: ingest delay per host
    flat["agent.name"] = _KEYWORD  # the daemon that shipped it
    flat["agent.type"] = _KEYWORD
    return _nest(flat)


def events_mappings() -> dict[str, Any]:
    return {
        "dynamic": False,
        "dynamic_templates": [
            {"labels_as_keyword": {"path_match": "labels.*", "mapping": _KEYWORD}},
        ],
        "properties": event_properties(),
    }


def alert_mappings() -> dict[str, Any]:
    keyword, date = _KEYWORD, {"type": "date"}
    return {
        "dynamic": False,
        "properties": _nest({
            "@timestamp": date,
            "event.kind": keyword,
            "event.severity": {"type": "long"},
            "event.ingested": date,  # when it was written: the order other daemons read cluster alerts in
            "rule.id": keyword,
            "rule.name": {**keyword, "fields": {"text": {"type": "text"}}},
            "rule.category": keyword,
            "user.id": keyword,
            "agent.name": keyword,
            "neo.alert.id": keyword,
            "neo.alert.origin": keyword,  # local (one daemon's rules) or cluster
            "neo.alert.fleet": keyword,  # cluster alerts: the events data stream's namespace
            "neo.alert.severity": keyword,
            "neo.alert.incident_id": keyword,
            "neo.alert.event_ids": keyword,
            "neo.alert.subject_ids": keyword,
            "neo.alert.categories": keyword,
            "neo.alert.sensitive": {"type": "boolean"},
            "neo.alert.record_count": {"type": "long"},
            "neo.alert.reason": {"type": "text"},
            "neo.alert.tags": keyword,
            "neo.alert.window.start": date,
            "neo.alert.window.end": date,
            "neo.alert.value": {"type": "long"},
            "neo.alert.threshold": {"type": "long"},
            "neo.alert.partition": {"type": "integer"},
            # evidence fields a rule chose; any shape, so kept but not indexed
            "neo.alert.output_fields": {"type": "object", "enabled": False},
        }),
    }


def incident_mappings() -> dict[str, Any]:
    keyword, date, count = _KEYWORD, {"type": "date"}, {"type": "long"}
    fields = {
        "@timestamp": date,
        "agent.name": keyword,
        "user.id": keyword,
        **{f"neo.incident.{name}": keyword for name in (
            "id", "local_id", "origin", "group_key", "tier", "auto_tier", "status", "assignee", "severity",
            "band", "rules", "categories", "alert_ids", "agents")},
        "neo.incident.title": {**keyword, "fields": {"text": {"type": "text"}}},
        **{f"neo.incident.{name}": date for name in (
            "first_seen", "last_seen", "discovered_at", "updated_at")},
        **{f"neo.incident.{name}": count for name in (
            "alert_count", "affected_count", "max_record_count", "timeline_seq")},
        "neo.incident.sensitive": {"type": "boolean"},
    }
    return {"dynamic": False, "properties": _nest(fields)}


def lease_mappings() -> dict[str, Any]:
    keyword = _KEYWORD
    return {"dynamic": False, "properties": _nest({
        "kind": keyword, "group": keyword, "owner": keyword,
        "partition": {"type": "integer"},
        "expires_at_ms": {"type": "long"}, "renewed_at_ms": {"type": "long"},
    })}


def _index_settings(settings: ElasticSettings, *, small: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"number_of_shards": 1 if small else settings.number_of_shards}
    if settings.number_of_replicas is not None:
        out["number_of_replicas"] = settings.number_of_replicas
    return out


def retention_text(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 86400}d" if whole % 86400 == 0 else f"{whole}s"


def events_template(settings: ElasticSettings) -> dict[str, Any]:
    return {
        "index_patterns": [settings.events_pattern],
        "data_stream": {},
        "priority": settings.template_priority,
        "template": {
            "settings": _index_settings(settings),
            "mappings": events_mappings(),
            # Enforced by clusters that run the data stream lifecycle; the integration
            # test distribution accepts it and deletes nothing.
            "lifecycle": {"data_retention": retention_text(settings.retention.seconds)},
        },
        "_meta": {"managed_by": "neo-auditd", "description": "access events (ECS)"},
    }


def plain_indices(settings: ElasticSettings) -> dict[str, tuple[dict[str, Any], bool]]:
    """index name -> (mappings, small)."""
    return {
        settings.alerts_index: (alert_mappings(), False),
        settings.incidents_index: (incident_mappings(), False),
        settings.leases_index: (lease_mappings(), True),
    }


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    key: str  # the `elastic.` setting that names what it covers: where an operator changes it
    body: dict[str, Any]


def all_templates(settings: ElasticSettings) -> list[Template]:
    """Every index template this config installs, in installing order."""
    # one template per type and dataset, whatever the namespace: fleets that differ only
    # in the namespace install the same template under the same name, not two that collide
    out = [Template(f"{TEMPLATE_PREFIX}-events-{settings.events_pattern[:-2]}", "events_data_stream",
                    events_template(settings))]
    keys = {settings.alerts_index: "alerts_index", settings.incidents_index: "incidents_index",
            settings.leases_index: "leases_index"}
    for index, (mappings, small) in plain_indices(settings).items():
        # a template too, so an index deleted by hand comes back with its mapping
        out.append(Template(f"{TEMPLATE_PREFIX}-{index}", keys[index], {
            "index_patterns": [index], "priority": settings.template_priority,
            "template": {"settings": _index_settings(settings, small=small), "mappings": mappings},
            "_meta": {"managed_by": "neo-auditd"},
        }))
    return out


class TemplateRefused(NeoError):
    """The cluster refuses one of this config's templates for what it is (HTTP 400), most
    often because another template matches the same indices at the same priority.
    Waiting does not help; changing the config (or the other template) does."""

    def __init__(self, template: Template, reason: str):
        self.template = template
        self.reason = reason
        super().__init__(refusal_message(template, reason))


def refusal_message(template: Template, reason: str) -> str:
    text = f"Elasticsearch refuses the index template {template.name}: {reason}"
    if "same priority" in reason:
        patterns = ", ".join(template.body.get("index_patterns", []))
        text += (f". Another template already covers {patterns} at priority {template.body.get('priority')}"
                 " (a template not installed by neo-auditd?): give this config a data stream of its own dataset,"
                 " or another elastic.template_priority")
    return text


def _reason(exc: BadRequestError) -> str:
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error")
    if isinstance(error, dict) and error.get("reason"):
        return str(error["reason"])
    return str(exc.message)


class Installer:
    """Installs once per process, on first use: the shipper and the cluster detector
    both need the templates before their first write (else the cluster would create
    the data stream from its built-in ``logs-*-*`` template), and the cluster may be
    down when the daemon starts, so neither can count on it being done at start."""

    def __init__(self, es: Elasticsearch, settings: ElasticSettings):
        self.es = es
        self.settings = settings
        self._done = not settings.install_templates
        self._lock = threading.Lock()

    def ensure(self) -> None:
        """Install unless done already; raises what the cluster raised (the caller retries)."""
        with self._lock:
            if not self._done:
                install(self.es, self.settings)
                self._done = True


def install(es: Elasticsearch, settings: ElasticSettings) -> None:
    """Put the templates and create the indices; safe to run at every start.

    Raises TemplateRefused when the cluster refuses a template (see `simulate`).
    """
    for template in all_templates(settings):
        try:
            es.indices.put_index_template(name=template.name, **template.body)
        except BadRequestError as exc:
            raise TemplateRefused(template, _reason(exc)) from exc
    for index, (mappings, _) in plain_indices(settings).items():
        try:
            es.indices.create(index=index)
        except BadRequestError as exc:
            if exc.error != "resource_already_exists_exception":
                raise
            # existing index: add fields a newer version maps (a type change raises)
            es.indices.put_mapping(index=index, **mappings)


def simulate(es: Elasticsearch, settings: ElasticSettings) -> list[TemplateRefused]:
    """What installing would refuse, found without changing anything.

    The cluster's simulate API validates a template exactly as putting it does (a
    template of the same name is replaced, others must not overlap at its priority).
    Raises what the client raises when the cluster cannot be asked.
    """
    refused = []
    for template in all_templates(settings):
        try:
            es.indices.simulate_template(name=template.name, **template.body)
        except BadRequestError as exc:
            refused.append(TemplateRefused(template, _reason(exc)))
    return refused
