"""Alert titles and output fields, rendered from event fields that are safe to spread.

Titles go to chat, e-mail and SMS, so they may name only fields that never hold a raw
customer identifier or free text: the policy promises that alerts carry pseudonyms
only. ``neo.resource.id`` (a customer's own id when the resource is a customer),
``neo.purpose`` and ``neo.ticket`` (free text an employee typed) and ``labels``
(anything a log carried) are therefore refused at load time, and so is every field
added to the event later until it is listed here.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable
from typing import Any

from auditd.event import FIELDS, AccessEvent

SAFE_FIELDS = frozenset({
    "@timestamp", "event.action", "event.outcome", "event.id", "event.dataset",
    "user.id", "user.name", "user.roles", "source.ip", "host.name", "service.name",
    "destination.ip", "destination.domain", "destination.geo.country_iso_code",
    "neo.resource.type", "neo.resource.store", "neo.resource.region",
    "neo.data.categories", "neo.data.record_count", "neo.data.subject_ids", "neo.data.fields",
    "neo.data.masked", "neo.data.sensitive", "neo.destination.partner",
    "neo.actor.known", "neo.actor.status", "neo.actor.store", "neo.actor.region",
    "neo.actor.departed", "neo.actor.departed_working_days", "neo.actor.off_shift",
    "neo.entitlement.granted", "neo.entitlement.reason",
})
MAX_TITLE = 200  # SMS gateways and chat previews cut longer titles anyway

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def unsafe_field_message(name: str) -> str | None:
    """Why `name` may not appear in a title or output, or None when it may."""
    if name in SAFE_FIELDS:
        return None
    if name not in FIELDS and not name.startswith("labels."):
        return f"unknown field '{name}'"
    return (f"field '{name}' may carry a raw customer identifier or free text; "
            f"titles and output may use: {', '.join(sorted(SAFE_FIELDS))}")


def text_of(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def compile_title(template: str) -> tuple[Callable[[AccessEvent], str] | None, list[str]]:
    """A renderer for '{user.id} exported {neo.data.record_count} records', and the
    list of problems (empty when the template is usable)."""
    parts: list[str | Callable[[AccessEvent], Any]] = []
    problems: list[str] = []
    last = 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(template[last:m.start()])
        last = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        elif m.group(1) is None:
            problems.append(f"unmatched '{token}' in title (write '{token * 2}' for a brace)")
        else:
            name = m.group(1).strip()
            why = unsafe_field_message(name)
            if why:
                problems.append(f"title: {why}")
            else:
                parts.append(operator.attrgetter(FIELDS[name].attr))
    parts.append(template[last:])
    if problems:
        return None, problems
    pieces = tuple(p for p in parts if p != "")

    def render(event: AccessEvent) -> str:
        text = "".join(p if isinstance(p, str) else text_of(p(event)) for p in pieces)
        return text if len(text) <= MAX_TITLE else text[:MAX_TITLE - 1] + "…"

    return render, problems


def json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def compile_output(names: tuple[str, ...]) -> Callable[[AccessEvent], dict[str, Any]]:
    """The rule's output fields as a dict of ECS name -> JSON-ready value."""
    getters = tuple((name, operator.attrgetter(FIELDS[name].attr)) for name in names)

    def output(event: AccessEvent) -> dict[str, Any]:
        return {name: json_value(get(event)) for name, get in getters}

    return output
