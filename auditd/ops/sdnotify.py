"""A small sd_notify client: the service tells systemd it is ready, reloading or stopping.

The protocol is one datagram of newline-separated ``KEY=VALUE`` lines sent to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract
namespace). Without ``$NOTIFY_SOCKET`` the daemon is not run by systemd as
``Type=notify`` and every call is a no-op, so the service calls these unconditionally.
Written by hand to keep a dependency (and its C build) out of the daemon.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _monotonic_usec() -> int:
    # systemd compares MONOTONIC_USEC= against its own CLOCK_MONOTONIC.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _socket_address(notify_socket: str | None) -> str | bytes | None:
    if not notify_socket:
        return None
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    if notify_socket.startswith("/"):
        return notify_socket
    # vsock:CID:PORT (systemd >= 253, for VMs) and anything else is not spoken here.
    log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX path; notifications disabled", notify_socket)
    return None


class Notifier:
    """Sends state changes to systemd. Construction only reads the given environment."""

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 monotonic_usec: Callable[[], int] = _monotonic_usec,
                 pid: Callable[[], int] = os.getpid) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._monotonic_usec = monotonic_usec
        self._pid = pid
        self._last_warning = float("-inf")

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self) -> bool:
        return self.notify("READY=1")

    def reloading(self) -> bool:
        # systemd >= 253 (Type=notify-reload) needs MONOTONIC_USEC= to tell this reload
        # from an earlier one; older versions ignore the extra line.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={self._monotonic_usec()}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        # One line: a newline would start a new KEY=VALUE assignment.
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> dt.timedelta | None:
        """The watchdog timeout systemd set for this process, or None when there is none.

        Ping at least twice per interval (systemd's own advice is every half of it).
        """
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid and self._watchdog_pid != str(self._pid()):
            return None  # the variables were meant for another process (e.g. our parent)
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r: not an integer", self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        return dt.timedelta(microseconds=usec)

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # never wait on the manager: a datagram socket whose reader fell behind
                # would block the pipeline's thread; a dropped ping is what a late one is
                sock.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError as error:
            # A lost notification must not take the daemon down; systemd's own timeouts
            # (start, watchdog) are what notice a daemon that really stopped talking.
            now = time.monotonic()
            if now - self._last_warning >= 60:  # a manager that stopped reading: say so once a minute
                self._last_warning = now
                log.warning("sd_notify %r failed: %s", assignments[0].split("=")[0], error)
            return False
        return True
