"""One HTTP request to an operator's endpoint (a contact look-up, a contain webhook, a
gateway, the assignment service), bounded as a whole: the status line, the headers and
the body must all arrive within the timeout. The socket's own timeout counts per read,
so a peer that trickles a byte every few seconds would hold the caller for ever -- the
daemon's pipeline thread, for an assignment look-up. Redirects are never followed."""

from __future__ import annotations

import http.client
import io
import socket
import time
import urllib.parse
from typing import Any


def http_call(method: str, url: str, timeout_s: float, *, body: bytes | None = None,
              headers: dict[str, str] | None = None, limit: int = 1 << 16) -> tuple[int, bytes]:
    """One request: its status and at most `limit` bytes of its answer, all within
    `timeout_s`. A redirect is an answer like any other, never followed."""
    parts = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=timeout_s)
    conn.response_class = answer_within(timeout_s)  # type: ignore[assignment]
    try:
        conn.request(method, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body=body,
                     headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(limit)
    finally:
        conn.close()


class _Deadline(io.RawIOBase):
    """A peer's socket, read until a deadline: the socket's own timeout counts per read,
    so a peer that trickles a byte every few seconds would hold the reader for ever."""

    def __init__(self, sock: socket.socket, timeout_s: float):
        self.sock, self.timeout_s = sock, timeout_s
        self.deadline = time.monotonic() + timeout_s
        # as http.client's own reader does: the socket stays open until the answer is read,
        # even when the connection closes it at once (an answer with "Connection: close")
        self._hold = sock.makefile("rb")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._hold.close()
        super().close()

    def readinto(self, buffer) -> int:  # type: ignore[override]
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete answer within {self.timeout_s:g} s")
        self.sock.settimeout(left)
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.timeout_s)  # the kept-alive connection's next request


class _Bounded:
    """What http.client's response reads from: the socket, behind a `_Deadline`."""

    def __init__(self, sock: socket.socket, timeout_s: float):
        self.sock, self.timeout_s = sock, timeout_s

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_Deadline(self.sock, self.timeout_s))


def answer_within(timeout_s: float):
    """A response class whose status, headers and body must all arrive within `timeout_s`."""

    def response(sock: socket.socket, *args: Any, **kwargs: Any) -> http.client.HTTPResponse:
        return http.client.HTTPResponse(_Bounded(sock, timeout_s), *args, **kwargs)  # type: ignore[arg-type]

    return response
