"""The registry of rule kinds: a rule's `kind:` names one entry of KINDS.

Every kind shares the rule's condition as its filter (and so the index): the
condition selects the events a rule looks at, and the kind decides what a selected
event means. For `match` the condition is the whole verdict. Later kinds plug in here:

- entitlement: a detector that reads `entitlement_*` facts and returns the reason;
- threshold / baseline / first-seen: detectors that keep per-key state in the store
  handed over through `KindContext.state` (never opened here: constructors do no I/O);
- departed / off-hours: detectors over enrichment facts and the working-day calendar.

A kind is a small object with `params_type` (a frozen dataclass for the rule's
`params:` mapping, converted with located errors, or None when it takes none) and
`build(rule, params, context)`, which returns a Detector, or None to mean "the
condition alone decides".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from auditd.config.typed import DEFAULT_ZONE
from auditd.event import AccessEvent

if TYPE_CHECKING:
    from auditd.detect.spec import RuleSpec


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a detector found on an event that passed the rule's condition."""

    reason: str | None = None
    event_ids: tuple[str, ...] | None = None  # for windowed kinds: every event in the window


Detector = Callable[[AccessEvent], "Verdict | None"]


@dataclass(frozen=True, slots=True)
class KindContext:
    """What kinds may need beyond the rule itself, passed in by whoever loads rules."""

    zone: tzinfo = DEFAULT_ZONE  # the company's zone: dates, shifts, working days
    state: Any = None  # the store of stateful kinds (threshold, baseline, first-seen)


class RuleKind(Protocol):
    params_type: type | None

    def build(self, rule: "RuleSpec", params: Any, context: KindContext) -> Detector | None: ...


class MatchKind:
    """The condition over the event's fields is the verdict; no state, no params."""

    params_type = None

    def build(self, rule: "RuleSpec", params: Any, context: KindContext) -> Detector | None:
        return None


KINDS: Mapping[str, RuleKind] = MappingProxyType({
    "match": MatchKind(),
})
DEFAULT_KIND = "match"
