"""The `entitlement:` section of the config.

    entitlement:
      destinations:                 # where exports and shares to no partner may go
        countries: [CN]             # PI stays in mainland China (the privacy policy)
        networks: [10.0.0.0/8]      # empty: addresses are not checked
      assignments:                  # the `assigned` scope: whose order or ticket is it?
        sqlite: {path: /var/lib/crm/assignments.db, table: assignments}
        # or csv: {path: assignments.csv}   or http: {url: "http://crm.internal/assignee/{id}"}
        cache: {size: 100000, ttl_s: 300, error_ttl_s: 10}
      departed:
        grace_working_days: 3       # HR cancels the id and the account within 3 working days
        account_feed: accounts.csv  # user_id, enabled, as_of (CSV or JSON lines); optional
        check_every: 1h
        use_logins: true            # a login seen after the grace also proves a live account
      review: {period: 90d, every: 7d}   # grants not exercised, per role and per employee
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from auditd.config.checks import check_countries_and_networks
from auditd.config.typed import Duration

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class DestinationSettings:
    countries: tuple[str, ...] = ("CN",)
    networks: tuple[str, ...] = ()

    def check(self):
        return check_countries_and_networks(self.countries, self.networks)


@dataclass(frozen=True, slots=True)
class CsvLookupSettings:
    path: Path
    id_column: str = "id"  # an order, ticket or customer id
    assignee_column: str = "assignee"  # the employee id (工号) it is assigned to
    reload_check_s: float = 30.0  # the export is replaced during the day


@dataclass(frozen=True, slots=True)
class SqliteLookupSettings:
    path: Path
    table: str = "assignments"
    id_column: str = "id"
    assignee_column: str = "assignee"

    def check(self):
        for key in ("table", "id_column", "assignee_column"):
            if not _IDENTIFIER.match(getattr(self, key)):
                yield key, f"expected an SQL identifier (letters, digits, '_'), got {getattr(self, key)!r}"


@dataclass(frozen=True, slots=True)
class HttpLookupSettings:
    url: str  # with '{id}' where the id goes; the answer is {"assignee": "E10023"} or 404
    timeout_s: float = 2.0
    headers: dict[str, str] = field(default_factory=dict)

    def check(self):
        if not self.url.startswith(("http://", "https://")):
            yield "url", f"expected an http:// or https:// URL, got {self.url!r}"
        if "{id}" not in self.url:
            yield "url", "the URL needs '{id}' where the order or ticket id goes"
        if self.timeout_s <= 0:
            yield "timeout_s", "must be more than zero"


@dataclass(frozen=True, slots=True)
class CacheSettings:
    size: int = 100_000  # entries; each ~200 bytes
    ttl_s: float = 300.0  # an assignment may change: answers are trusted this long
    error_ttl_s: float = 10.0  # a failed lookup is not retried for every event of an outage

    def check(self):
        if self.size < 1:
            yield "size", "must be at least 1"
        if self.ttl_s < 0 or self.error_ttl_s < 0:
            yield "ttl_s", "must not be negative"


@dataclass(frozen=True, slots=True)
class AssignmentSettings:
    csv: CsvLookupSettings | None = None
    sqlite: SqliteLookupSettings | None = None
    http: HttpLookupSettings | None = None
    cache: CacheSettings = field(default_factory=CacheSettings)

    def check(self):
        given = [k for k in ("csv", "sqlite", "http") if getattr(self, k) is not None]
        if len(given) != 1:
            yield "", f"give exactly one of csv, sqlite or http (got {', '.join(given) or 'none'})"


@dataclass(frozen=True, slots=True)
class DepartedSettings:
    grace_working_days: int = 3
    account_feed: Path | None = None
    check_every: Duration = Duration(3600.0)
    use_logins: bool = True

    def check(self):
        if self.grace_working_days < 0:
            yield "grace_working_days", "must not be negative"
        if self.check_every.seconds <= 0:
            yield "check_every", "must be more than 0"


@dataclass(frozen=True, slots=True)
class ReviewSettings:
    """The periodic unused-grants review (written under <state_dir>/reviews/)."""

    period: Duration = Duration(90 * 86400.0)
    every: Duration = Duration(7 * 86400.0)

    def check(self):
        if self.period.seconds <= 0:
            yield "period", "must be more than 0 (the window a grant must have been used in)"
        if self.every.seconds <= 0:
            yield "every", "must be more than 0"


@dataclass(frozen=True, slots=True)
class EntitlementSettings:
    enabled: bool = True
    destinations: DestinationSettings = field(default_factory=DestinationSettings)
    assignments: AssignmentSettings | None = None
    departed: DepartedSettings = field(default_factory=DepartedSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
