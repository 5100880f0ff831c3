"""Rendered messages for the delivery stage: the ``notices`` table and one file per message.

Each row is one message to one recipient: an audience (security, dpo, regulator,
police, public, ...) or one affected customer, by pseudonym. Its idempotency key is
``incident/step/recipient/revision``: the delivery stage sends each key at most once
per attempt and records receipts against it, so a re-render never sends twice.

The message itself is a JSON file (mode 0600, under ``<state>/respond/notices/``):
``{"to": {...}, "language", "subject", "text", "html", "attachments"}``. For a
customer, ``to`` holds the channel and the address resolved from the contact source at
this moment: the only place the raw address exists outside the source. The row keeps
``contact:<pseudonym>:<channel>``; so the store, the logs and everything the security
team reads carry pseudonyms only.

Customer notices carry PIPL art. 57's items: the PI types concerned, the cause and the
possible harm, the measures taken, what the person can do, and how to reach the
company; the public announcement carries the same, for the people who could not be
told one by one.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgspec
from jinja2 import TemplateNotFound

from auditd.respond.contacts import Contact, ContactBook, ContactError, normalise_address
from auditd.respond.render import Immediate, Output, Templates, safe_name, tidy
from auditd.respond.settings import LANGUAGES, AudienceSettings
from auditd.respond.vocabulary import vocabulary
from auditd.store.times import to_db

NOTICE_ITEMS = ("pi_types", "cause", "harm", "measures", "advice", "contact")  # PIPL art. 57
_json = msgspec.json.Encoder(order="sorted")


class RenderingStopped(Exception):
    """The daemon is stopping: a step's rendering was given up half-way. Nothing of it
    is kept (it was staged), and the next run renders the step again."""


@dataclass
class CustomerResult:
    recipients: int = 0
    unresolved: int = 0
    insider_excluded: int = 0
    by_language: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"recipients": self.recipients, "unresolved": self.unresolved,
                "insider_excluded": self.insider_excluded, "by_language": dict(sorted(self.by_language.items()))}


def _render(templates: Templates, template: str, language: str, view: dict[str, Any]) -> tuple[str, str, str]:
    """(subject, text, html) of one message."""
    md_template = templates.markdown.get_template(f"{language}/{template}.md.j2")
    module = md_template.make_module(view)
    text = tidy(str(module))
    subject = str(getattr(module, "subject", "") or template)
    try:
        html = templates.render_html(template, language, view)
    except TemplateNotFound:  # a template without an HTML twin: text only
        html = ""
    return subject.strip(), text, html


def _insert(out: Output, *, incident_id: str, step_id: str, revision: int, kind: str, audience: str,
            channel: str, recipient: str, contact_ref: str, language: str, subject: str, path: Path, digest: str,
            now: dt.datetime) -> None:
    key = f"{incident_id}/{step_id}/{recipient}/{revision}"
    out.row(
        "INSERT OR IGNORE INTO notices (idempotency_key, incident_id, step_id, revision, kind, audience, channel,"
        " recipient, contact_ref, language, subject, body_path, body_sha256, rendered_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (key, incident_id, step_id, revision, kind, audience, channel, recipient, contact_ref, language, subject,
         str(path), digest, to_db(now)))


def view_for(ctx: dict[str, Any], language: str, **extra: Any) -> dict[str, Any]:
    return {"ctx": ctx, "t": vocabulary(language), "language": language, **extra}


def render_internal(conn: sqlite3.Connection, templates: Templates, out_dir: Path, ctx: dict[str, Any], *,
                    incident_id: str, step_id: str, revision: int, kind: str, audience: str,
                    settings: AudienceSettings, channel: str | None, template: str, now: dt.datetime,
                    attachments: list[str] = (), extra: dict[str, Any] | None = None,
                    out: Output | None = None) -> str:
    """One message to an audience (security, dpo, regulator, police, ...); returns its path.
    Written to `out` (default: at once, in `conn`'s transaction)."""
    out = out or Immediate(conn)
    language = settings.language
    view = view_for(ctx, language, audience=audience, **(extra or {}))
    subject, text, html = _render(templates, template, language, view)
    channel = channel or settings.channel
    contact_ref = f"audience:{settings.contact_ref or audience}"
    body = {"to": {"audience": audience, "contact_ref": contact_ref, "channel": channel}, "language": language,
            "subject": subject, "text": text, "html": html, "attachments": list(attachments)}
    path = out_dir / "notices" / safe_name(incident_id) / safe_name(step_id) / f"{safe_name(audience)}-r{revision}.json"
    digest = out.file(path, _json.encode(body))
    _insert(out, incident_id=incident_id, step_id=step_id, revision=revision, kind=kind, audience=audience,
            channel=channel, recipient=audience, contact_ref=contact_ref, language=language, subject=subject,
            path=path, digest=digest, now=now)
    return str(path)


def is_insider(contact: Contact, insider_addresses: frozenset[str]) -> bool:
    return normalise_address(contact.address) in insider_addresses


def render_customers(conn: sqlite3.Connection, templates: Templates, out_dir: Path, ctx: dict[str, Any], *,
                     incident_id: str, step_id: str, template: str, recipients: list[str], contacts: ContactBook,
                     insider_addresses: frozenset[str], default_language: str, now: dt.datetime,
                     should_stop: Callable[[], bool] = lambda: False, out: Output | None = None) -> CustomerResult:
    """One message per resolvable affected customer, in their language, through their
    channel on file; the unresolved and the insider's own contacts are counted. Raises
    RenderingStopped when `should_stop` says so (tens of thousands of customers, each
    perhaps asked of a contact service, must not hold up the daemon's stop)."""
    out = out or Immediate(conn)
    result = CustomerResult()
    folder = out_dir / "notices" / safe_name(incident_id) / safe_name(step_id)
    cache: dict[str, tuple[str, str, str]] = {}  # one rendering per language: the body names nobody
    for pseudonym in recipients:
        if should_stop():
            raise RenderingStopped(f"{incident_id}/{step_id}")
        try:
            contact = contacts.lookup(pseudonym)
        except ContactError:
            raise
        if contact is None:
            result.unresolved += 1
            continue
        if is_insider(contact, insider_addresses):
            result.insider_excluded += 1  # never addressed to the suspected insider
            continue
        language = contact.language if contact.language in LANGUAGES else default_language
        if language not in cache:
            cache[language] = _render(templates, template, language, view_for(ctx, language))
        subject, text, html = cache[language]
        body = {"to": {"channel": contact.channel, "address": contact.address, "name": contact.name},
                "language": language, "subject": subject, "salutation": contact.name, "text": text, "html": html,
                "attachments": []}
        path = folder / f"{safe_name(pseudonym)}-r1.json"
        digest = out.file(path, _json.encode(body))
        _insert(out, incident_id=incident_id, step_id=step_id, revision=1, kind="notice", audience="customers",
                channel=contact.channel, recipient=pseudonym, contact_ref=f"contact:{pseudonym}:{contact.channel}",
                language=language, subject=subject, path=path, digest=digest, now=now)
        result.recipients += 1
        result.by_language[language] = result.by_language.get(language, 0) + 1
    return result


def render_announcement(conn: sqlite3.Connection, templates: Templates, out_dir: Path, ctx: dict[str, Any], *,
                        incident_id: str, step_id: str, template: str, channel: str, unresolved: int,
                        now: dt.datetime, out: Output | None = None) -> list[str]:
    """The public announcement, in every language, for those who could not be told one by one."""
    out = out or Immediate(conn)
    paths = []
    for language in LANGUAGES:
        subject, text, html = _render(templates, template, language, view_for(ctx, language, unresolved=unresolved))
        body = {"to": {"audience": "public", "channel": channel}, "language": language, "subject": subject,
                "text": text, "html": html, "attachments": []}
        path = out_dir / "notices" / safe_name(incident_id) / safe_name(step_id) / f"public.{language}-r1.json"
        digest = out.file(path, _json.encode(body))
        _insert(out, incident_id=incident_id, step_id=step_id, revision=1, kind="announcement", audience="public",
                channel=channel, recipient=f"public.{language}", contact_ref="audience:public", language=language,
                subject=subject, path=path, digest=digest, now=now)
        paths.append(str(path))
    return paths
