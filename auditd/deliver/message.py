"""One message as it goes out: read from the rendered file, addressed, keyed.

The idempotency key on the wire is fleet-wide: ``<fleet key>/<step>/<recipient>/r<revision>``
(the fleet key is the same on every daemon that saw the episode; local incident ids are
not), so a receiver that drops repeats by key sees each message once across the fleet.
It travels as a header (webhooks, gateways, json chat), as the SMTP Message-ID (a hash of
it; the key itself in ``X-Neo-Idempotency-Key``), as the gateway's ``reference``, in a
chat message's last line, and in a letter's footer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from auditd.respond.contacts import open_regular

MAX_BODY_BYTES = 16 * 1024 * 1024


class BodyError(Exception):
    """The rendered file is missing, unreadable, or not what respond writes."""


def wire_key(fleet_key: str | None, incident_id: str, step_id: str, recipient: str, revision: int) -> str:
    return f"{fleet_key or incident_id}/{step_id}/{recipient}/r{revision}"


def message_id(key: str, domain: str) -> str:
    """An RFC 5322 Message-ID that is a function of the key: the same on every daemon."""
    return f"<{hashlib.sha256(key.encode('utf-8')).hexdigest()[:40]}@{domain}>"


@dataclass(frozen=True, slots=True)
class Outgoing:
    outbox_id: int
    wire_key: str
    route: str
    channel: str
    audience: str
    kind: str
    incident_id: str | None
    language: str
    subject: str
    text: str
    html: str
    attachments: tuple[Path, ...] = ()
    address: str | None = None  # customers: from the rendered file; audiences: from the route
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # never an address or a name in a log line or a traceback
        return f"Outgoing({self.outbox_id}, {self.wire_key!r}, {self.route!r})"

    def with_footer(self) -> str:
        """The text with the key as its last line (chat, SMS: where no header exists)."""
        return f"{self.text.rstrip()}\n\nref: {self.wire_key}"


def read_body(path: str | Path) -> dict[str, Any]:
    """The rendered file (respond/notices.py): opened without following a link."""
    try:
        data = open_regular(Path(path))
    except OSError as exc:
        raise BodyError(f"cannot read the rendered message: {exc.strerror or exc}") from None
    if len(data) > MAX_BODY_BYTES:
        raise BodyError("the rendered message is too large")
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise BodyError("the rendered message is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise BodyError("the rendered message has no text")
    return body


def body_sha256(path: str | Path) -> str:
    return hashlib.sha256(open_regular(Path(path))).hexdigest()
