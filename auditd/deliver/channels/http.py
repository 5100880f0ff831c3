"""Webhooks and HTTP gateways (SMS, app push): JSON over one kept-alive connection per batch.

A webhook body is signed: ``X-Neo-Signature: sha256=<hex HMAC-SHA-256 of
"<timestamp>." + body>`` with the route's secret, ``X-Neo-Timestamp`` the Unix time it
was signed at (receivers refuse old ones, so a captured request cannot be replayed
later), and ``X-Neo-Idempotency-Key`` the message's key (receivers drop repeats by
it). A gateway gets ``Authorization: Bearer <token>`` and the key both as that header and
as ``reference`` in the body. The receipt is the HTTP status and the id the receiver
answered with (``id``, ``message_id`` or ``request_id`` in a JSON answer, or the
``X-Request-Id`` header).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from auditd.deliver.channels.base import Report, Result, transient_status
from auditd.deliver.message import Outgoing
from auditd.deliver.secrets import SecretValue
from auditd.httpcall import answer_within

MAX_ANSWER_BYTES = 64 * 1024


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None,
           tolerance_s: float = 300.0) -> bool:
    """What a receiver does: a valid signature over this body, signed recently."""
    try:
        age = abs((now if now is not None else time.time()) - float(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


class HttpPoster:
    """POSTs JSON to one URL, keeping the connection between messages of a batch."""

    def __init__(self, url: str, timeout_s: float):
        parts = urllib.parse.urlsplit(url)
        self.scheme, self.host, self.port = parts.scheme, parts.hostname or "", parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str]) -> Result:
        reused = self._conn is not None
        conn = self._conn or self._connect()
        sent = False  # once the request is out, the receiver may act on it whatever happens to its answer
        try:
            conn.request("POST", self.path, body=body, headers={"Content-Type": "application/json", **headers})
            sent = True
            response = conn.getresponse()
            answer = response.read(MAX_ANSWER_BYTES)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            if reused:  # a kept-alive connection the server had closed: once more on a fresh one
                return self.post(body, headers)
            return Result.retry(f"HTTP connection lost: {type(exc).__name__}", maybe_sent=sent)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Result.retry(f"HTTP error: {type(exc).__name__}: {exc}"[:200], maybe_sent=sent)
        if (response.getheader("Connection") or "").lower() == "close" or not response.isclosed():
            self.close()  # not closed: an answer longer than we read, whose rest would be read as the next answer
        return _result(response.status, answer, response.getheader("X-Request-Id"), body)

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        self._conn = cls(self.host, self.port, timeout=self.timeout_s)
        self._conn.response_class = answer_within(self.timeout_s)  # type: ignore[assignment]
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _result(status: int, answer: bytes, request_id: str | None, sent: bytes) -> Result:
    response_id = request_id
    try:
        parsed = json.loads(answer) if answer else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("id", "message_id", "request_id"):
            if isinstance(parsed.get(key), (str, int)):
                response_id = str(parsed[key])[:200]
                break
    if 200 <= status < 300:
        return Result.delivered({"http_status": status, "response_id": response_id}, sent)
    if transient_status(status):
        return Result.retry(f"HTTP {status}")
    return Result.failed(f"HTTP {status}")


def _payload(message: Outgoing, **extra: Any) -> bytes:
    body = {"key": message.wire_key, "audience": message.audience, "kind": message.kind,
            "incident": message.incident_id, "language": message.language, "subject": message.subject,
            "text": message.text, **extra}
    return json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8")


class WebhookChannel:
    """A generic webhook: JSON, HMAC-SHA-256 signed, timestamped, keyed."""

    kind = "webhook"

    def __init__(self, url: str, secret: SecretValue, timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.time):
        self.url = url
        self._secret = secret
        self.timeout_s = timeout_s
        self.clock = clock

    def send_batch(self, messages: Sequence[Outgoing], report: Report) -> None:
        poster = HttpPoster(self.url, self.timeout_s)
        try:
            for message in messages:
                body = _payload(message, html=message.html)
                timestamp = str(int(self.clock()))
                headers = {"X-Neo-Idempotency-Key": message.wire_key, "X-Neo-Timestamp": timestamp,
                           "X-Neo-Signature": sign(self._secret.reveal(), timestamp, body)}
                report(message, poster.post(body, headers))
        finally:
            poster.close()


class GatewayChannel:
    """An SMS or app-push gateway over HTTP: the text and the recipient's number or device."""

    def __init__(self, kind: str, url: str, token: SecretValue | None, timeout_s: float = 10.0):
        self.kind = kind
        self.url = url
        self._token = token
        self.timeout_s = timeout_s

    def send_batch(self, messages: Sequence[Outgoing], report: Report) -> None:
        poster = HttpPoster(self.url, self.timeout_s)
        try:
            for message in messages:
                if not message.address:
                    report(message, Result.failed(f"no {self.kind} address"))
                    continue
                body = json.dumps({"to": message.address, "text": message.with_footer(), "subject": message.subject,
                                   "language": message.language, "reference": message.wire_key},
                                  ensure_ascii=False, sort_keys=True).encode("utf-8")
                headers = {"X-Neo-Idempotency-Key": message.wire_key}
                if self._token is not None:
                    headers["Authorization"] = f"Bearer {self._token.reveal()}"
                report(message, poster.post(body, headers))
        finally:
            poster.close()
