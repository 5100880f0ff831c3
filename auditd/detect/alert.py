"""An alert: one rule's verdict on one event (or on a window of events)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import msgspec

SEVERITIES = ("info", "low", "medium", "high", "critical")


class Alert(msgspec.Struct, kw_only=True, frozen=True):
    alert_id: str  # deterministic: the same rule on the same event gives the same id
    rule_id: str
    rule_kind: str  # match, entitlement, departed, threshold, ...
    severity: str
    title: str
    timestamp: dt.datetime  # of the (last) triggering event
    event_ids: tuple[str, ...]
    actor: str | None  # user.id of the employee
    subject_ids: tuple[str, ...] = ()  # pseudonyms of affected customers
    categories: tuple[str, ...] = ()
    sensitive: bool = False
    record_count: int = 0
    reason: str | None = None  # e.g. the entitlement reason
    tags: tuple[str, ...] = ()
    output_fields: dict[str, Any] = {}  # the rule's chosen evidence fields (ECS name -> value)


def alert_id(rule_id: str, *event_ids: str) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(rule_id.encode())
    for eid in event_ids:
        h.update(b"\0" + eid.encode())
    return h.hexdigest()
