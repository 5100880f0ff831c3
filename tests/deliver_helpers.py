"""Real receivers on loopback for the delivery tests: an SMTP server (aiosmtpd, STARTTLS
with a certificate made here, AUTH), an HTTP server for webhooks, gateways and Apprise's
json:// service; and a store with rendered notices in it."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import hashlib
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from auditd.config.located import Problems
from auditd.deliver import build_deliverer
from auditd.deliver.settings import DeliverSettings
from auditd.respond.settings import RespondSettings
from auditd.store.migrations import migrate
from auditd.store.sqlite import immediate
from auditd.store.times import to_db
from zoneinfo import ZoneInfo

UTC = dt.timezone.utc
ZONE = ZoneInfo("Asia/Shanghai")
SMTP_USER, SMTP_PASSWORD = "neo-auditd", "s3cret-SMTP-pa55word"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made now with openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


# -- SMTP ------------------------------------------------------------------------------------------
@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


class SmtpHandler:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refuse_first = 0  # answer 451 to this many RCPTs
        self.refused = 0
        self.delay_s = 0.0  # per message: keeps messages in flight longer
        self.drop_after_data = 0  # take this many messages, then drop the connection instead of answering
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            if self.refused < self.refuse_first:
                self.refused += 1
                return "451 4.3.0 Temporary failure, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content
                                          or envelope.content))
            n = len(self.received)
            drop = self.drop_after_data > 0
            self.drop_after_data -= drop
        if drop:
            server.transport.close()  # queued, but the client never hears so
            return None
        return f"250 2.0.0 Ok: queued as Q{n:08d}"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == SMTP_USER.encode() and \
        auth_data.password == SMTP_PASSWORD.encode()
    return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535


class SmtpServer:
    """aiosmtpd on 127.0.0.1: STARTTLS required, AUTH required (over TLS only)."""

    def __init__(self, folder: Path, *, tls: bool = True):
        self.handler = SmtpHandler()
        self.port = free_port()
        self.cert, self.key = make_cert(folder) if tls else (None, None)
        kwargs: dict[str, Any] = {}
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.cert), str(self.key))
            kwargs = {"tls_context": context, "require_starttls": True, "authenticator": _authenticator,
                      "auth_required": True}
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> "SmtpServer":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[Received]:
        return self.handler.received


# -- HTTP ------------------------------------------------------------------------------------------
@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """A real HTTP server on loopback that records every POST; `status` decides the answer."""

    status: Callable[[Request], int] = lambda request: 200
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HttpReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.path, {k: v for k, v in self.headers.items()}, self.rfile.read(length))
                status = receiver.status(request)
                with receiver._lock:
                    if 200 <= status < 300:
                        receiver.requests.append(request)
                    n = len(receiver.requests)
                answer = json.dumps({"id": f"R{n:06d}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "HttpReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- a store with notices ----------------------------------------------------------------------------
def open_store(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    migrate(conn, path, backup=False)
    return conn


def write_body(path: Path, body: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = json.dumps(body, ensure_ascii=False).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def add_incident(conn: sqlite3.Connection, n: int = 1, *, actor: str = "E10055") -> tuple[str, str]:
    """A real incident, opened through the correlator's seam: (local id, fleet key)."""
    from auditd.correlate import CorrelateSettings, Correlator
    from respond_helpers import alert

    at = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC) + dt.timedelta(days=n)
    correlator = Correlator(CorrelateSettings(), lambda: at)
    with immediate(conn):
        correlator.apply(conn, [alert(n, at, actor=actor)])
    return conn.execute("SELECT incident_id, fleet_key FROM incidents ORDER BY rowid DESC LIMIT 1").fetchone()


def add_notice(conn: sqlite3.Connection, folder: Path, *, incident_id: str, step_id: str, recipient: str,
               audience: str = "customers", channel: str = "email", kind: str = "notice", revision: int = 1,
               address: str | None = None, name: str = "张三", contact_ref: str | None = None,
               subject: str = "About a security incident", text: str = "Dear customer, ...",
               language: str = "en", attachments: list[str] | None = None, html: str = "") -> int:
    path = folder / "notices" / incident_id / step_id / f"{recipient.replace(':', '_')}-r{revision}.json"
    if audience == "customers":
        to = {"channel": channel, "address": address or f"{recipient.replace(':', '')}@mail.example", "name": name}
        ref = contact_ref or f"contact:{recipient}:{channel}"
    else:
        ref = contact_ref or f"audience:{recipient}"
        to = {"audience": audience, "contact_ref": ref, "channel": channel}
    digest = write_body(path, {"to": to, "language": language, "subject": subject, "text": text, "html": html,
                               "attachments": attachments or []})
    cur = conn.execute(
        "INSERT INTO notices (idempotency_key, incident_id, step_id, revision, kind, audience, channel, recipient,"
        " contact_ref, language, subject, body_path, body_sha256, rendered_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (f"{incident_id}/{step_id}/{recipient}/{revision}", incident_id, step_id, revision, kind, audience, channel,
         recipient, ref, language, subject, str(path), digest, to_db(dt.datetime.now(UTC))))
    return int(cur.lastrowid)


def add_customers(conn: sqlite3.Connection, folder: Path, n: int, *, incident_id: str = "INC-1",
                  step_id: str = "notify-customers", channel: str = "email") -> None:
    with immediate(conn):
        for i in range(n):
            add_notice(conn, folder, incident_id=incident_id, step_id=step_id, recipient=f"p:{i:06d}",
                       channel=channel, address=f"c{i}@mail.example")


def deliverer(settings: DeliverSettings, tmp: Path, *, respond: RespondSettings | None = None, clock=None):
    problems = Problems()
    d = build_deliverer(settings, respond or RespondSettings(), problems, state_dir=tmp, zone=ZONE)
    problems.raise_if_any()
    if clock is not None:
        d.clock = clock
    return d


def outbox_states(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
