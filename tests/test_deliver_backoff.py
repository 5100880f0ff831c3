"""Backoff between attempts and the per-route rate limits, with a clock passed in."""

from __future__ import annotations

from auditd.config.typed import Duration
from auditd.deliver.backoff import RateLimiter, RetryPolicy
from auditd.deliver.settings import RetrySettings


def test_waits_double_from_initial_up_to_max_plus_some_jitter():
    policy = RetryPolicy(RetrySettings(attempts=10, initial=Duration(30.0), max=Duration(3600.0),
                                       jitter=Duration(10.0)))
    for attempts, base in [(1, 30), (2, 60), (3, 120), (4, 240), (8, 3600), (9, 3600)]:
        waits = {policy.wait(attempts).total_seconds() for _ in range(20)}
        assert all(base <= w <= base + 10 for w in waits), (attempts, waits)
        assert len(waits) > 1  # jitter: a fleet of messages does not come back as one wave


def test_no_wait_when_configured_so():
    policy = RetryPolicy(RetrySettings(attempts=3, initial=Duration(0.0), max=Duration(0.0), jitter=Duration(0.0)))
    assert policy.wait(1).total_seconds() == policy.wait(5).total_seconds() == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_chat_robot_takes_twenty_a_minute_and_says_when_the_next_may_go():
    clock = Clock()
    limiter = RateLimiter(20, clock)
    assert limiter.allowance() == 20 and limiter.wait_s() == 0
    limiter.take(20)
    assert limiter.allowance() == 0 and limiter.wait_s() == 60
    clock.now += 59.5
    assert limiter.allowance() == 0 and abs(limiter.wait_s() - 0.5) < 1e-9
    clock.now += 0.5
    assert limiter.allowance() == 20


def test_a_fast_route_is_spread_over_each_second():
    clock = Clock()
    limiter = RateLimiter(15_000, clock)  # 250 a second, not 15,000 at once
    assert limiter.allowance() == 250
    limiter.take(250)
    assert limiter.allowance() == 0 and limiter.wait_s() == 1.0
    clock.now += 1.0
    assert limiter.allowance() == 250
