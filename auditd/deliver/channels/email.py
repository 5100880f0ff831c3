"""E-mail through the standard library's SMTP client: STARTTLS (or TLS) and AUTH, one
connection for many messages, the Message-ID derived from the idempotency key, and the
server's queue id (its answer to the end of DATA) as the receipt.

The messages are composed here, on the deliver job's thread; the SMTP conversation runs
in a child process by default (``smtp_session.py``: one wake-up of this thread per 50
messages instead of four per message, so the pipeline keeps the interpreter), or on
this thread with ``process: false``.
"""

from __future__ import annotations

import base64
import email.policy
import email.utils
import json
import mimetypes
import subprocess
import sys
import time
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from auditd.deliver.channels import smtp_session
from auditd.deliver.channels.base import Report, Result
from auditd.deliver.message import Outgoing, message_id
from auditd.deliver.secrets import SecretValue
from auditd.deliver.settings import EmailSettings
from auditd.respond.contacts import CONTROL, open_regular

MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
CHUNK = 50  # messages per hand-over to the SMTP session (and per wake-up of this thread)


class _ChildSession:
    """smtp_session.py in a child process, spoken to over its stdin and stdout."""

    def __init__(self, options: dict[str, Any]):
        self.proc = subprocess.Popen([sys.executable, "-I", smtp_session.__file__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, close_fds=True)
        self._write({"op": "open", **options})  # the password travels through the pipe only

    def _write(self, request: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()

    def send_many(self, items: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        try:
            self._write({"op": "send", "items": [[to, base64.b64encode(raw).decode()] for to, raw in items]})
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            results = json.loads(line)["results"] if line else None
        except (OSError, ValueError):
            results = None
        if results is None or len(results) != len(items):  # the child died: any of them may have gone out
            self.close()
            return [{"outcome": "retry", "error": "the SMTP sender process stopped", "maybe_sent": True}
                    for _ in items]
        return results

    def close(self) -> None:
        try:
            self._write({"op": "close"})
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


class EmailChannel:
    kind = "email"

    def __init__(self, settings: EmailSettings, password: SecretValue | None):
        self.settings = settings
        self._password = password
        self.domain = settings.sender.rpartition("@")[2] or "localhost"
        self._shared: dict[tuple, bytes] = {}  # a notice's common part, built once (insertion order: oldest first)
        self._date: tuple[int, str] = (0, "")
        self._session: Any = None  # kept between the batches of one run; close() ends it

    def _options(self) -> dict[str, Any]:
        s = self.settings
        return {"host": s.host, "port": s.port, "security": s.security, "sender": s.sender, "username": s.username,
                "password": self._password.reveal() if self._password is not None else None,
                "ca_file": str(s.ca_file) if s.ca_file else None, "timeout_s": s.timeout_s}

    def _open(self) -> Any:
        if self._session is None:
            options = self._options()
            self._session = _ChildSession(options) if self.settings.process else smtp_session.Session(**options)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            session.close()

    def send_batch(self, messages: Sequence[Outgoing], report: Report) -> None:
        ready: list[tuple[Outgoing, bytes]] = []
        for message in messages:
            if not message.address:
                report(message, Result.failed("no e-mail address"))
                continue
            if CONTROL.search(message.address) or CONTROL.search(message.name or ""):
                # what a customer typed as their name or address: a line break in it would
                # add headers (a Reply-To of the typist's choosing) to an official notice
                report(message, Result.failed("the recipient's name or address holds control characters"))
                continue
            try:
                ready.append((message, self.compose(message)))
            except OSError as exc:
                report(message, Result.failed(f"attachment unreadable: {exc.strerror or exc}"))
            except ValueError as exc:  # the library refused a header: this message's problem, not the batch's
                report(message, Result.failed(f"cannot compose the message: {type(exc).__name__}"))
        for start in range(0, len(ready), CHUNK):
            chunk = ready[start:start + CHUNK]
            results = self._open().send_many([(m.address or "", raw) for m, raw in chunk])
            for (message, raw), result in zip(chunk, results):
                report(message, self._result(message, raw, result))

    def _result(self, message: Outgoing, raw: bytes, result: dict[str, Any]) -> Result:
        if result["outcome"] == "delivered":
            return Result.delivered({**result["receipt"], "message_id": message_id(message.wire_key, self.domain)},
                                    raw)
        if result["outcome"] == "failed":
            return Result.failed(result["error"])
        return Result.retry(result["error"], maybe_sent=bool(result.get("maybe_sent")))

    # -- the message ---------------------------------------------------------------------
    def compose(self, message: Outgoing) -> bytes:
        """The MIME message. What is the same for every recipient of a notice (subject,
        text, HTML, attachments) is built once by the standard library and kept; each
        message adds its own To, Date, Message-ID and key lines in front."""
        address, name, key = message.address or "", message.name or "", message.wire_key
        if not (address.isascii() and key.isascii()):
            return self._compose_whole(message)
        shared_key = (message.subject, message.text, message.html, message.attachments, message.language)
        shared = self._shared.get(shared_key)
        if shared is None:
            shared = self._compose_shared(message)
            if len(self._shared) >= 64:
                self._shared.pop(next(iter(self._shared)))
            self._shared[shared_key] = shared
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, email.utils.formatdate(now, localtime=False))
        to = email.utils.formataddr((name, address), charset="utf-8")
        head = (f"To: {to}\r\nDate: {self._date[1]}\r\nMessage-ID: {message_id(key, self.domain)}\r\n"
                f"X-Neo-Idempotency-Key: {key}\r\n")
        return head.encode("ascii") + shared

    def _compose_shared(self, message: Outgoing) -> bytes:
        mail = EmailMessage(policy=email.policy.SMTP)
        mail["Subject"] = message.subject
        mail["From"] = self.settings.sender
        mail["Content-Language"] = message.language
        self._content(mail, message)
        return mail.as_bytes()

    def _compose_whole(self, message: Outgoing) -> bytes:
        mail = EmailMessage(policy=email.policy.SMTP)
        mail["Subject"] = message.subject
        mail["From"] = self.settings.sender
        mail["To"] = email.utils.formataddr((message.name or "", message.address or ""))
        mail["Date"] = email.utils.formatdate(localtime=False)
        mail["Message-ID"] = message_id(message.wire_key, self.domain)
        mail["X-Neo-Idempotency-Key"] = message.wire_key
        mail["Content-Language"] = message.language
        self._content(mail, message)
        return mail.as_bytes()

    @staticmethod
    def _content(mail: EmailMessage, message: Outgoing) -> None:
        mail.set_content(message.text, cte="base64" if _needs_base64(message.text) else "quoted-printable")
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        for path in message.attachments:
            data = open_regular(Path(path))
            if len(data) > MAX_ATTACHMENT_BYTES:
                raise OSError(f"{Path(path).name} is larger than {MAX_ATTACHMENT_BYTES} bytes")
            ctype = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
            maintype, subtype = ctype.split("/", 1)
            mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=Path(path).name)


def _needs_base64(text: str) -> bool:
    return any(ord(c) > 127 for c in text[:2000])
