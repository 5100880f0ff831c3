"""correlate: alerts become incidents (one per actor and episode), graded into tiers,
with a hash-chained timeline, all in the daemon's SQLite file. ``Correlator.apply`` is
the one seam through which incidents change; ``changelog`` is the one way out."""

from auditd.correlate import changelog
from auditd.correlate.incidents import Correlator, IncidentStore, act
from auditd.correlate.model import (
    DISMISSAL_REASONS, Action, Assign, CorrelateError, Dismiss, IllegalTransition, IncidentChange,
    IncidentDetail, IncidentSummary, Merge, Note, SetCII, SetLoss, SetTier, StepTrace, TimelineEntry,
    Transition, UnknownIncident,
)
from auditd.correlate.queries import get_incident, list_incidents
from auditd.correlate.render import render_incident_detail, render_incident_table
from auditd.correlate.settings import CorrelateSettings
from auditd.correlate.timeline import verify_timeline

__all__ = [
    "DISMISSAL_REASONS", "Dismiss", "Merge", "SetCII", "SetLoss", "StepTrace",
    "Action", "Assign", "CorrelateError", "CorrelateSettings", "Correlator", "IllegalTransition",
    "IncidentChange", "IncidentDetail", "IncidentStore", "IncidentSummary", "Note", "SetTier",
    "TimelineEntry", "Transition", "UnknownIncident", "act", "changelog", "get_incident", "list_incidents",
    "render_incident_detail", "render_incident_table", "verify_timeline",
]
