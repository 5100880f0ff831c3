"""When to try again, and how fast a route may go.

Retries are rows, not loops: a message that failed for now is queued again with its next
attempt time, so a channel down for hours holds no thread and survives a restart. The
wait before attempt n+1 is tenacity's ``wait_exponential`` (initial * 2^(n-1),
capped at max) plus ``wait_random`` (up to `jitter`), so a fleet of messages does not return as
one wave).

A rate limit is a sliding window over the last minute: a DingTalk robot takes about 20
messages a minute, so the 21st waits, as pending, for the window to move.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Callable

import tenacity

from auditd.deliver.settings import RetrySettings


class RetryPolicy:
    def __init__(self, settings: RetrySettings):
        self.settings = settings
        # wait_exponential + wait_random, not wait_exponential_jitter: its arguments changed
        # between tenacity 8.2 (the lowest allowed) and 9
        self._wait = tenacity.wait_exponential(multiplier=settings.initial.seconds, max=settings.max.seconds) + \
            tenacity.wait_random(0, settings.jitter.seconds)

    def wait(self, attempts_made: int) -> dt.timedelta:
        """The pause after the `attempts_made`-th attempt failed."""
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempts_made)
        return dt.timedelta(seconds=float(self._wait(state)))


class RateLimiter:
    """At most `per_minute` messages in any 60 seconds; from 10 a second up, at most
    per_minute/60 in any second (a smooth flow, not a minute's worth at once)."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self.window_s, self.limit = (1.0, max(1, int(per_minute / 60))) if per_minute >= 600 else \
            (60.0, max(1, int(per_minute)))
        self._sent: collections.deque[float] = collections.deque()

    def _expire(self, now: float) -> None:
        while self._sent and now - self._sent[0] >= self.window_s:
            self._sent.popleft()

    def allowance(self) -> int:
        self._expire(self.clock())
        return max(0, self.limit - len(self._sent))

    def wait_s(self) -> float:
        """How long until one more message may go."""
        now = self.clock()
        self._expire(now)
        if len(self._sent) < self.limit:
            return 0.0
        return self.window_s - (now - self._sent[len(self._sent) - self.limit])

    def take(self, n: int) -> None:
        now = self.clock()
        self._sent.extend([now] * n)
