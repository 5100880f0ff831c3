"""Grade an incident's tier from what its alerts have shown so far (pure, no I/O).

The correlator only ever moves a tier upward with these grades; a person may move it
down (``actions.set_tier``) and a later grade does not undo that unless it is higher
than the grade the person overrode.

A rule's severity is a promise about the tier (``TierSettings.by_severity``): critical
means a suspected leak (T4), high a violation (T5), anything lower an anomaly (T6).
Rule kinds, single rules and the criminal bands may grade higher, never lower.

Affected customers are the distinct pseudonyms the alerts named, plus, for an event
that counted more records than it named (an export of 57,312 customers lists none),
the records it did not name: an export's count is never 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from auditd.correlate.settings import Band, CorrelateSettings, tier_rank
from auditd.detect.alert import SEVERITIES, Alert

# headlines for incident titles; rule kinds without one take their first alert's title
KIND_HEADLINES = {
    "departed": "Activity by departed employee",
    "entitlement": "Least-privilege violation",
}
LEAK_HEADLINE = "Suspected leak"
SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}


@dataclass(frozen=True, slots=True)
class Facts:
    """What grading sees of an incident once a batch's alerts are in."""

    actor: str | None
    categories: frozenset[str]  # all of the incident's
    affected: int  # distinct customer pseudonyms, all of the incident's
    max_record_count: int  # the largest single alert's record count, all of the incident's
    rules: frozenset[tuple[str, str]]  # (rule id, rule kind) of this batch's alerts
    severe_sensitive: bool  # a batch alert at leak severity or above, on sensitive data
    severity: str = "info"  # the incident's highest alert severity


@dataclass(frozen=True, slots=True)
class Grade:
    tier: str
    reason: str  # why, for the timeline
    headline: str | None  # for the title; None: keep the opening alert's title


class Grader:
    """Built once per settings; maps categories to bands ahead of the hot path."""

    def __init__(self, settings: CorrelateSettings):
        self.tiers = settings.tiers
        self.bands = settings.criminal_bands
        self._band_of: dict[str, Band] = {}
        for band in self.bands.bands:
            for category in band.categories:
                old = self._band_of.get(category)
                if old is None or band.records < old.records:  # stricter band wins
                    self._band_of[category] = band
        self._other = Band("other", self.bands.other_records, ())

    def band_reached(self, facts: Facts) -> str | None:
        """The strictest band family among the incident's categories, if reached.

        Records are the distinct customers, or one alert's record count when larger
        (an export may name fewer subjects than it returned). Art. 5(6) adds up
        quantities of different families in proportion to their thresholds; without
        per-category counts every affected customer is assumed to touch every family
        present, which can only grade earlier, never later, than the true count.
        """
        records = max(facts.affected, facts.max_record_count)
        if records <= 0:
            return None
        families = {self._band_of.get(c, self._other) for c in facts.categories} or {self._other}
        factor = self.bands.insider_factor if facts.actor else 1.0
        share = sum(records / (band.records * factor) for band in families)
        if share < 1:
            return None
        return min(families, key=lambda band: (band.records, band.name)).name

    def by_size(self, current: Grade, records: int, loss: float | None, cii: bool) -> Grade:
        """Raise a grade by DESIGN.md's bands: people whose PI leaked (only once the
        incident is a leak, i.e. at the leak tier or above), the economic loss, and the
        critical-infrastructure floor."""
        best = current
        if tier_rank(best.tier) <= tier_rank(self.tiers.leak):
            for tier, threshold in sorted(self.tiers.people.items(), key=lambda kv: tier_rank(kv[0])):
                if records >= threshold:
                    best = _higher(best, Grade(tier, f"{records} people's PI leaked (band {threshold})",
                                               LEAK_HEADLINE))
                    break
        if loss is not None:
            for tier, threshold in sorted(self.tiers.loss_yuan.items(), key=lambda kv: tier_rank(kv[0])):
                if loss >= threshold:
                    best = _higher(best, Grade(tier, f"economic loss of ¥{loss:,.0f} (band ¥{threshold:,.0f})",
                                               best.headline))
                    break
        if cii and self.tiers.cii_floor is not None:
            best = _higher(best, Grade(self.tiers.cii_floor, "critical information infrastructure", best.headline))
        return best

    def grade(self, facts: Facts, band: str | None, *, loss: float | None = None, cii: bool = False) -> Grade:
        """The highest tier any rule gives, raised by the size bands; ties keep the most
        specific reason."""
        best = Grade(self.tiers.default, "default tier", None)
        tier = self.tiers.by_severity.get(facts.severity)
        if tier is not None:
            leak = tier_rank(tier) <= tier_rank(self.tiers.leak)
            best = _higher(best, Grade(tier, f"{facts.severity} alert", LEAK_HEADLINE if leak else None))
        for rule_id, kind in sorted(facts.rules):
            tier = self.tiers.by_rule.get(rule_id)
            if tier is not None:
                best = _higher(best, Grade(tier, f"rule {rule_id}", None))
            elif kind in self.tiers.by_rule_kind:
                tier = self.tiers.by_rule_kind[kind]
                best = _higher(best, Grade(tier, f"{kind} rule {rule_id}", KIND_HEADLINES.get(kind)))
        if facts.severe_sensitive:
            reason = f"{self.tiers.leak_severity} alert on sensitive data"
            best = _higher(best, Grade(self.tiers.leak, reason, LEAK_HEADLINE))
        if band is not None:
            best = _higher(best, Grade(self.tiers.leak, f"criminal band '{band}' reached", LEAK_HEADLINE))
        return self.by_size(best, max(facts.affected, facts.max_record_count), loss, cii)


def _higher(current: Grade, candidate: Grade) -> Grade:
    # a tie goes to the candidate: later checks in grade() are the more specific reasons
    return candidate if tier_rank(candidate.tier) <= tier_rank(current.tier) else current


def unnamed_customers(alert: Alert) -> int:
    """Customers an alert's event carried records of without naming them."""
    return max(0, alert.record_count - len(alert.subject_ids))


def incident_title(headline: str | None, lead_title: str) -> str:
    """The grade's headline before the title of the alert that set the grade, so the
    incident list says what happened, not only to whom."""
    return f"{headline}: {lead_title}" if headline else lead_title
