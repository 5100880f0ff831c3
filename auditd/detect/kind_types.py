"""The types every rule kind shares: what a detector returns, what it is built with.

Kept apart from the registry (`kinds.py`) so that the modules of individual kinds can
import them while the registry imports those modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Protocol

from auditd.config.typed import DEFAULT_ZONE
from auditd.event import AccessEvent


class RuleSpec(Protocol):
    """What a kind reads of the rule it builds a detector for: `detect.spec.RuleSpec`,
    seen through its fields. (The spec module imports the kinds' registry to check a
    rule's kind and params; the kinds do not import it back.)"""

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def condition(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a detector found on an event that passed the rule's condition."""

    reason: str | None = None
    event_ids: tuple[str, ...] | None = None  # for windowed kinds: every event in the window


Detector = Callable[[AccessEvent], "Verdict | None"]

# The events of a chunk, the positions (in order) whose condition held for the rule, and
# the chunk's shared columns (`kind_support.Columns`) -> the (position, verdict) pairs
# found, in position order. A detector with a `many` attribute of this type is given a
# chunk's events at once (RuleSet.evaluate_all); its one-event call must mean the same.
Many = Callable[[Sequence[AccessEvent], Sequence[int], Any], "list[tuple[int, Verdict]]"]


@dataclass(frozen=True, slots=True)
class Finding:
    """What a stateful detector found when time passed without an event in hand (a
    window closed, an expected event stayed away): the alert is about `event` (the
    last one seen for the key, or a stand-in carrying the actor and the time)."""

    event: AccessEvent
    verdict: Verdict


class TimedDetector(Protocol):
    """A detector that also acts when time passes (``RuleSet.tick``)."""

    def __call__(self, event: AccessEvent) -> Verdict | None: ...

    def tick(self, now: datetime) -> list[Finding]: ...


@dataclass(frozen=True, slots=True)
class KindContext:
    """What kinds may need beyond the rule itself, passed in by whoever loads rules."""

    zone: tzinfo = DEFAULT_ZONE  # the company's zone: dates, shifts, working days
    # the state of stateful kinds (auditd.detect.state.StateStore): a kind asks it for its
    # rule's RuleState with ``state.rule(spec.id, rule_state_hash(...), value_type)``
    state: Any = None
    # mainland-China working days (auditd.workdays.WorkingCalendar), for off-hours rules;
    # None: the package's calendar without the operator's overrides
    calendar: Any = None


class RuleKind(Protocol):
    params_type: type | None

    def build(self, rule: RuleSpec, params: Any, context: KindContext) -> Detector | None: ...
