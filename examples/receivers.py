"""The demo's receivers on loopback: an SMTP server and an HTTP server that keep what
neo-auditd's deliver stage sends them, as a mail relay, a chat robot and SMS and push
gateways would take it.

    python examples/receivers.py --out examples/out/received --ports examples/out/receivers.json

Each e-mail is saved as `mail/NNNN.eml`, each HTTP request as `http/NNNN.json` (path,
the X-Neo-* headers, the body). Both listen on 127.0.0.1 only, on free ports written to
the `--ports` file ({"smtp": P, "http": P}) once they listen. Runs until SIGTERM or
Ctrl-C. Plain SMTP without AUTH, as a relay on the same host is; a real deployment
names its relay with `security: starttls` and a password file (docs/deliver.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller


class Keeper:
    """Numbers and writes what arrives, one file each, never over an earlier one."""

    def __init__(self, folder: Path, suffix: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.suffix = folder, suffix
        self.numbers = itertools.count(len(list(folder.glob(f"*{suffix}"))) + 1)
        self.lock = threading.Lock()

    def keep(self, data: bytes) -> None:
        with self.lock:
            (self.folder / f"{next(self.numbers):04d}{self.suffix}").write_bytes(data)


class MailHandler:
    def __init__(self, keeper: Keeper):
        self.keeper = keeper

    async def handle_DATA(self, server, session, envelope):
        self.keeper.keep(envelope.original_content or envelope.content)
        return "250 OK queued as demo"


def http_handler(keeper: Keeper) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = body.decode("utf-8", "replace")
            headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-neo-")}
            keeper.keep(json.dumps({"path": self.path, "headers": headers, "body": parsed},
                                   ensure_ascii=False, indent=2).encode())
            reply = json.dumps({"id": f"demo-{self.path.strip('/')}", "ok": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
            pass

    return Handler


def free_port() -> int:
    """A port free on 127.0.0.1 now (aiosmtpd's controller cannot be given port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for what arrives")
    parser.add_argument("--ports", type=Path, required=True, help="JSON file to write the ports to")
    args = parser.parse_args()

    http = ThreadingHTTPServer(("127.0.0.1", 0), http_handler(Keeper(args.out / "http", ".json")))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    smtp_port = free_port()
    smtp = Controller(MailHandler(Keeper(args.out / "mail", ".eml")), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    args.ports.write_text(json.dumps({"smtp": smtp_port, "http": http.server_address[1]}))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    smtp.stop()
    http.shutdown()


if __name__ == "__main__":
    main()
