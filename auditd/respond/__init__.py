"""respond: playbooks on the legal clocks, approvals, regulator reports and rendered notices.

Reads only the incident change log (consumer ``respond``) and writes its own tables
(``playbook_steps``, ``notices``, ``reports``, ``report_findings``) in the same
transaction as its cursor move or the person's command; incident changes (a step's
trace) go through the correlate seam. It decides what must be done, by whom and by
when, and renders what is to be sent; sending is the deliver stage's.

    responder = build_responder(settings.respond, problems, ...)   # at load and reload
    responder.run(conn, now)                                        # the respond-due job
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Callable

from auditd.config.located import Doc, Problems
from auditd.correlate import Correlator
from auditd.respond.contacts import ContactBook, load_contacts, normalise_address
from auditd.respond.engine import CONSUMER, Responder, RunReport
from auditd.respond.playbook import SHIPPED_PLAYBOOKS, PlaybookSet, load_playbooks
from auditd.respond.render import Templates
from auditd.respond.settings import RespondSettings
from auditd.workdays import WorkingCalendar


def playbook_paths(settings: RespondSettings) -> list[Path]:
    return ([SHIPPED_PLAYBOOKS] if settings.playbooks.include_shipped else []) + list(settings.playbooks.paths)


def build_responder(settings: RespondSettings, problems: Problems, *, calendar: WorkingCalendar, zone: dt.tzinfo,
                    state_dir: Path, correlator: Correlator, pseudonymise: Callable[[str], str] | None,
                    directory: Callable[[], Any] = lambda: None, referrer: Doc | None = None) -> Responder:
    """Load and validate playbooks, templates and contacts; problems go to `problems`."""
    templates = Templates(settings.templates)
    for name in ("regulator-report", "notice-draft", "escalation", "internal-alert"):
        if not templates.exists(name):
            problems.add(referrer, ("respond", "templates"), f"template {name!r} missing in zh-CN or en")
    playbooks = load_playbooks(playbook_paths(settings), problems, referrer=referrer, actions=settings.contain,
                               template_exists=templates.exists, calendar=calendar, zone=zone)
    contacts = ContactBook()
    if pseudonymise is not None:
        contacts = load_contacts(settings.contacts, pseudonymise, problems, referrer=referrer)

    def insider_addresses(actor: str) -> frozenset[str]:
        found = directory()
        employee = found.employees.get(actor) if found is not None else None
        if employee is None:
            return frozenset()
        return frozenset(normalise_address(a) for a in (employee.email, employee.phone) if a)

    return Responder(settings, playbooks, templates=templates, calendar=calendar, zone=zone,
                     out_dir=settings.output_dir or Path(state_dir) / "respond", correlator=correlator,
                     contacts=contacts, pseudonymise=pseudonymise or (lambda raw: raw),
                     insider_addresses=insider_addresses)


__all__ = ["CONSUMER", "PlaybookSet", "Responder", "RespondSettings", "RunReport", "build_responder",
           "load_playbooks", "playbook_paths"]
