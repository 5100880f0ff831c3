"""The types of the correlate stage: statuses, errors, and what it hands out.

The Structs serialise with ``msgspec.json.encode`` as they are (times as RFC 3339,
always UTC), so the CLI's ``--json`` and the respond stage read the same shapes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import msgspec

from auditd.errors import NeoError

STATUSES = ("open", "triaged", "contained", "notified", "resolved", "closed", "dismissed")

# The only legal moves. Skips are allowed where a tier's playbook has no such phase
# (T5 contains at once, before triage; T6 notifies no one). Closed and dismissed are
# final: new activity after them opens a new incident.
TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"triaged", "contained", "dismissed"}),
    "triaged": frozenset({"contained", "notified", "resolved", "dismissed"}),
    "contained": frozenset({"notified", "resolved", "dismissed"}),
    "notified": frozenset({"resolved"}),
    "resolved": frozenset({"closed"}),
    "closed": frozenset(),
    "dismissed": frozenset(),
}
# statuses in which an incident still takes in new alerts of its actor's episode
ACTIVE_STATUSES = ("open", "triaged", "contained", "notified")

CORRELATOR = "correlator"  # the `who` of entries the daemon writes by itself

Clock = Callable[[], dt.datetime]  # returns an aware datetime; tests pass a fixed one


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CorrelateError(NeoError):
    """Misuse of the correlate stage or its store."""


class UnknownIncident(CorrelateError):
    def __init__(self, incident_id: str):
        self.incident_id = incident_id
        super().__init__(f"no incident '{incident_id}'")


class IllegalTransition(CorrelateError):
    def __init__(self, incident_id: str, old: str, new: str):
        self.incident_id, self.old, self.new = incident_id, old, new
        allowed = ", ".join(sorted(TRANSITIONS.get(old, ()))) or "none: it is final"
        super().__init__(f"{incident_id}: cannot go from '{old}' to '{new}' (allowed: {allowed})")


class IncidentChange(msgspec.Struct, kw_only=True, frozen=True):
    """One change to one incident, as the change log keeps it: the respond stage's input.

    ``cause`` says what changed it: ``alerts`` (the correlator applied a batch's alerts;
    ``opened`` when they opened it), ``status_changed``, ``tier_changed``, ``assigned``,
    ``note`` (people, through the command line), ``dismissed`` (with its reason),
    ``merged`` (this incident absorbed another; its discovery may move earlier),
    ``merged_away`` (this one was absorbed and dismissed as a duplicate), ``loss_set``,
    ``cii_set``, ``step`` (the respond stage's trace of a playbook step), ``migrated``
    (a snapshot of an incident from before the log). ``version`` is the incident's timeline seq after the change.
    """

    incident_id: str
    version: int = 0
    cause: str = "alerts"
    who: str = CORRELATOR
    at: dt.datetime | None = None  # wall clock of the change
    opened: bool = False
    actor: str | None = None
    title: str = ""
    status: str = "open"
    previous_status: str | None = None  # set when the status changed
    tier: str = ""
    previous_tier: str | None = None  # None when opened by this change
    tier_raised: bool = False
    band: str | None = None
    band_reached: bool = False  # reached by this change: the playbook adds the police step
    alerts_added: int = 0
    alert_count: int = 0
    affected_added: int = 0
    affected_count: int = 0
    discovered_at: dt.datetime | None = None
    assignee: str | None = None
    economic_loss: float | None = None  # yuan, once a person has set it
    cii: bool = False  # critical information infrastructure: the 1 h regulator clock
    dismissal_reason: str | None = None
    merged_into: str | None = None  # cause merged_away: the incident that absorbed this one
    merged_from: str | None = None  # cause merged: the incident absorbed into this one


class Action(msgspec.Struct, kw_only=True, frozen=True, tag_field="action"):
    """What a person does to an incident; applied through ``Correlator.apply``."""

    incident_id: str
    who: str


class Transition(Action, tag="transition"):
    status: str
    why: str


class SetTier(Action, tag="set_tier"):
    tier: str
    why: str


class Assign(Action, tag="assign"):
    assignee: str


class Note(Action, tag="note"):
    text: str  # hashed into the chain for good: pseudonyms only, never a raw identifier


DISMISSAL_REASONS = ("false_positive", "duplicate", "accepted_risk")


class Dismiss(Action, tag="dismiss"):
    """Dismiss with a reason: a false positive, a duplicate, or a risk accepted."""

    reason: str  # one of DISMISSAL_REASONS
    why: str


class Merge(Action, tag="merge"):
    """Fold `incident_id` into `into`: both timelines are kept (each chain intact), the
    survivor takes the subjects, counts and the earlier discovery (the clocks), and the
    absorbed one is dismissed as a duplicate."""

    into: str
    why: str


class SetLoss(Action, tag="set_loss"):
    """The economic loss once known, in yuan; may raise the tier (loss bands)."""

    yuan: float
    why: str


class SetCII(Action, tag="set_cii"):
    """Whether critical information infrastructure is affected (1 h regulator clock)."""

    cii: bool
    why: str


class StepTrace(Action, tag="step"):
    """The respond stage's trace of a playbook step on the incident's timeline."""

    step_id: str
    event: str  # planned, fired, done, approved, skipped, failed, escalated, cancelled, ...
    detail: dict[str, Any] = {}


class TimelineEntry(msgspec.Struct, kw_only=True, frozen=True):
    seq: int
    at: dt.datetime
    kind: str  # opened, alerts_added, tier_changed, band_reached, status_changed, note
    who: str
    data: dict[str, Any]
    hash: str


class IncidentSummary(msgspec.Struct, kw_only=True, frozen=True):
    incident_id: str
    title: str
    tier: str
    status: str
    severity: str
    actor: str | None
    assignee: str | None
    alert_count: int
    affected_count: int
    sensitive: bool
    band: str | None
    categories: tuple[str, ...]
    first_seen: dt.datetime
    last_seen: dt.datetime
    discovered_at: dt.datetime
    updated_at: dt.datetime
    economic_loss: float | None = None  # yuan; None while unknown
    cii: bool = False
    dismissal_reason: str | None = None
    merged_into: str | None = None


class AlertBrief(msgspec.Struct, kw_only=True, frozen=True):
    """One alert of an incident as a responder reads it (titles carry no customer ids)."""

    alert_id: str
    rule_id: str
    rule_kind: str
    severity: str
    title: str
    timestamp: dt.datetime
    event_ids: tuple[str, ...] = ()


class EvidenceEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One evidence event in readable form: who did what to which records, and whether it
    was entitled. Customer ids appear only as pseudonyms."""

    event_id: str
    timestamp: dt.datetime
    actor: str | None
    action: str
    outcome: str | None
    resource: str | None  # type, pseudonym and store: 'customer p:3b… (S021)'
    record_count: int | None
    categories: tuple[str, ...]
    destination: str | None  # 'bi-backup.example.sg (SG)', 'P-LOGI'
    entitled: bool | None
    reason: str | None  # the entitlement reason code


class IncidentDetail(msgspec.Struct, kw_only=True, frozen=True):
    summary: IncidentSummary
    rules: tuple[str, ...]
    affected_subjects: tuple[str, ...]  # pseudonyms, at most the limit asked for
    affected_subjects_truncated: bool
    evidence_event_ids: tuple[str, ...]
    evidence_truncated: bool
    alert_ids: tuple[str, ...]
    timeline: tuple[TimelineEntry, ...]
    timeline_verified: bool
    timeline_first_bad_seq: int | None
    alerts: tuple[AlertBrief, ...] = ()  # at most the limit asked for, oldest first
    evidence: tuple[EvidenceEvent, ...] = ()  # filled by a caller that reads the events (the CLI)
