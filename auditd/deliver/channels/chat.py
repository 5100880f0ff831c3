"""Chat through Apprise: DingTalk, WeCom robots, Feishu, Slack, or any JSON webhook.

The URLs are built from the configured tokens (read from files or the environment) in
Apprise's own syntax, and Apprise sends: no hand-written client here. A robot takes
only so many messages a minute (DingTalk and WeCom about 20): the worker's rate limiter
holds the rest back, as pending, not as failures. The receipt is Apprise's result.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from auditd.deliver.channels.base import Report, Result
from auditd.deliver.message import Outgoing
from auditd.deliver.secrets import SecretValue
from auditd.deliver.settings import ChatTarget

if TYPE_CHECKING:
    import apprise

KEY_HEADER = "X-Neo-Idempotency-Key"


def build_url(target: ChatTarget, token: SecretValue | None, secret: SecretValue | None,
              url_secret: SecretValue | None) -> str:
    """The Apprise URL of a chat target (it holds the token: never log it)."""
    quote = lambda value: urllib.parse.quote(value, safe="")  # noqa: E731
    if target.service == "json":
        assert target.url is not None
        return target.url
    if target.service == "apprise":
        assert url_secret is not None
        return url_secret.reveal()
    assert token is not None
    if target.service == "dingtalk":
        prefix = f"{quote(secret.reveal())}@" if secret is not None else ""
        return f"dingtalk://{prefix}{quote(token.reveal())}/"
    if target.service == "wecom":
        return f"wecombot://{quote(token.reveal())}"
    if target.service == "feishu":
        return f"feishu://{quote(token.reveal())}"
    # slack: the incoming webhook's three tokens, "A/B/C", then the channel
    tokens = "/".join(quote(part) for part in token.reveal().strip("/").split("/"))
    channel = f"/{quote(target.channel)}" if target.channel else ""
    return f"slack://{tokens}{channel}"


def with_key_header(url: str, key: str) -> str:
    """json:// carries the idempotency key as a request header (Apprise's `+Header=` syntax)."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{urllib.parse.quote('+' + KEY_HEADER)}={urllib.parse.quote(key, safe='')}"


class ChatChannel:
    kind = "chat"

    def __init__(self, target: ChatTarget, url: str, asset: apprise.AppriseAsset | None = None):
        import apprise  # here, not at import: Apprise loads its plugins (~0.1 s), which a replay never needs

        self.target = target
        self._url = url
        self.asset = asset or apprise.AppriseAsset(app_id="neo-auditd", app_desc="neo-auditd")

    def send_batch(self, messages: Sequence[Outgoing], report: Report) -> None:
        import apprise

        for message in messages:
            url = with_key_header(self._url, message.wire_key) if self.target.service == "json" else self._url
            sender = apprise.Apprise(asset=self.asset)
            if not sender.add(url):
                report(message, Result.failed(f"Apprise does not take the {self.target.service} URL"))
                continue
            body = message.with_footer()
            ok = sender.notify(title=message.subject, body=body)
            if ok:
                sent = f"{message.subject}\n{body}".encode("utf-8")
                report(message, Result.delivered({"apprise": "sent", "service": self.target.service}, sent))
            else:  # Apprise says only yes or no; a no is worth another try
                report(message, Result.retry(f"Apprise could not send to {self.target.service}"))
