"""The systemd watchdog, fed only with evidence that the pipeline is alive.

systemd restarts a service that stops sending ``WATCHDOG=1`` within ``WatchdogSec``.
A ping from a timer thread would keep a wedged daemon looking healthy for ever (a
rule or an assignment lookup stuck on one event, a stage in a loop), so pings come
only from the pipeline's own thread, at the three moments that prove it is not stuck:

- ``progressed()``: a chunk of records went through every stage (or a batch committed);
- ``idle()``: it is waiting for input and there is nothing to read;
- ``holding_back(reason)``: it is deliberately not reading, e.g. because storage is full
  or damaged; the reason goes to the systemd status line (``systemctl status``), and
  ``resumed()`` clears it. (Storage back pressure is the first user of this hook.)

A wedged stage calls none of them, the pings stop, and systemd restarts the daemon
after ``WatchdogSec``; a crash, kill or restart loses no event (checkpoints move only
with a committed batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from auditd.ops.sdnotify import Notifier


class Watchdog:
    """Rate-limited ``WATCHDOG=1`` pings on proof of life; a no-op without a watchdog."""

    def __init__(self, notifier: Notifier | None, *, clock: Callable[[], float] = time.monotonic):
        self._notifier = notifier
        interval = notifier.watchdog_interval() if notifier is not None else None
        # twice per interval, as systemd advises, so one late ping is not fatal
        self.every = interval.total_seconds() / 2 if interval else None
        self._clock = clock
        self._last = float("-inf")
        self.holding_back_reason: str | None = None

    @property
    def enabled(self) -> bool:
        return self.every is not None

    def progressed(self) -> None:
        """Records went through the stages since the last call."""
        self._ping()

    def idle(self) -> None:
        """Nothing to read: the pipeline is waiting for input, not stuck."""
        self._ping()

    def holding_back(self, reason: str) -> None:
        """Deliberately not reading (full disk, damaged store): alive, and says why."""
        if reason != self.holding_back_reason:
            self.holding_back_reason = reason
            if self._notifier is not None:
                self._notifier.status(f"holding back: {reason}")
        self._ping()

    def resumed(self) -> None:
        """Reading again after `holding_back`."""
        if self.holding_back_reason is not None:
            self.holding_back_reason = None
            if self._notifier is not None:
                self._notifier.status("running")
        self._ping()

    def _ping(self) -> None:
        if self.every is None:
            return
        now = self._clock()
        if now - self._last >= self.every:
            self._last = now
            self._notifier.watchdog()
