"""Settings of the respond stage (the ``respond:`` section of the config)::

    respond:
      playbooks: {include_shipped: true, paths: [/etc/neo-auditd/playbooks.d]}
      organisation:
        name: 云南新零售有限公司
        system: neo-crm
        location: 昆明市
        contact: {zh-CN: "客服热线 400-000-0000", en: "hotline +86 400-000-0000"}
      audiences:                       # internal audiences: who delivery should reach
        security: {channel: chat, contact_ref: security-team}
      contain:
        disable-account: {command: [/usr/local/bin/disable-account], timeout_s: 30}
        revoke-sessions: {webhook: {url: "http://iam.internal/revoke"}, timeout_s: 10}
      contacts: {csv: /etc/neo-auditd/contacts.csv}       # or http: {url: "http://crm/contact/{pseudonym}"}
      export_manifests: [{name: crm-exports, paths: [/var/log/crm/exports*.jsonl]}]
      check_every: 30s
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from auditd.config.typed import Duration

AUDIENCES = ("security", "responder", "dpo", "management", "legal", "regulator", "police", "customers", "public")
CHANNELS = ("email", "sms", "chat", "phone", "letter", "push", "webhook", "portal")
LANGUAGES = ("zh-CN", "en")
Audience = Literal["security", "responder", "dpo", "management", "legal", "regulator", "police", "customers",
                   "public"]
Channel = Literal["email", "sms", "chat", "phone", "letter", "push", "webhook", "portal"]
Language = Literal["zh-CN", "en"]


@dataclass(frozen=True, slots=True)
class PlaybookPaths:
    include_shipped: bool = True  # playbooks/*.yaml of this project
    paths: list[Path] = field(default_factory=list)  # files and folders; a later playbook of a tier replaces


@dataclass(frozen=True, slots=True)
class Organisation:
    """Who reports and whom people can reach: the first items of every report and notice."""

    name: str = "(organisation name: set respond.organisation.name)"
    system: str = "(affected system: set respond.organisation.system)"
    location: str = ""
    contact: dict[str, str] = field(default_factory=lambda: {
        "zh-CN": "(联系方式：请设置 respond.organisation.contact)",
        "en": "(how to reach us: set respond.organisation.contact)"})
    security_contact: str = ""  # who the regulator calls back

    def check(self) -> Iterable[tuple[str | tuple[str, ...], str]]:
        for language in self.contact:
            if language not in LANGUAGES:
                yield ("contact", language), f"unknown language {language!r} (valid: {', '.join(LANGUAGES)})"


@dataclass(frozen=True, slots=True)
class AudienceSettings:
    channel: Channel = "email"
    contact_ref: str = ""  # the delivery stage's name for where this audience is reached
    language: Language = "zh-CN"


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str

    def check(self) -> Iterable[tuple[str, str]]:
        if not self.url.startswith(("http://", "https://")):
            yield "url", "must be an http:// or https:// URL"


@dataclass(frozen=True, slots=True)
class ContainAction:
    """A containment action: a command (an argv list, run without a shell) or a webhook.

    Incident values never enter the command line: the command gets them in its
    environment (NEO_INCIDENT_ID, NEO_ACTOR, NEO_TIER, NEO_STEP) and as JSON on stdin;
    a webhook gets the same JSON as its POST body."""

    command: list[str] | None = None
    webhook: Webhook | None = None
    timeout_s: float = 30.0

    def check(self) -> Iterable[tuple[str, str]]:
        if (self.command is None) == (self.webhook is None):
            yield "", "give exactly one of command or webhook"
        if self.command is not None and (not self.command or not self.command[0]):
            yield "command", "must be a non-empty list: the program, then its fixed arguments"
        if not 0 < self.timeout_s <= 3600:
            yield "timeout_s", "must be more than 0 and at most 3600"


@dataclass(frozen=True, slots=True)
class HttpContacts:
    url: str  # with {pseudonym}: GET returns {name, language, channel, address} or 404
    timeout_s: float = 5.0

    def check(self) -> Iterable[tuple[str, str]]:
        if "{pseudonym}" not in self.url:
            yield "url", "must contain {pseudonym}"
        if not self.url.startswith(("http://", "https://")):
            yield "url", "must be an http:// or https:// URL"


@dataclass(frozen=True, slots=True)
class ContactSettings:
    """Where affected people's contact data comes from; the store never holds it."""

    csv: Path | None = None  # customer_id, name, language, channel, address
    http: HttpContacts | None = None

    def check(self) -> Iterable[tuple[str, str]]:
        if self.csv is None and self.http is None:
            yield "", "give csv or http"


@dataclass(frozen=True, slots=True)
class ManifestSettings:
    """An export manifest the source system writes: which customers an export carried,
    by its request id (JSON lines: {"req": ..., "customers": [...]}, or CSV req,customer_id)."""

    name: str
    paths: list[Path]
    format: Literal["jsonl", "csv"] = "jsonl"


@dataclass(frozen=True, slots=True)
class RespondSettings:
    playbooks: PlaybookPaths = field(default_factory=PlaybookPaths)
    organisation: Organisation = field(default_factory=Organisation)
    audiences: dict[str, AudienceSettings] = field(default_factory=dict)
    contain: dict[str, ContainAction] = field(default_factory=dict)
    contacts: ContactSettings | None = None
    export_manifests: list[ManifestSettings] = field(default_factory=list)
    templates: Path | None = None  # a folder of zh-CN/ and en/ templates that replace shipped ones by name
    output_dir: Path | None = None  # default: <state_dir>/respond
    check_every: Duration = field(default_factory=lambda: Duration(30.0))
    followup_due: Duration = field(default_factory=lambda: Duration(24 * 3600.0))  # after an important change
    default_language: Language = "zh-CN"

    def check(self) -> Iterable[tuple[str | tuple[str, ...], str]]:
        for name in self.audiences:
            if name not in AUDIENCES:
                yield ("audiences", name), f"unknown audience {name!r} (valid: {', '.join(AUDIENCES)})"
        if self.check_every.seconds <= 0:
            yield "check_every", "must be more than 0"
        names = [m.name for m in self.export_manifests]
        for i, name in enumerate(names):
            if names.index(name) != i:
                yield ("export_manifests", i, "name"), f"duplicate manifest name {name!r}"
