"""E-mail through the standard library's SMTP client: STARTTLS (or TLS) and AUTH, one
connection for a whole batch, the Message-ID derived from the idempotency key, and the
server's queue id (its answer to the end of DATA) as the receipt.
"""

from __future__ import annotations

import email.policy
import email.utils
import mimetypes
import re
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

from auditd.deliver.channels.base import Report, Result
from auditd.deliver.message import Outgoing, message_id
from auditd.deliver.secrets import SecretValue
from auditd.deliver.settings import EmailSettings
from auditd.respond.contacts import open_regular

_QUEUED = re.compile(r"queued as\s+<?([A-Za-z0-9._\-]+)>?", re.IGNORECASE)
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024


class EmailChannel:
    kind = "email"

    def __init__(self, settings: EmailSettings, password: SecretValue | None):
        self.settings = settings
        self._password = password
        self.domain = settings.sender.rpartition("@")[2] or "localhost"

    # -- the connection ------------------------------------------------------------------
    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.settings.ca_file is not None:
            context.load_verify_locations(cafile=str(self.settings.ca_file))
        return context

    def connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.security == "tls":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=self._tls_context())
        else:
            conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        try:
            conn.ehlo()
            if s.security == "starttls":
                conn.starttls(context=self._tls_context())
                conn.ehlo()
            if s.username is not None and self._password is not None:
                self._login(conn, s.username, self._password.reveal())
        except BaseException:
            _close(conn)
            raise
        return conn

    @staticmethod
    def _login(conn: smtplib.SMTP, user: str, password: str) -> None:
        # PLAIN when offered (one round trip, a clear 535 when refused); smtplib's login()
        # otherwise, which tries the server's other mechanisms
        conn.user, conn.password = user, password
        if "plain" in conn.esmtp_features.get("auth", "").lower().split():
            conn.auth("PLAIN", conn.auth_plain)
        else:
            conn.login(user, password)

    # -- a batch -------------------------------------------------------------------------
    def send_batch(self, messages: Sequence[Outgoing], report: Report) -> None:
        conn: smtplib.SMTP | None = None
        try:
            for i, message in enumerate(messages):
                if not message.address:
                    report(message, Result.failed("no e-mail address"))
                    continue
                try:
                    raw = self.compose(message)
                except OSError as exc:
                    report(message, Result.failed(f"attachment unreadable: {exc.strerror or exc}"))
                    continue
                if conn is None:
                    try:
                        conn = self.connect()
                    except smtplib.SMTPAuthenticationError as exc:
                        # the server said no to our credentials: every message waits for an operator's fix
                        error = f"SMTP authentication refused: {exc.smtp_code}"
                        for rest in messages[i:]:
                            report(rest, Result.retry(error))
                        return
                    except (OSError, smtplib.SMTPException) as exc:
                        error = f"cannot reach the SMTP server: {_describe(exc)}"
                        for rest in messages[i:]:
                            report(rest, Result.retry(error))
                        return
                result, alive = self._send_one(conn, message, raw)
                report(message, result)
                if not alive:
                    _close(conn)
                    conn = None
        finally:
            if conn is not None:
                _close(conn, polite=True)

    def _send_one(self, conn: smtplib.SMTP, message: Outgoing, raw: bytes) -> tuple[Result, bool]:
        try:
            code, reply = conn.mail(self.settings.sender)
            if code != 250:
                return self._refused("MAIL", code, reply, conn), True
            code, reply = conn.rcpt(message.address)
            if code not in (250, 251):
                return self._refused("RCPT", code, reply, conn), True
            code, reply = conn.data(raw)
            if code != 250:
                return self._refused("DATA", code, reply, conn), True
        except smtplib.SMTPServerDisconnected as exc:
            return Result.retry(f"SMTP server disconnected: {_describe(exc)}"), False
        except smtplib.SMTPResponseException as exc:
            return self._refused("SMTP", exc.smtp_code, exc.smtp_error, conn), True
        except (OSError, smtplib.SMTPException) as exc:
            return Result.retry(f"SMTP error: {_describe(exc)}"), False
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        found = _QUEUED.search(text)
        receipt = {"smtp_reply": f"{code} {text}"[:200], "queue_id": found.group(1) if found else None,
                   "message_id": message_id(message.wire_key, self.domain)}
        return Result.delivered(receipt, raw), True

    @staticmethod
    def _refused(stage: str, code: int, reply: bytes | str, conn: smtplib.SMTP) -> Result:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        try:
            conn.rset()
        except (OSError, smtplib.SMTPException):
            pass
        # the reply may quote the address back: keep the code and the server's words, not the address
        error = f"{stage} refused: {code} {_scrub(text)}"[:300]
        return Result.retry(error) if 400 <= code < 500 or code == -1 else Result.failed(error)

    # -- the message ---------------------------------------------------------------------
    def compose(self, message: Outgoing) -> bytes:
        mail = EmailMessage(policy=email.policy.SMTP)
        mail["Subject"] = message.subject
        mail["From"] = self.settings.sender
        mail["To"] = email.utils.formataddr((message.name or "", message.address or ""))
        mail["Date"] = email.utils.formatdate(localtime=False)
        mail["Message-ID"] = message_id(message.wire_key, self.domain)
        mail["X-Neo-Idempotency-Key"] = message.wire_key
        mail["Content-Language"] = message.language
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
        return mail.as_bytes()


def _needs_base64(text: str) -> bool:
    return any(ord(c) > 127 for c in text[:2000])


def _scrub(text: str) -> str:
    return re.sub(r"<?[^\s<>@]+@[^\s<>]+>?", "<address>", " ".join(text.split()))


def _describe(exc: BaseException) -> str:
    return _scrub(f"{type(exc).__name__}: {exc}")[:200]


def _close(conn: smtplib.SMTP, *, polite: bool = False) -> None:
    try:
        if polite:
            conn.quit()
        else:
            conn.close()
    except (OSError, smtplib.SMTPException):
        try:
            conn.close()
        except OSError:
            pass
