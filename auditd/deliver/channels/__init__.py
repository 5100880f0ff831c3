"""The channels, built once per configuration with their secrets read.

    channels = build_channels(settings, spool, problems, referrer=doc)
    channels.for_route("email", "email")              # a customer's e-mail
    channels.for_route("chat:security-team#0", "chat")  # an audience's route

An explicit registry: a route's channel kind picks its class here, nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auditd.config.located import Doc, PathKey, Problems
from auditd.deliver.channels.base import Channel, Result
from auditd.deliver.channels.chat import ChatChannel, build_url
from auditd.deliver.channels.email import EmailChannel
from auditd.deliver.channels.files import LetterChannel, NoChannel, PortalChannel, weasyprint_available
from auditd.deliver.channels.http import GatewayChannel, WebhookChannel
from auditd.deliver.secrets import SecretError, SecretValue, read_secret
from auditd.deliver.settings import DeliverSettings, Route, Secret


class BuiltChannels:
    def __init__(self, settings: DeliverSettings, spool: Path, secrets: dict[PathKey, SecretValue]):
        self.settings = settings
        self.spool = Path(spool)
        self._secrets = secrets
        self._built: dict[str, Channel] = {}
        self._routes: dict[str, Route] = {route.label(name, i): route for name, routes in settings.to.items()
                                          for i, route in enumerate(routes)}

    def route(self, label: str) -> Route | None:
        return self._routes.get(label)

    def per_minute(self, label: str, channel: str) -> float | None:
        route = self._routes.get(label)
        if route is not None and route.chat is not None:
            return route.chat.per_minute
        configured: Any = getattr(self.settings.channels, channel, None) if channel in ("email", "sms", "push") \
            else None
        return getattr(configured, "rate_per_minute", None)

    def close(self) -> None:
        """End what channels keep open between batches (an SMTP connection): at the end of a run."""
        for channel in self._built.values():
            close = getattr(channel, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass

    def for_route(self, label: str, channel: str) -> Channel:
        if label not in self._built:
            self._built[label] = self._build(label, channel)
        return self._built[label]

    def _secret(self, key: PathKey) -> SecretValue | None:
        return self._secrets.get(key)

    def _build(self, label: str, channel: str) -> Channel:
        route = self._routes.get(label)
        c = self.settings.channels
        if route is not None and route.channel == "chat" and route.chat is not None:
            name, index = _route_key(label)
            base: PathKey = ("to", name, index, "chat")
            url = build_url(route.chat, self._secret(base + ("token",)), self._secret(base + ("secret",)),
                            self._secret(base + ("url_secret",)))
            return ChatChannel(route.chat, url)
        if route is not None and route.channel == "webhook":
            name, index = _route_key(label)
            secret = self._secret(("to", name, index, "secret"))
            assert route.url is not None and secret is not None
            return WebhookChannel(route.url, secret)
        if channel == "email" and c.email is not None:
            return EmailChannel(c.email, self._secret(("channels", "email", "password")))
        if channel in ("sms", "push") and getattr(c, channel) is not None:
            gateway = getattr(c, channel)
            return GatewayChannel(channel, gateway.url, self._secret(("channels", channel, "token")), gateway.timeout_s)
        if channel == "letter":
            return LetterChannel(c.letter.spool or self.spool / "letters", c.letter.format)
        if channel == "portal":
            folder = (route.folder if route is not None else None) or c.portal.folder or self.spool / "portal"
            return PortalChannel(folder)
        if channel == "phone":
            return NoChannel("phone", "phone calls are made by people: call, then mark it done")
        return NoChannel(channel, f"channel {channel} is not configured: add deliver.channels.{channel}, "
                                  "then `neo-auditd outbox retry`")


def _route_key(label: str) -> tuple[str, int]:
    """'chat:security-team#0' -> ('security-team', 0)."""
    rest = label.split(":", 1)[1]
    name, _, index = rest.rpartition("#")
    return name, int(index)


def read_secrets(settings: DeliverSettings, problems: Problems, *, referrer: Doc | None = None,
                 key_path: PathKey = ("deliver",)) -> dict[PathKey, SecretValue]:
    """Every configured secret, read now; a missing one is a located configuration problem."""
    wanted: list[tuple[PathKey, Secret]] = []
    c = settings.channels
    if c.email is not None and c.email.password is not None:
        wanted.append((("channels", "email", "password"), c.email.password))
    for kind in ("sms", "push"):
        gateway = getattr(c, kind)
        if gateway is not None and gateway.token is not None:
            wanted.append((("channels", kind, "token"), gateway.token))
    for name, routes in settings.to.items():
        for i, route in enumerate(routes):
            if route.secret is not None:
                wanted.append((("to", name, i, "secret"), route.secret))
            if route.chat is not None:
                for field in ("token", "secret", "url_secret"):
                    ref = getattr(route.chat, field)
                    if ref is not None:
                        wanted.append((("to", name, i, "chat", field), ref))
    out: dict[PathKey, SecretValue] = {}
    for key, ref in wanted:
        if ref.file is not None and not ref.file.is_absolute() and referrer is not None:
            ref = Secret(file=referrer.folder / ref.file)
        try:
            out[key] = read_secret(ref)
        except SecretError as exc:
            problems.add(referrer, key_path + key, str(exc))
    return out


def build_channels(settings: DeliverSettings, spool: Path, problems: Problems, *, referrer: Doc | None = None
                   ) -> BuiltChannels:
    secrets = read_secrets(settings, problems, referrer=referrer)
    letter = settings.channels.letter
    if letter.format == "pdf" and not weasyprint_available():
        problems.add(referrer, ("deliver", "channels", "letter", "format"),
                     "pdf needs WeasyPrint (pip install weasyprint; Debian: libpango-1.0-0 libpangoft2-1.0-0); "
                     "or use html")
    return BuiltChannels(settings, spool, secrets)


__all__ = ["BuiltChannels", "Channel", "Result", "build_channels", "read_secrets"]
