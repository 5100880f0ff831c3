"""An incident's evidence events in readable form, for the CLI and the respond stage.

The events come from the store's evidence table (the events that raised alerts); what
is shown of them is what a responder needs to see what happened, and nothing that
could name a customer: resource ids only when they are pseudonyms, no free text
(purposes, tickets), no field values.
"""

from __future__ import annotations

from typing import Callable, Iterable

import msgspec

from auditd.correlate.model import EvidenceEvent
from auditd.event import AccessEvent

PSEUDONYM_PREFIX = "p:"


def readable_evidence(events: Iterable[AccessEvent],
                      scrub: Callable[[str], str] | None = None) -> tuple[EvidenceEvent, ...]:
    """The events in time order, each as an EvidenceEvent. `scrub` (pseudonym.id_patterns)
    turns a raw customer id in a field that should never hold one (the actor, a store, a
    partner) into its pseudonym."""
    shown = (_readable(e) for e in sorted(events, key=lambda e: (e.timestamp, e.event_id)))
    return tuple(shown if scrub is None else (_scrubbed(e, scrub) for e in shown))


def _scrubbed(e: EvidenceEvent, scrub: Callable[[str], str]) -> EvidenceEvent:
    words = {name: scrub(value) for name in ("actor", "resource", "destination")
             if (value := getattr(e, name)) is not None}
    return msgspec.structs.replace(e, **words)


def _readable(e: AccessEvent) -> EvidenceEvent:
    resource = e.resource_type
    if resource is not None:
        if e.resource_id is not None and e.resource_id.startswith(PSEUDONYM_PREFIX):
            resource += f" {e.resource_id}"
        if e.resource_store is not None:
            resource += f" ({e.resource_store})"
    destination = e.destination_partner or e.destination_host
    if destination is not None and e.destination_country is not None:
        destination += f" ({e.destination_country})"
    reason = e.entitlement_reason.partition(":")[0] if e.entitlement_reason else None
    return EvidenceEvent(
        event_id=e.event_id, timestamp=e.timestamp, actor=e.user_id, action=e.action or "-",
        outcome=e.outcome, resource=resource, record_count=e.record_count, categories=tuple(e.categories),
        destination=destination, entitled=e.entitlement_granted, reason=reason,
    )
