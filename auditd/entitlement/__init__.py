"""Least privilege: grants judged per access, assignment lookups, unused-grant reviews.

Part of the enrich stage: `EntitlementChecker` runs inside the Enricher (after the
directory join, before pseudonyms) and writes `neo.entitlement.granted` and
`neo.entitlement.reason`; the detect stage's `entitlement` kind turns the reasons a
rule names into alerts. `review_grants` reads stored events for the periodic
"grants not exercised" report.
"""

from auditd.entitlement.accounts import AccountFeed, AccountState, load_account_feed
from auditd.entitlement.assignments import (
    AssignmentLookup,
    AssignmentLookupError,
    CachedAssignments,
    CsvAssignments,
    HttpAssignments,
    MappingAssignments,
    SqliteAssignments,
    build_assignments,
)
from auditd.entitlement.checker import DestinationPolicy, EntitlementChecker
from auditd.entitlement.reasons import DENIALS, REASON_CODES, reason, reason_code
from auditd.entitlement.review import GrantReview, render_grant_review, review_grants
from auditd.entitlement.settings import EntitlementSettings

__all__ = [
    "DENIALS", "REASON_CODES", "AccountFeed", "AccountState", "AssignmentLookup", "AssignmentLookupError",
    "CachedAssignments", "CsvAssignments", "DestinationPolicy", "EntitlementChecker", "EntitlementSettings",
    "GrantReview", "HttpAssignments", "MappingAssignments", "SqliteAssignments", "build_assignments",
    "build_checker", "load_account_feed", "reason", "reason_code", "render_grant_review", "review_grants",
]


def build_checker(settings: EntitlementSettings, *, pseudonymise=None, zone=None) -> EntitlementChecker | None:
    """The checker a runtime needs for these settings (None when disabled); no I/O."""
    from auditd.config.typed import DEFAULT_ZONE

    if not settings.enabled:
        return None
    lookup = build_assignments(settings.assignments) if settings.assignments is not None else None
    policy = DestinationPolicy(tuple(settings.destinations.countries), tuple(settings.destinations.networks))
    return EntitlementChecker(assignments=lookup, destinations=policy, pseudonymise=pseudonymise,
                              zone=zone or DEFAULT_ZONE)
