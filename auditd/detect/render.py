"""Alert titles and output fields, rendered from event fields that are safe to spread.

Titles go to chat, e-mail and SMS, so they may name only fields that never hold a raw
customer identifier or free text: the policy promises that alerts carry pseudonyms
only. ``neo.resource.id`` (a customer's own id when the resource is a customer),
``neo.purpose`` and ``neo.ticket`` (free text an employee typed) and ``labels``
(anything a log carried) are therefore refused at load time, and so is every field
added to the event later until it is listed here.

A placeholder may name a filter that says a value in words: ``{event.action|past}``
("exported"), ``{neo.data.record_count|count}`` ("57,312"),
``{neo.data.record_count|records}`` ("57,312 customers' records", "1 customer's
record") and ``{neo.entitlement.reason|why}`` ("category property", "scope own_store,
a record of S021 (R-QJ)", "no ticket or purpose"). A rendered title is one line: runs
of spaces (an empty value) close up.
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
PAST_TENSE = {
    "read": "read", "search": "searched", "list": "listed", "export": "exported", "download": "downloaded",
    "print": "printed", "update": "updated", "delete": "deleted", "unmask": "unmasked", "share": "shared",
    "login": "logged in", "logout": "logged out", "grant": "granted", "revoke": "revoked",
}


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else text_of(value)


NO_RECORDS = frozenset({"login", "logout", "grant", "revoke"})  # actions that touch no customer records


def _records(value: Any, event: AccessEvent) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or event.action in NO_RECORDS:
        return ""  # an access that names no records (a login): the sentence closes up
    return "1 customer's record" if value == 1 else f"{value:,} customers' records"


def _past(value: Any) -> str:
    return PAST_TENSE.get(value, text_of(value)) if isinstance(value, str) else text_of(value)


_WHY_PATTERNS = {
    # reason code -> (pattern over the checker's detail, words); auditd/entitlement/checker.py writes them
    "category_not_granted": (re.compile(r"covers (?P<category>\S+) data"), "category {category}"),
    "action_not_granted": (re.compile(r"(?P<category>\S+) data, not (?P<action>\w+)$"),
                           "action {action} on {category} data"),
    "out_of_scope": (re.compile(r"^(?P<scope>\w+)(?::.*?the record's (?:store|region) is (?P<where>[^,]+))?"),
                     "scope {scope}, a record of {where}"),
    "share_fields_beyond_allowance": (re.compile(r"also sent (?P<fields>.+)$"),
                                      "fields beyond the partner's allowance: {fields}"),
}
_WHY_WORDS = {
    "purpose_missing": "no ticket or purpose", "unmasked_without_grant": "unmasked without an unmask grant",
    "unknown_actor": "not in the HR directory", "scope_unverified": "scope not verifiable",
}


def _why(value: Any) -> str:
    """An entitlement reason ('code: detail') in a few words for a title."""
    if not isinstance(value, str):
        return text_of(value)
    code, _, detail = value.partition(":")
    detail = detail.strip()
    if code in _WHY_WORDS:
        return _WHY_WORDS[code]
    pattern = _WHY_PATTERNS.get(code)
    m = pattern[0].search(detail) if pattern else None
    if m is None:
        return detail or code
    words = pattern[1]
    if m.groupdict().get("where") is None and "{where}" in words:
        words = words.split(",")[0]
    return words.format(**{k: v for k, v in m.groupdict().items() if v is not None})


FILTERS: dict[str, Callable[[Any, AccessEvent], str]] = {
    "count": lambda value, _: _count(value), "records": _records,
    "past": lambda value, _: _past(value), "why": lambda value, _: _why(value),
}


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
            name, _, filter_name = (p.strip() for p in m.group(1).partition("|"))
            why = unsafe_field_message(name)
            if why:
                problems.append(f"title: {why}")
            elif filter_name and filter_name not in FILTERS:
                problems.append(f"title: unknown filter '{filter_name}' (valid: {', '.join(sorted(FILTERS))})")
            else:
                get = operator.attrgetter(FIELDS[name].attr)
                parts.append(_filtered(get, FILTERS[filter_name]) if filter_name else get)
    parts.append(template[last:])
    if problems:
        return None, problems
    pieces = tuple(p for p in parts if p != "")

    def render(event: AccessEvent) -> str:
        text = "".join(p if isinstance(p, str) else text_of(p(event)) for p in pieces)
        if "  " in text:
            text = " ".join(text.split())
        return text if len(text) <= MAX_TITLE else text[:MAX_TITLE - 1] + "…"

    return render, problems


def _filtered(get: Callable[[AccessEvent], Any],
              words: Callable[[Any, AccessEvent], str]) -> Callable[[AccessEvent], str]:
    return lambda event: words(get(event), event)


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
