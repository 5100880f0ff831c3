"""Letters and portal uploads: files in a spool folder, one per recipient.

A letter is a printable page: the addressee's name and postal address, the subject,
the text, and the idempotency key in its footer. It is a PDF when WeasyPrint is
installed (it needs Pango from the system: Debian's libpango-1.0-0 and
libpangoft2-1.0-0, and a CJK font such as fonts-wqy-zenhei for Chinese), otherwise
HTML for a browser to print. Its receipt is the file's path and SHA-256. The file holds
the person's address because it is the letter: mode 0600 in a 0700 folder, for the
print room to take.

The portal channel puts the message and its attachments in an upload folder (a
regulator's portal, the company site's announcements) and answers with the folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import os
from collections.abc import Sequence
from pathlib import Path

from auditd.deliver.channels.base import Report, Result
from auditd.deliver.message import Outgoing
from auditd.respond.contacts import open_regular
from auditd.respond.render import write_private


def weasyprint_available() -> bool:
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError):  # OSError: installed, but Pango is missing
        return False
    return True


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]


def _file_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


LETTER_CSS = """
@page { size: A4; margin: 25mm 20mm; @bottom-center { content: element(footer); } }
body { font-family: "WenQuanYi Zen Hei", "Noto Sans CJK SC", "DejaVu Sans", sans-serif; font-size: 11pt; }
.address { margin-bottom: 18mm; white-space: pre-line; }
.footer { position: running(footer); font-size: 8pt; color: #555; }
pre { white-space: pre-wrap; font-family: inherit; }
"""


def letter_html(message: Outgoing, today: dt.date) -> str:
    body = message.html or f"<pre>{html.escape(message.text)}</pre>"
    return (f"<!DOCTYPE html><html lang=\"{html.escape(message.language)}\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(message.subject)}</title><style>{LETTER_CSS}</style></head><body>"
            f"<div class=\"footer\">ref: {html.escape(message.wire_key)}</div>"
            f"<div class=\"address\">{html.escape(message.name or '')}\n{html.escape(message.address or '')}</div>"
            f"<p>{today.isoformat()}</p><h1>{html.escape(message.subject)}</h1>{body}"
            f"<p class=\"ref\">ref: {html.escape(message.wire_key)}</p></body></html>")


class LetterChannel:
    kind = "letter"

    def __init__(self, spool: Path, fmt: str = "auto", today=lambda: dt.date.today()):
        self.spool = Path(spool)
        self.format = ("pdf" if weasyprint_available() else "html") if fmt == "auto" else fmt
        self.today = today

    def send_batch(self, messages: Sequence[Outgoing], report: Report) -> None:
        for message in messages:
            if not message.address:
                report(message, Result.failed("no postal address"))
                continue
            today = self.today()
            page = letter_html(message, today)
            try:
                data = self._render(page)
            except Exception as exc:  # noqa: BLE001 - a rendering failure is this message's, not the batch's
                report(message, Result.retry(f"letter rendering failed: {type(exc).__name__}"))
                continue
            path = self.spool / today.isoformat() / f"{_file_name(message.wire_key)}.{self.format}"
            try:
                write_private(path, data)
            except OSError as exc:
                report(message, Result.retry(f"cannot write the letter: {exc.strerror}"))
                continue
            report(message, Result.delivered({"path": str(path), "format": self.format,
                                              "sha256": hashlib.sha256(data).hexdigest()}, data))

    def _render(self, page: str) -> bytes:
        if self.format == "pdf":
            import weasyprint

            return weasyprint.HTML(string=page).write_pdf()
        return page.encode("utf-8")


class PortalChannel:
    """The message (Markdown text and HTML) and its attachments in a folder of their own."""

    kind = "portal"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def send_batch(self, messages: Sequence[Outgoing], report: Report) -> None:
        for message in messages:
            target = self.folder / _safe(message.wire_key.replace("/", "_"))
            try:
                text = f"# {message.subject}\n\n{message.text}\n\nref: {message.wire_key}\n".encode("utf-8")
                write_private(target / f"message.{message.language}.md", text)
                if message.html:
                    write_private(target / f"message.{message.language}.html", message.html.encode("utf-8"))
                for attachment in message.attachments:
                    write_private(target / Path(attachment).name, open_regular(Path(attachment)))
            except OSError as exc:
                report(message, Result.retry(f"cannot write to the portal folder: {exc.strerror}"))
                continue
            report(message, Result.delivered({"path": str(target), "sha256": hashlib.sha256(text).hexdigest()},
                                             text))


class NoChannel:
    """A channel nothing here can send (a phone call): fails at once and escalates."""

    def __init__(self, kind: str, why: str):
        self.kind = kind
        self.why = why

    def send_batch(self, messages: Sequence[Outgoing], report: Report) -> None:
        for message in messages:
            report(message, Result.failed(self.why))


__all__ = ["LetterChannel", "NoChannel", "PortalChannel", "weasyprint_available"]
