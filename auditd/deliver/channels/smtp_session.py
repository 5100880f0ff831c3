"""The SMTP conversation: connect (STARTTLS or TLS), AUTH, then MAIL, RCPT and DATA for each
composed message, with the server's queue id (its answer to the end of DATA) as the
receipt. Standard library only, so it also runs as a small child process of its own
(``python -I smtp_session.py``), reading batches as JSON lines on stdin and answering
each batch with one line on stdout.

Why a child process: every SMTP reply wakes the thread that waits for it, and a thread
of the daemon waking four times a message would keep taking the interpreter lock from
the pipeline. The deliver thread composes the messages (cheap: a notice's common part is
built once) and hands the child 50 at a time; it wakes once per batch. The password
reaches the child through the pipe, never its command line or environment.

What it does not promise: when the connection drops after DATA was sent, the server may
have queued the message; the result says so (``maybe_sent``) and the outbox marks the
retry a possible repeat.
"""

from __future__ import annotations

import base64
import io
import json
import re
import smtplib
import socket
import ssl
import sys
import time
from typing import Any, BinaryIO

_QUEUED = re.compile(r"queued as\s+<?([A-Za-z0-9._\-]+)>?", re.IGNORECASE)
_ADDRESS = re.compile(r"<?[^\s<>@]+@[^\s<>]+>?")


def scrub(text: str) -> str:
    """A server's words without the addresses it may quote back."""
    return _ADDRESS.sub("<address>", " ".join(text.split()))


def describe(exc: BaseException) -> str:
    return scrub(f"{type(exc).__name__}: {exc}")[:200]


# -- each reply within the timeout -------------------------------------------------------------
class _Reply(io.RawIOBase):
    """The server's socket, read until a deadline that each reply resets: the socket's own
    timeout counts per read, so a server that trickles a reply a byte every few seconds
    (65,536 bytes of a greeting) would hold the deliver process for ever."""

    def __init__(self, sock: socket.socket, timeout_s: float):
        self.sock, self.timeout_s = sock, timeout_s
        self.deadline = time.monotonic() + timeout_s
        self._hold = sock.makefile("rb")  # as smtplib's own reader: the socket lives while it is read

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._hold.close()
        super().close()

    def readinto(self, buffer) -> int:  # type: ignore[override]
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete SMTP reply within the timeout")
        self.sock.settimeout(left)
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.timeout_s)


class _Timed:
    """smtplib's client, each reply (greeting, EHLO, AUTH, MAIL, RCPT, DATA) whole within the timeout."""

    _reply: _Reply | None = None

    def getreply(self):  # type: ignore[no-untyped-def]
        if self.file is None and self.sock is not None:  # type: ignore[attr-defined]
            self._reply = _Reply(self.sock, self.timeout)  # type: ignore[attr-defined]
            self.file = io.BufferedReader(self._reply)
        if self._reply is not None:
            self._reply.deadline = time.monotonic() + self.timeout  # type: ignore[attr-defined]
        return super().getreply()  # type: ignore[misc]


class _SMTP(_Timed, smtplib.SMTP):
    pass


class _SMTP_SSL(_Timed, smtplib.SMTP_SSL):  # noqa: N801 - smtplib's name
    pass


# -- the conversation --------------------------------------------------------------------------
class Session:
    """Constructing it does no I/O; the first send() connects, close() ends it."""

    def __init__(self, *, host: str, port: int, security: str, sender: str, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, timeout_s: float = 30.0):
        self.host, self.port, self.security, self.sender = host, port, security, sender
        self.username, self._password, self.ca_file, self.timeout_s = username, password, ca_file, timeout_s
        self._context: ssl.SSLContext | None = None
        self._conn: smtplib.SMTP | None = None

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            context = ssl.create_default_context()
            if self.ca_file:
                context.load_verify_locations(cafile=self.ca_file)
            self._context = context
        return self._context

    def _connect(self) -> smtplib.SMTP:
        if self.security == "tls":
            conn: smtplib.SMTP = _SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=self._tls())
        else:
            conn = _SMTP(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.ehlo()
            if self.security == "starttls":
                conn.starttls(context=self._tls())
                conn.ehlo()
            if self.username is not None and self._password is not None:
                conn.user, conn.password = self.username, self._password
                # PLAIN when offered (one round trip, a clear 535 when refused); else smtplib's choice
                if "plain" in conn.esmtp_features.get("auth", "").lower().split():
                    conn.auth("PLAIN", conn.auth_plain)
                else:
                    conn.login(self.username, self._password)
        except BaseException:
            _close(conn)
            raise
        return conn

    def send_many(self, items: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """Each (recipient, message) in order; a connection that cannot be made fails the rest alike."""
        out: list[dict[str, Any]] = []
        for i, (to, raw) in enumerate(items):
            if self._conn is None:
                try:
                    self._conn = self._connect()
                except smtplib.SMTPAuthenticationError as exc:
                    error = f"SMTP authentication refused: {exc.smtp_code}"
                    return out + [{"outcome": "retry", "error": error}] * (len(items) - i)
                except (OSError, smtplib.SMTPException) as exc:
                    error = f"cannot reach the SMTP server: {describe(exc)}"
                    return out + [{"outcome": "retry", "error": error}] * (len(items) - i)
            result, alive = self._send_one(self._conn, to, raw)
            out.append(result)
            if not alive:
                _close(self._conn)
                self._conn = None
        return out

    def _send_one(self, conn: smtplib.SMTP, to: str, raw: bytes) -> tuple[dict[str, Any], bool]:
        stage = "MAIL"
        try:
            code, reply = conn.mail(self.sender)
            if code != 250:
                return self._refused(stage, code, reply, conn), True
            stage = "RCPT"
            code, reply = conn.rcpt(to)
            if code not in (250, 251):
                return self._refused(stage, code, reply, conn), True
            stage = "DATA"
            code, reply = conn.data(raw)
            if code != 250:
                return self._refused(stage, code, reply, conn), True
        except smtplib.SMTPServerDisconnected as exc:
            # lost during DATA: the server may have taken the message before it went
            return {"outcome": "retry", "error": f"SMTP server disconnected: {describe(exc)}",
                    "maybe_sent": stage == "DATA"}, False
        except smtplib.SMTPResponseException as exc:
            return self._refused(stage, exc.smtp_code, exc.smtp_error, conn), True
        except (OSError, smtplib.SMTPException) as exc:
            return {"outcome": "retry", "error": f"SMTP error: {describe(exc)}", "maybe_sent": stage == "DATA"}, False
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        found = _QUEUED.search(text)
        return {"outcome": "delivered", "receipt": {"smtp_reply": f"{code} {scrub(text)}"[:200],
                                                    "queue_id": found.group(1) if found else None}}, True

    @staticmethod
    def _refused(stage: str, code: int, reply: bytes | str, conn: smtplib.SMTP) -> dict[str, Any]:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        try:
            conn.rset()
        except (OSError, smtplib.SMTPException):
            pass
        error = f"{stage} refused: {code} {scrub(text)}"[:300]
        return {"outcome": "retry" if 400 <= code < 500 or code == -1 else "failed", "error": error}

    def close(self) -> None:
        if self._conn is not None:
            _close(self._conn, polite=True)
            self._conn = None


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


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child's loop: {"op": "open", ...Session's arguments}, then {"op": "send", "items":
    [[recipient, base64 message], ...]} answered by {"results": [...]} (one per item, in
    order), until {"op": "close"} or the end of stdin (the daemon went away)."""
    session: Session | None = None
    try:
        for line in stdin:
            request = json.loads(line)
            op = request.pop("op", None)
            if op == "open":
                session = Session(**request)
            elif op == "send" and session is not None:
                items = [(to, base64.b64decode(raw)) for to, raw in request["items"]]
                stdout.write(json.dumps({"results": session.send_many(items)}).encode() + b"\n")
                stdout.flush()
            elif op == "close":
                break
    finally:
        if session is not None:
            session.close()


if __name__ == "__main__":
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
