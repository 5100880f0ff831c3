"""The `entitlement` and `departed` rule kinds: least privilege and staff lifecycle.

Both read facts the enrich stage computed as of the event's time, so they need no
directory here and their samples give those facts directly, as every sample gives an
event as it reaches detect::

    - rule: least_privilege_violation
      kind: entitlement
      params: {reasons: [category_not_granted, action_not_granted, out_of_scope]}
      condition: neo.entitlement.granted = false and event.outcome = success
      samples:
        match:
          - {event.action: read, neo.entitlement.granted: false,
             neo.entitlement.reason: "out_of_scope: own_store: the record's store is S021 …"}

The checker that computes the facts is tested against directories on its own
(tests/test_entitlement_checker.py); a sample tests what the rule makes of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from auditd.detect.kind_types import Detector, KindContext, RuleSpec, Verdict
from auditd.entitlement.reasons import DENIALS, DEPARTED, REASON_CODES
from auditd.event import AccessEvent


# `departed` has its own kind and rule: an entitlement rule that also
# took it would raise a second alert for the same access
DEFAULT_ENTITLEMENT_REASONS = tuple(code for code in DENIALS if code != DEPARTED)


@dataclass(frozen=True, slots=True)
class EntitlementParams:
    reasons: tuple[str, ...] = DEFAULT_ENTITLEMENT_REASONS  # the reason codes this rule alerts on

    def check(self):
        if not self.reasons:
            yield "reasons", "name at least one reason code"
        for i, code in enumerate(self.reasons):
            if code not in REASON_CODES:
                yield ("reasons", i), f"unknown reason code {code!r} (valid: {', '.join(REASON_CODES)})"


class EntitlementKind:
    """Alerts on an access whose entitlement reason has one of the rule's codes; the
    alert's reason is the whole ``code: detail`` text."""

    params_type = EntitlementParams

    def build(self, rule: RuleSpec, params: Any, context: KindContext) -> Detector:
        wanted = frozenset(params.reasons)

        def detect(event: AccessEvent) -> Verdict | None:
            text = event.entitlement_reason
            if text is None:
                return None
            return Verdict(reason=text) if text.partition(":")[0] in wanted else None

        return detect


class DepartedKind:
    """Any activity by an employee who had left at that moment (`neo.actor.departed`)."""

    params_type = None

    def build(self, rule: RuleSpec, params: Any, context: KindContext) -> Detector:
        def detect(event: AccessEvent) -> Verdict | None:
            if not event.actor_departed:
                return None
            text = event.entitlement_reason
            if text is not None and text.startswith(DEPARTED + ":"):
                return Verdict(reason=text)  # the checker's words name the departure time
            days = event.actor_departed_working_days
            after = f", {days} working day(s) after leaving" if days is not None else ""
            return Verdict(reason=f"{DEPARTED}: {event.user_id} had left{after}")

        return detect
