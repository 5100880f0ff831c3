"""Settings of the deliver stage (the ``deliver:`` section of the config)::

    deliver:
      check_every: 5s                    # the deliver job; one run drains what is due
      claim_batch: 200                   # messages marked `sending` per transaction
      retry: {attempts: 8, initial: 30s, max: 1h, jitter: 10s}
      channels:                          # how each channel kind is reached
        email: {host: smtp.internal, port: 587, security: starttls, username: neo-auditd,
                password: {file: /etc/neo-auditd/smtp.password}, sender: security@neo.example,
                ca_file: /etc/neo-auditd/smtp-ca.pem}
        sms:   {url: "http://sms-gateway.internal/send", token: {env: NEO_SMS_TOKEN}}
        push:  {url: "http://push-gateway.internal/send", token: {env: NEO_PUSH_TOKEN}}
        letter: {spool: /var/spool/neo-auditd/letters, format: pdf}
      to:                                # an audience's contact_ref -> its routes
        security-team:
          - {channel: chat, chat: {service: dingtalk, token: {env: NEO_DINGTALK_TOKEN},
                                   secret: {env: NEO_DINGTALK_SECRET}}}
          - {channel: email, address: security@neo.example}
        yunnan-cac: [{channel: email, address: report@cac.example}]
        public: [{channel: webhook, url: "https://www.neo.example/hooks/announce",
                  secret: {file: /etc/neo-auditd/site.hmac}}]
      realert: {security: 15m}           # internal audiences: one message per incident and kind
      digest: {steps: [digest], at: "09:00"}   # T6: one daily message

Secrets (passwords, tokens, signing keys, chat URLs that hold a token) are never written
in this file: a secret is ``{file: PATH}`` or ``{env: NAME}``, read when the
configuration is loaded, and never logged or shown.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from auditd.config.typed import Duration

CHANNEL_KINDS = ("email", "sms", "push", "chat", "webhook", "letter", "portal", "phone")
ChannelKind = Literal["email", "sms", "push", "chat", "webhook", "letter", "portal", "phone"]
CHAT_SERVICES = ("json", "dingtalk", "wecom", "feishu", "slack", "apprise")
# What the services take (per robot or webhook): DingTalk 20 a minute, WeCom 20 a
# minute, Feishu 100 a minute (5 a second), Slack about one a second per channel.
CHAT_RATE_PER_MINUTE = {"dingtalk": 20.0, "wecom": 20.0, "feishu": 100.0, "slack": 60.0}
# legal obligations are never folded into an earlier message
NEVER_SUPPRESSED = ("customers", "regulator", "police", "public")


@dataclass(frozen=True, slots=True)
class Secret:
    """Where a secret is read from: a file (its first line; not readable by everyone) or
    an environment variable. Never the config text: a plain value here is refused, and
    the error does not repeat it. A relative file is relative to the config file."""

    file: Path | None = None
    env: str | None = None

    @classmethod
    def from_config(cls, value: object) -> "Secret":
        if not isinstance(value, dict):
            raise ValueError("a secret is never written in the config: give {file: PATH} or {env: NAME}")
        unknown = sorted(str(k) for k in value if k not in ("file", "env"))
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (valid keys: env, file)")
        file, env = value.get("file"), value.get("env")
        if (file is None) == (env is None) or not isinstance(file or env, str) or not (file or env):
            raise ValueError("give exactly one of file or env")
        if env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise ValueError("env must be an environment variable name")
        return cls(file=Path(file) if file is not None else None, env=env)


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Exponential backoff with jitter between attempts (tenacity's wait_exponential plus wait_random);
    after `attempts` a message is failed, escalated, and waits for `outbox retry`."""

    attempts: int = 8
    initial: Duration = field(default_factory=lambda: Duration(30.0))
    max: Duration = field(default_factory=lambda: Duration(3600.0))
    jitter: Duration = field(default_factory=lambda: Duration(10.0))

    def check(self) -> Iterable[tuple[str, str]]:
        if not 1 <= self.attempts <= 100:
            yield "attempts", "must be from 1 to 100"
        if self.initial.seconds < 0 or self.max.seconds < self.initial.seconds:
            yield "max", "must be at least initial"


@dataclass(frozen=True, slots=True)
class EmailSettings:
    host: str = "127.0.0.1"
    port: int = 25
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    sender: str = "neo-auditd@localhost"
    ca_file: Path | None = None  # whom to trust for TLS besides the system's CAs
    timeout_s: float = 30.0
    rate_per_minute: float | None = None  # None: as fast as the server takes them
    process: bool = True  # the SMTP conversation in a child process (the pipeline keeps the interpreter)

    def check(self) -> Iterable[tuple[str, str]]:
        if not 1 <= self.port <= 65535:
            yield "port", "must be from 1 to 65535"
        if (self.username is None) != (self.password is None):
            yield "password", "give username and password together"
        if "@" not in self.sender:
            yield "sender", "must be an e-mail address"
        if self.password is not None and self.security == "none":
            yield "security", "a password is never sent without TLS: use starttls or tls"
        yield from _rate(self.rate_per_minute)


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """An HTTP gateway (SMS, app push): POST JSON {to, text, reference, ...} with a bearer token."""

    url: str
    token: Secret | None = None
    timeout_s: float = 10.0
    rate_per_minute: float | None = None

    def check(self) -> Iterable[tuple[str, str]]:
        yield from _http_url(self.url)
        yield from _rate(self.rate_per_minute)


@dataclass(frozen=True, slots=True)
class LetterSettings:
    spool: Path | None = None  # default: <state_dir>/deliver/letters
    format: Literal["auto", "pdf", "html"] = "auto"  # auto: PDF when WeasyPrint is installed


@dataclass(frozen=True, slots=True)
class PortalSettings:
    folder: Path | None = None  # default: <state_dir>/deliver/portal (an upload folder, the site's files)


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    email: EmailSettings | None = None
    sms: GatewaySettings | None = None
    push: GatewaySettings | None = None
    letter: LetterSettings = field(default_factory=LetterSettings)
    portal: PortalSettings = field(default_factory=PortalSettings)


@dataclass(frozen=True, slots=True)
class ChatTarget:
    """A chat robot, through Apprise. `json` posts to a webhook URL (no secret in it); the
    others are built from their tokens; `apprise` takes a whole Apprise URL from a secret."""

    service: Literal["json", "dingtalk", "wecom", "feishu", "slack", "apprise"]
    url: str | None = None  # json only: json://host:port/path, with no credentials
    token: Secret | None = None  # dingtalk access token, wecom bot key, feishu token, slack tokens a/b/c
    secret: Secret | None = None  # dingtalk signing secret
    channel: str | None = None  # slack channel
    url_secret: Secret | None = None  # apprise: the whole URL
    rate_per_minute: float | None = None  # default: what the service takes

    def check(self) -> Iterable[tuple[str, str]]:
        if self.service == "json":
            if self.url is None or not re.match(r"jsons?://", self.url):
                yield "url", "a json chat target needs url: json://host:port/path"
            elif "@" in self.url.split("/", 3)[2]:
                yield "url", "credentials never go in the config: use service apprise with url_secret"
        elif self.url is not None:
            yield "url", f"only the json service takes url; {self.service} is built from token (and secret)"
        if self.service in ("dingtalk", "wecom", "feishu", "slack") and self.token is None:
            yield "token", f"{self.service} needs token: {{file: ...}} or {{env: ...}}"
        if self.service == "apprise" and self.url_secret is None:
            yield "url_secret", "apprise needs url_secret: {file: ...} or {env: ...}"
        if self.secret is not None and self.service != "dingtalk":
            yield "secret", "only dingtalk takes a signing secret"
        yield from _rate(self.rate_per_minute)

    @property
    def per_minute(self) -> float | None:
        return self.rate_per_minute or CHAT_RATE_PER_MINUTE.get(self.service)


@dataclass(frozen=True, slots=True)
class Route:
    """One way to reach an internal audience."""

    channel: ChannelKind
    address: str | None = None  # e-mail address, phone number, postal address (letter)
    name: str | None = None  # the addressee of a letter
    chat: ChatTarget | None = None
    url: str | None = None  # webhook
    secret: Secret | None = None  # webhook signing key (HMAC-SHA-256)
    folder: Path | None = None  # portal: an upload folder instead of the default

    def check(self) -> Iterable[tuple[str, str]]:
        if self.channel in ("email", "sms", "push", "letter") and not self.address:
            yield "address", f"a {self.channel} route needs address"
        if self.channel == "email" and self.address and "@" not in self.address:
            yield "address", "must be an e-mail address"
        if self.channel == "chat" and self.chat is None:
            yield "chat", "a chat route needs chat: {service: ...}"
        if self.channel == "webhook":
            if self.url is None:
                yield "url", "a webhook route needs url"
            else:
                yield from _http_url(self.url, "url")
            if self.secret is None:
                yield "secret", "a webhook is signed: give secret: {file: ...} or {env: ...}"
        if self.channel == "phone":
            yield "channel", "phone calls are made by people: route the audience to another channel"

    def label(self, name: str, index: int) -> str:
        return f"{self.channel}:{name}#{index}"


@dataclass(frozen=True, slots=True)
class DigestSettings:
    """Notices of these steps wait and go out together once a day at `at` (local time)."""

    steps: list[str] = field(default_factory=lambda: ["digest"])
    at: str = "09:00"

    def check(self) -> Iterable[tuple[str, str]]:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", self.at):
            yield "at", "a local time such as 09:00"

    @property
    def time(self) -> dt.time:
        hour, minute = self.at.split(":")
        return dt.time(int(hour), int(minute))


@dataclass(frozen=True, slots=True)
class DeliverSettings:
    enabled: bool = True
    check_every: Duration = field(default_factory=lambda: Duration(5.0))
    claim_batch: int = 200
    retry: RetrySettings = field(default_factory=RetrySettings)
    channels: ChannelSettings = field(default_factory=ChannelSettings)
    to: dict[str, list[Route]] = field(default_factory=dict)
    realert: dict[str, Duration] = field(default_factory=dict)  # audience -> window
    digest: DigestSettings | None = field(default_factory=DigestSettings)
    escalate_to: str | None = None  # contact_ref told of failed messages; default the security audience's
    delete_delivered: bool = True  # a customer's rendered file (its address) once every route delivered
    spool: Path | None = None  # default: <state_dir>/deliver (escalations, digests, letters, portal)

    def check(self) -> Iterable[tuple[str | tuple[str, ...], str]]:
        if self.check_every.seconds <= 0:
            yield "check_every", "must be more than 0"
        if not 1 <= self.claim_batch <= 10_000:
            yield "claim_batch", "must be from 1 to 10000"
        if self.escalate_to is not None and not self.escalate_to.strip():
            yield "escalate_to", "must name a route in deliver.to (leave it out for the security audience's)"
        for audience in self.realert:
            if audience in NEVER_SUPPRESSED:
                yield ("realert", audience), f"messages to {audience} are legal obligations: never suppressed"


def _rate(value: float | None) -> Iterable[tuple[str, str]]:
    if value is not None and not 0 < value <= 1_000_000:
        yield "rate_per_minute", "must be more than 0"


def _http_url(url: str, key: str = "url") -> Iterable[tuple[str, str]]:
    if not re.match(r"https?://[^/@\s]+(/|$)", url):
        yield key, "must be an http:// or https:// URL without credentials (secrets go in token or secret)"
