"""The registry of rule kinds: a rule's `kind:` names one entry of KINDS.

Every kind shares the rule's condition as its filter (and so the index): the
condition selects the events a rule looks at, and the kind decides what a selected
event means. For `match` the condition is the whole verdict.

- entitlement (`lifecycle_kinds.py`): reads the `entitlement_*` facts the enrich
  stage's EntitlementChecker wrote, and alerts with the reason for the reason codes
  the rule names;
- departed (`lifecycle_kinds.py`): any activity by an employee who had left; the
  accounts still live past the grace are found by a scheduled sweep
  (`departed_sweep.py`), not per event;
- threshold, sequence (`window_kinds.py`): N events or N distinct values per group
  key within a sliding window; steps in order within a window (Sigma's correlations);
- baseline (`baseline_kind.py`): volume per hour (or day) against the key's own usual
  for that hour and its role peers';
- first_seen, off_hours (`novelty_kinds.py`): a value new for the key after its
  learning period; outside the shift or on a rest day.

The stateful ones keep per-key state in the store handed over through
`KindContext.state` (never opened here: constructors do no I/O).

A kind is a small object with `params_type` (a frozen dataclass for the rule's
`params:` mapping, converted with located errors, or None when it takes none) and
`build(rule, params, context)`, which returns a Detector, or None to mean "the
condition alone decides".
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from auditd.detect.kind_types import Detector, KindContext, RuleKind, RuleSpec, Verdict
from auditd.detect.baseline_kind import BaselineKind
from auditd.detect.lifecycle_kinds import DepartedKind, EntitlementKind
from auditd.detect.novelty_kinds import FirstSeenKind, OffHoursKind
from auditd.detect.window_kinds import SequenceKind, ThresholdKind


__all__ = ["DEFAULT_KIND", "KINDS", "DepartedKind", "Detector", "EntitlementKind", "KindContext", "MatchKind",
           "RuleKind", "Verdict"]


class MatchKind:
    """The condition over the event's fields is the verdict; no state, no params."""

    params_type = None

    def build(self, rule: RuleSpec, params: Any, context: KindContext) -> Detector | None:
        return None


KINDS: Mapping[str, RuleKind] = MappingProxyType({
    "match": MatchKind(),
    "entitlement": EntitlementKind(),
    "departed": DepartedKind(),
    "threshold": ThresholdKind(),
    "sequence": SequenceKind(),
    "baseline": BaselineKind(),
    "first_seen": FirstSeenKind(),
    "off_hours": OffHoursKind(),
})
DEFAULT_KIND = "match"
