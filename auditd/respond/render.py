"""Templates and files: Jinja2 in its sandbox, written privately under the state directory.

Templates are looked up as ``<language>/<name>.md.j2`` and ``<language>/<name>.html.j2``
(zh-CN and en), first in the operator's folder (``respond.templates``), then in the
shipped ``auditd/respond/templates``. They run in ``SandboxedEnvironment``: a template
cannot reach Python internals, and values from log lines (an attacker can write those)
are escaped for HTML by autoescape and for Markdown by ``_markdown_finalize``.

Files are written with mode 0600 in folders of mode 0700, through a temporary file
that is renamed into place (never following a link), so a reader sees the old file or
the new one, and a re-render after a crash replaces, never appends.

What a rendering writes goes to an `Output`: `Immediate` writes the files and rows at
once (in the caller's transaction), `Staged` writes the files under temporary names
and keeps the rows, to be put in place together later, inside a short transaction
(`commit`). The playbook job renders into a `Staged`: templates, contact look-ups and
thousands of customer files then never hold the store's write lock, which the
pipeline's batches wait for.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Protocol

from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound
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

    def warm(self) -> list[str]:
        """Compile every template now (Jinja2 compiles one at its first use, a tenth of a
        second each): a daemon warms them at its start and reload, so that the first
        incident's steps do not take the interpreter from the pipeline while they
        compile. Returns the problems of templates that do not compile (their steps
        fail, and say why, when they fire)."""
        problems = []
        for name in self.markdown.list_templates(filter_func=lambda n: n.endswith((".md.j2", ".html.j2"))):
            env = self.markdown if name.endswith(".md.j2") else self.html
            try:
                env.get_template(name)
            except TemplateError as exc:
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
        return problems

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
        raise OSError(errno.ENOTDIR, "the folder is a link or not a folder", str(path))
    return path


def write_private(path: Path, data: bytes) -> str:
    """Write `data` to `path` (mode 0600) through a temporary file renamed into place;
    returns its SHA-256. Nothing someone put in the folder is written through: a folder
    that is a link is refused, a link at `path` is replaced, never followed."""
    private_dir(path.parent)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    digest = _write_synced(temp, data)
    os.replace(temp, path)  # replaces a link by the file, never writes through it
    return digest


def _write_synced(path: Path, data: bytes) -> str:
    """Write a new file `path` (0600) and sync it. A name already taken (a link, a FIFO
    that would block the writer for ever, a crashed run's leftover) is removed and the
    file made anew (O_EXCL | O_NOFOLLOW): never opened through."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


class Output(Protocol):
    """Where a rendering's files and rows go."""

    def file(self, path: Path, data: bytes) -> str:
        """Write `data` as `path` (mode 0600); returns its SHA-256."""

    def row(self, sql: str, params: tuple) -> None:
        """Record one row (an INSERT)."""


class Immediate:
    """Files written and rows inserted at once, in the caller's transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def file(self, path: Path, data: bytes) -> str:
        return write_private(path, data)

    def row(self, sql: str, params: tuple) -> None:
        self._conn.execute(sql, params)


STAGING = ".staging"  # under the output folder: files rendered, not yet in place


class Staged:
    """Files written (and synced) under ``<out>/.staging/<pid>-<n>/`` and rows kept, to
    be put in place together by `commit`, inside the caller's transaction: a rename
    and an INSERT each, however long the rendering took. `discard` (or a crash) leaves
    nothing in place; `clear_leftovers` removes what a process that died left staged.
    As a context manager, it discards at the end whatever was not committed."""

    _made = 0

    def __init__(self, out_dir: Path):
        Staged._made += 1
        self._folder = Path(out_dir) / STAGING / f"{os.getpid()}-{Staged._made}"
        self._files: list[tuple[Path, Path]] = []
        self._rows: list[tuple[str, tuple]] = []

    def file(self, path: Path, data: bytes) -> str:
        if not self._files:
            private_dir(self._folder)
        temp = self._folder / str(len(self._files))
        digest = _write_synced(temp, data)
        self._files.append((temp, path))
        return digest

    def row(self, sql: str, params: tuple) -> None:
        self._rows.append((sql, params))

    def commit(self, conn: sqlite3.Connection) -> None:
        """Insert the rows and rename the files into place (call inside a transaction:
        if it fails, the rows roll back and a later rendering replaces the files)."""
        for sql, rows in itertools.groupby(self._rows, key=lambda r: r[0]):
            conn.executemany(sql, [params for _, params in rows])
        folders: set[Path] = set()
        for temp, path in self._files:
            if path.parent not in folders:
                folders.add(private_dir(path.parent))
            os.replace(temp, path)  # replaces a link by the file, never writes through it
        self.discard()

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # after a commit, only the empty folder; else everything staged

    def discard(self) -> None:
        self._files.clear()
        self._rows.clear()
        shutil.rmtree(self._folder, ignore_errors=True)

    @staticmethod
    def clear_leftovers(out_dir: Path) -> int:
        """Remove what processes no longer running left staged (a crash mid-rendering);
        returns how many folders went."""
        root = Path(out_dir) / STAGING
        try:
            folders = list(os.scandir(root))
        except OSError:
            return 0
        removed = 0
        for entry in folders:
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: running
        return True
    return True


def safe_name(text: str) -> str:
    """A file-name part from an id (incident, step, pseudonym): nothing but [A-Za-z0-9._-]."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text)
    return cleaned.lstrip(".") or "_"
