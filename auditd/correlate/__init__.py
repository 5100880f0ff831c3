"""correlate: alerts become incidents (one per actor and episode), graded into tiers,
with a hash-chained timeline, all in the daemon's SQLite file."""

from auditd.correlate.actions import add_note, assign, set_tier, transition
from auditd.correlate.incidents import Correlator, IncidentStore
from auditd.correlate.model import (
    CorrelateError, IllegalTransition, IncidentChange, IncidentDetail, IncidentSummary,
    TimelineEntry, UnknownIncident,
)
from auditd.correlate.queries import get_incident, list_incidents
from auditd.correlate.render import render_incident_detail, render_incident_table
from auditd.correlate.schema import SCHEMA, ensure_schema
from auditd.correlate.settings import CorrelateSettings
from auditd.correlate.timeline import verify_timeline

__all__ = [
    "SCHEMA", "CorrelateError", "CorrelateSettings", "Correlator", "IllegalTransition",
    "IncidentChange", "IncidentDetail", "IncidentStore", "IncidentSummary", "TimelineEntry",
    "UnknownIncident", "add_note", "assign", "ensure_schema", "get_incident", "list_incidents",
    "render_incident_detail", "render_incident_table", "set_tier", "transition",
    "verify_timeline",
]
