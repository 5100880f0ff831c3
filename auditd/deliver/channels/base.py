"""What every channel does: send a batch of messages, one result each.

A channel is built once per configuration (constructors do no I/O) and opens what it
needs per batch: one SMTP connection, one HTTP connection for many messages. It reports
each message's outcome as it goes, so the worker can record it without waiting for the
batch's end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from auditd.deliver.message import Outgoing

Outcome = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    receipt: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # never an address, a name or a secret
    message_sha256: str | None = None
    maybe_sent: bool = False  # a retry after the message may have reached the receiver (a possible repeat)

    @classmethod
    def delivered(cls, receipt: dict[str, Any], sent: bytes) -> "Result":
        return cls("delivered", receipt, None, hashlib.sha256(sent).hexdigest())

    @classmethod
    def retry(cls, error: str, *, maybe_sent: bool = False) -> "Result":
        return cls("retry", error=error[:500], maybe_sent=maybe_sent)

    @classmethod
    def failed(cls, error: str) -> "Result":
        return cls("failed", error=error[:500])


Report = Callable[[Outgoing, Result], None]


class Channel(Protocol):
    kind: str

    def send_batch(self, messages: Sequence[Outgoing], report: Report) -> None:
        """Send each message and report its result (every message exactly once)."""


def transient_status(status: int) -> bool:
    """HTTP statuses worth retrying: timeouts, throttling, a server in trouble."""
    return status in (408, 425, 429) or status >= 500
