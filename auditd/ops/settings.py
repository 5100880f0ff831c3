"""The `ops:` section of the config: metrics endpoint, Sentry, retention.

    ops:
      metrics: {enabled: true, listen: 127.0.0.1, port: 9464}
      sentry: {dsn: null, environment: production, sample_rate: 1.0}
      retention: {events: 184d, quarantine: 184d, check_every: 1h}

Every check runs at load time, so a bad value is a configuration error (exit 78) with
file, line and key, never a crash after the daemon has started.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

from auditd.config.typed import Duration

# 网络安全法 art. 21(3): network logs are kept "not less than six months". Six calendar
# months are 181 to 184 days (1 July to 1 January is 184), so 180 days would fall short
# by up to four days for logs written in the second half of a year; 184 never does.
LEGAL_MINIMUM_RETENTION = Duration(184 * 86400)
LEGAL_BASIS = "网络安全法 art. 21: network logs are kept at least six months"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool = True
    # Loopback by default: the page has no PI, but counts per rule and per source still
    # describe the company's defences. Expose it wider on purpose, and behind a firewall.
    listen: str = "127.0.0.1"
    port: int = 9464

    def check(self) -> Iterator[tuple[str, str]]:
        try:
            ipaddress.ip_address(self.listen)
        except ValueError:
            # A host name would be resolved once at start and could bind somewhere unexpected.
            yield "listen", f"expected an IP address such as 127.0.0.1 or ::1, got {self.listen!r}"
        if not 1 <= self.port <= 65535:
            yield "port", f"expected a port from 1 to 65535, got {self.port}"


@dataclass(frozen=True, slots=True)
class SentrySettings:
    dsn: str | None = None  # None: errors are only logged
    environment: str = "production"
    sample_rate: float = 1.0

    def check(self) -> Iterator[tuple[str, str]]:
        if self.dsn is not None and not _valid_dsn(self.dsn):
            # The DSN holds a key: never echo it back into logs or the terminal.
            yield "dsn", "not a Sentry DSN (expected https://<key>@<host>/<project id>)"
        if not self.environment.strip():
            yield "environment", "must not be empty"
        if not 0.0 <= self.sample_rate <= 1.0:
            yield "sample_rate", f"expected a number from 0 to 1, got {self.sample_rate}"


def _valid_dsn(dsn: str) -> bool:
    from sentry_sdk.utils import BadDsn, Dsn  # a pure parse; imported late to keep start-up light

    try:
        Dsn(dsn)
    except (BadDsn, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    events: Duration = LEGAL_MINIMUM_RETENTION  # by event time
    # Quarantined records are log lines too (ones we could not parse), so the same floor
    # applies; they are also raw, un-pseudonymised text, so keep them no longer than needed.
    quarantine: Duration = LEGAL_MINIMUM_RETENTION  # by the time they were quarantined
    check_every: Duration = Duration(3600)

    def check(self) -> Iterator[tuple[str, str]]:
        for name in ("events", "quarantine"):
            kept: Duration = getattr(self, name)
            if kept < LEGAL_MINIMUM_RETENTION:
                yield name, (f"{_days(kept)} is shorter than the legal minimum of "
                             f"{_days(LEGAL_MINIMUM_RETENTION)} ({LEGAL_BASIS})")
        if self.check_every.seconds < 60:
            yield "check_every", f"expected at least 1m, got {self.check_every.seconds:g}s"


def _days(duration: Duration) -> str:
    return f"{duration.seconds / 86400:g} days"


@dataclass(frozen=True, slots=True)
class OpsSettings:
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    sentry: SentrySettings = field(default_factory=SentrySettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
