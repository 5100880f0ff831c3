"""Templates and files: Jinja2 in its sandbox, written privately under the state directory.

Templates are looked up as ``<language>/<name>.md.j2`` and ``<language>/<name>.html.j2``
(zh-CN and en), first in the operator's folder (``respond.templates``), then in the
shipped ``auditd/respond/templates``. They run in ``SandboxedEnvironment``: a template
cannot reach Python internals, and values from log lines (an attacker can write those)
are escaped for HTML by autoescape and for Markdown by ``_markdown_finalize``.

Files are written with mode 0600 in folders of mode 0700, through a temporary file
that is renamed into place (never following a link), so a reader sees the old file or
the new one, and a re-render after a crash replaces, never appends.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

from auditd.respond.settings import LANGUAGES

SHIPPED_TEMPLATES = Path(__file__).resolve().parent / "templates"
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|{}!])")


def _markdown_finalize(value: Any) -> Any:
    # values come from incidents (titles built from log fields): no Markdown or HTML from them
    if isinstance(value, str):
        return _MD_SPECIAL.sub(r"\\\1", value).replace("\n", " ")
    return "" if value is None else value


class Templates:
    """The two sandboxed environments (Markdown text, HTML); built once per runtime."""

    def __init__(self, operator_folder: Path | None = None):
        folders = ([str(operator_folder)] if operator_folder else []) + [str(SHIPPED_TEMPLATES)]
        loader = ChoiceLoader([FileSystemLoader(f) for f in folders])
        # no trim_blocks: a line that ends in a tag keeps its newline (list items stay
        # lines); the blank lines that block-only lines leave are folded by tidy()
        self.markdown = SandboxedEnvironment(loader=loader, autoescape=False, undefined=StrictUndefined,
                                             finalize=_markdown_finalize, keep_trailing_newline=True,
                                             lstrip_blocks=True)
        self.html = SandboxedEnvironment(loader=loader, autoescape=True, undefined=StrictUndefined,
                                         keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
        for env in (self.markdown, self.html):  # Chinese stays readable in JSON shown by templates
            env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": False}

    def exists(self, name: str) -> bool:
        """A template usable for notices: Markdown in every language."""
        for language in LANGUAGES:
            try:
                self.markdown.loader.get_source(self.markdown, f"{language}/{name}.md.j2")
            except TemplateNotFound:
                return False
        return True

    def render_markdown(self, name: str, language: str, context: dict[str, Any]) -> str:
        return tidy(self.markdown.get_template(f"{language}/{name}.md.j2").render(context))

    def render_html(self, name: str, language: str, context: dict[str, Any]) -> str:
        return self.html.get_template(f"{language}/{name}.html.j2").render(context)


def tidy(text: str) -> str:
    """Markdown as templates leave it, without runs of blank lines or trailing blanks."""
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    out: list[str] = []
    for i, line in enumerate(lines):
        if not line and (not out or not out[-1]):
            continue
        following = next((later for later in lines[i + 1:] if later), "")
        if not line and out[-1].startswith("- ") and following.startswith("- "):
            continue  # one list, not a list of paragraphs
        out.append(line)
    return "\n".join(out) + "\n"


def private_dir(path: Path) -> Path:
    """Create the folder (and parents) with mode 0700; refuse one that is a link."""
    old = os.umask(0o077)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    finally:
        os.umask(old)
    if path.is_symlink() or not path.is_dir():
        raise OSError(f"{path} is not a folder of our own")
    return path


def write_private(path: Path, data: bytes) -> str:
    """Write `data` to `path` (mode 0600) atomically; returns its SHA-256."""
    private_dir(path.parent)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temp, flags, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)  # replaces a link by the file, never writes through it
    return hashlib.sha256(data).hexdigest()


def safe_name(text: str) -> str:
    """A file-name part from an id (incident, step, pseudonym): nothing but [A-Za-z0-9._-]."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text)
    return cleaned.lstrip(".") or "_"
