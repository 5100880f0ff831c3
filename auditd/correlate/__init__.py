"""correlate: alerts become incidents (one per actor and episode), graded into tiers,
with a hash-chained timeline, all in the daemon's SQLite file. ``Correlator.apply`` is
the one seam through which incidents change; ``changelog`` is the one way out."""

from auditd.correlate import changelog
from auditd.correlate.incidents import Correlator, IncidentStore, act
from auditd.correlate.model import (
    Action, Assign, CorrelateError, IllegalTransition, IncidentChange, IncidentDetail,
    IncidentSummary, Note, SetTier, TimelineEntry, Transition, UnknownIncident,
)
from auditd.correlate.queries import get_incident, list_incidents
from auditd.correlate.render import render_incident_detail, render_incident_table
from auditd.correlate.settings import CorrelateSettings
from auditd.correlate.timeline import verify_timeline

__all__ = [
    "Action", "Assign", "CorrelateError", "CorrelateSettings", "Correlator", "IllegalTransition",
    "IncidentChange", "IncidentDetail", "IncidentStore", "IncidentSummary", "Note", "SetTier",
    "TimelineEntry", "Transition", "UnknownIncident", "act", "changelog", "get_incident", "list_incidents",
    "render_incident_detail", "render_incident_table", "verify_timeline",
]
