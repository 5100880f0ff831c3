"""deliver: the outbox over respond's rendered notices, and the channels that send them.

Reads ``notices`` (respond's) and writes only its own tables (``outbox``,
``delivery_attempts``), each write a short transaction on the deliver job's own
connection. Every message carries a fleet-wide idempotency key on the wire; a message is
marked ``sending`` in a committed row before it leaves, so a crash can repeat only the
messages then in flight, and those are recorded as possible repeats (docs/deliver.md).

    deliverer = build_deliverer(settings.deliver, settings.respond, problems, ...)  # load, reload
    deliverer.run(conn)                                                             # the deliver job
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from auditd.config.located import Doc, Problems
from auditd.deliver.channels import BuiltChannels, build_channels
from auditd.deliver.settings import DeliverSettings
from auditd.deliver.worker import Deliverer, DeliveryReport, Fleet
from auditd.respond.settings import RespondSettings


def escalation_target(settings: DeliverSettings, respond: RespondSettings) -> str | None:
    """Whom failed messages are told: deliver.escalate_to, else the security audience's contact_ref."""
    if settings.escalate_to is not None:
        return settings.escalate_to
    security = respond.audiences.get("security")
    name = (security.contact_ref if security is not None else "") or "security"
    return name if name in settings.to else None


def build_deliverer(settings: DeliverSettings, respond: RespondSettings, problems: Problems, *, state_dir: Path,
                    zone: dt.tzinfo, referrer: Doc | None = None) -> Deliverer:
    spool = settings.spool or Path(state_dir) / "deliver"
    channels = build_channels(settings, spool, problems, referrer=referrer)
    target = escalation_target(settings, respond)
    if settings.escalate_to is not None and settings.escalate_to not in settings.to:
        problems.add(referrer, ("deliver", "escalate_to"), f"no route for {settings.escalate_to!r} in deliver.to")
    for name, audience in respond.audiences.items():
        ref = audience.contact_ref or name
        if settings.to and ref not in settings.to and audience.channel != "portal":
            problems.add(referrer, ("respond", "audiences", name, "contact_ref"),
                         f"deliver.to has no route for {ref!r}: its messages would fail")
    return Deliverer(settings, channels, spool=spool, zone=zone, escalate_to=target)


__all__ = ["BuiltChannels", "Deliverer", "DeliveryReport", "DeliverSettings", "Fleet", "build_deliverer",
           "escalation_target"]
