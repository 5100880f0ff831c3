"""The canonical AccessEvent, with ECS field names.

Attributes have Python names; ``FIELDS`` maps every ECS (or ``neo.``) field name to
its attribute, so that format mappings and rule conditions speak ECS while the hot path
reads plain attributes. Stages fill their own attributes in place: decode/normalise the
access facts, enrich the ``actor_*``/``entitlement_*`` facts and the pseudonyms.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

ACTIONS = (
    "read", "search", "list", "export", "download", "print", "update", "delete",
    "unmask", "share", "login", "logout", "grant", "revoke", "other",
)
# An operation the format does not map (an API call an audit trail must still keep);
# its raw name is in labels.event_name (decode.normalise.UNMAPPED_LABEL).
OTHER_ACTION = "other"
OUTCOMES = ("success", "failure", "denied", "unknown")


class AccessEvent(msgspec.Struct, gc=False, omit_defaults=True, array_like=True):
    """One access to customers' data (or a login/grant event), normalised.

    Positional arguments are allowed for decode.columnar, which builds a chunk's events
    with one map over the class; everything else passes keywords.

    Encoded (msgpack, in the store) as an array of the attributes in this order: names
    in every stored event would take ~40 % of the bytes the store writes. Append new
    attributes at the end, so that events stored before still decode (an array shorter
    than the struct gives the missing attributes their defaults); never reorder or
    remove one without a new encoding (auditd.store.encoding). Readers that need a few
    attributes decode through `stored_view`.
    """

    timestamp: dt.datetime
    action: str
    outcome: str = "success"
    # who
    user_id: str | None = None
    user_name: str | None = None
    user_roles: tuple[str, ...] = ()
    source_ip: str | None = None
    # where
    host_name: str | None = None
    service_name: str | None = None
    # what
    resource_type: str | None = None
    resource_id: str | None = None
    resource_store: str | None = None
    resource_region: str | None = None
    categories: tuple[str, ...] = ()
    record_count: int = 1
    subject_ids: tuple[str, ...] = ()  # pseudonyms once enriched, never raw ids downstream
    fields: tuple[str, ...] = ()
    masked: bool | None = None
    purpose: str | None = None
    ticket: str | None = None
    # where it went, for export and share
    destination_partner: str | None = None
    destination_host: str | None = None
    destination_ip: str | None = None
    destination_country: str | None = None
    request_id: str | None = None  # the application's own request id
    # provenance: deterministic, so that a retry never duplicates
    event_id: str = ""
    log_path: str | None = None
    log_offset: int = 0
    dataset: str = ""
    labels: dict[str, str] = {}
    # enrichment facts (filled by the enrich stage)
    actor_known: bool | None = None
    actor_status: str | None = None
    actor_store: str | None = None
    actor_region: str | None = None
    actor_departed: bool | None = None
    actor_departed_working_days: int | None = None
    actor_off_shift: bool | None = None
    entitlement_granted: bool | None = None
    entitlement_reason: str | None = None
    sensitive: bool = False
    # a numeric record id's block of 64 consecutive ids (a keyed pseudonym) and its place
    # in the block: what the enumeration kind needs of an id, without the id (enrich)
    resource_seq_block: str | None = None
    resource_seq_offset: int | None = None


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str  # ECS / neo. name, as written in mappings and rules
    attr: str  # AccessEvent attribute
    kind: str  # str, int, bool, time, list, ip, map


def _f(name: str, attr: str, kind: str = "str") -> FieldSpec:
    return FieldSpec(name, attr, kind)


FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        _f("@timestamp", "timestamp", "time"),
        _f("event.action", "action"),
        _f("event.outcome", "outcome"),
        _f("event.id", "event_id"),
        _f("event.dataset", "dataset"),
        _f("http.request.id", "request_id"),
        _f("user.id", "user_id"),
        _f("user.name", "user_name"),
        _f("user.roles", "user_roles", "list"),
        _f("source.ip", "source_ip", "ip"),
        _f("host.name", "host_name"),
        _f("service.name", "service_name"),
        _f("destination.ip", "destination_ip", "ip"),
        _f("destination.domain", "destination_host"),
        _f("destination.geo.country_iso_code", "destination_country"),
        _f("log.file.path", "log_path"),
        _f("log.offset", "log_offset", "int"),
        _f("labels", "labels", "map"),
        _f("neo.resource.type", "resource_type"),
        _f("neo.resource.id", "resource_id"),
        _f("neo.resource.store", "resource_store"),
        _f("neo.resource.region", "resource_region"),
        _f("neo.data.categories", "categories", "list"),
        _f("neo.data.record_count", "record_count", "int"),
        _f("neo.data.subject_ids", "subject_ids", "list"),
        _f("neo.data.fields", "fields", "list"),
        _f("neo.data.masked", "masked", "bool"),
        _f("neo.data.sensitive", "sensitive", "bool"),
        _f("neo.purpose", "purpose"),
        _f("neo.ticket", "ticket"),
        _f("neo.destination.partner", "destination_partner"),
        _f("neo.actor.known", "actor_known", "bool"),
        _f("neo.actor.status", "actor_status"),
        _f("neo.actor.store", "actor_store"),
        _f("neo.actor.region", "actor_region"),
        _f("neo.actor.departed", "actor_departed", "bool"),
        _f("neo.actor.departed_working_days", "actor_departed_working_days", "int"),
        _f("neo.actor.off_shift", "actor_off_shift", "bool"),
        _f("neo.entitlement.granted", "entitlement_granted", "bool"),
        _f("neo.entitlement.reason", "entitlement_reason"),
        _f("neo.resource.seq_block", "resource_seq_block"),
        _f("neo.resource.seq_offset", "resource_seq_offset", "int"),
    )
}
ATTR_TO_FIELD = {spec.attr: spec.name for spec in FIELDS.values()}
# attribute -> default; NODEFAULT for the required ones and for labels (a new dict each)
EVENT_DEFAULTS: dict[str, Any] = {f.name: f.default for f in msgspec.structs.fields(AccessEvent)}
REQUIRED_FIELDS = ("@timestamp", "event.action")


def stored_view(name: str, wanted: Iterable[str]) -> type[msgspec.Struct]:
    """A struct that decodes only the `wanted` attributes of an encoded AccessEvent.

    The attributes before the last wanted one that are not wanted stay undecoded
    (msgspec.Raw, a view of their bytes); those after it are never read. A wanted
    attribute that an event stored before it existed lacks takes its default.
    """
    wanted = set(wanted)
    infos = msgspec.structs.fields(AccessEvent)
    unknown = wanted - {f.name for f in infos}
    if unknown:
        raise ValueError(f"AccessEvent has no attribute {', '.join(sorted(unknown))}")
    last = max(i for i, f in enumerate(infos) if f.name in wanted)
    spec = []
    for info in infos[: last + 1]:
        if info.name in wanted:
            spec.append(struct_field(info))
        else:  # a required one is always encoded; an optional one may be missing
            spec.append((info.name, msgspec.Raw) if info.required else (info.name, msgspec.Raw, _SKIPPED))
    return msgspec.defstruct(name, spec, array_like=True, gc=False)


def struct_field(info: msgspec.structs.FieldInfo) -> tuple[Any, ...]:
    """An AccessEvent field as msgspec.defstruct takes it: (name, type[, default])."""
    if info.required:
        return info.name, info.type
    if info.default_factory is not msgspec.NODEFAULT:
        return info.name, info.type, msgspec.field(default_factory=info.default_factory)
    return info.name, info.type, info.default


_SKIPPED = msgspec.Raw()


def to_ecs(event: AccessEvent) -> dict[str, Any]:
    """The event as a nested ECS document (for Elasticsearch and --json output)."""
    doc: dict[str, Any] = {}
    for spec in FIELDS.values():
        value = getattr(event, spec.attr)
        if value is None or value == () or value == {}:
            continue
        if spec.kind == "time":
            value = value.isoformat()
        elif spec.kind == "list":
            value = list(value)
        if spec.name == "@timestamp":
            doc["@timestamp"] = value
            continue
        node = doc
        *parents, leaf = spec.name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return doc


def get_path(doc: Any, dotted: str) -> Any:
    """Read 'a.b.c' from nested dicts, trying the flat key 'a.b.c' first."""
    if isinstance(doc, dict) and dotted in doc:
        return doc[dotted]
    node = doc
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def from_ecs(doc: dict[str, Any]) -> AccessEvent:
    """Inverse of to_ecs, for events read back from Elasticsearch or JSON samples."""
    kwargs: dict[str, Any] = {}
    for spec in FIELDS.values():
        value = get_path(doc, spec.name)
        if value is None:
            continue
        if spec.kind == "time":
            value = parse_time(value)
        elif spec.kind == "list":
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        kwargs[spec.attr] = value
    return AccessEvent(**kwargs)


# The times an event may have: from the epoch up to a year before datetime's end, so that
# a local day, an hour bucket or a deadline counted from it never leaves datetime's range.
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
LATEST = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)


def parse_time(value: Any, zone: dt.tzinfo | None = None) -> dt.datetime:
    """An aware UTC datetime from ISO text or a datetime; naive values take `zone`."""
    if isinstance(value, dt.datetime):
        out = value
    else:
        text = str(value)
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        out = dt.datetime.fromisoformat(text)
    if out.tzinfo is None:
        if zone is None:
            from auditd.config.typed import DEFAULT_ZONE

            zone = DEFAULT_ZONE
        out = out.replace(tzinfo=zone)
    return out.astimezone(dt.timezone.utc)
