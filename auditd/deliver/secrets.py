"""Channel secrets, read from a file or the environment when the configuration is loaded.

A `Secret` value never shows itself: its repr, str and format are masked, so a log line,
a traceback's locals or a status page that prints a settings object cannot leak it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from auditd.deliver.settings import Secret
from auditd.respond.contacts import CONTROL

MAX_SECRET_BYTES = 64 * 1024


class SecretValue:
    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str):
        self._value = value
        self.origin = origin  # "file /etc/..." or "env NAME": safe to show

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"SecretValue(<hidden>, from {self.origin})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self):  # never pickled into another process or file by accident
        raise TypeError("a secret is not pickled")


class SecretError(Exception):
    """The secret could not be read (the message names where, never the value)."""


def read_secret(ref: Secret) -> SecretValue:
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None or not value.strip():
            raise SecretError(f"environment variable {ref.env} is not set")
        if CONTROL.search(value.strip()):  # it goes into a header or a URL: one line, as a file's first
            raise SecretError(f"environment variable {ref.env} holds a line break or another control "
                              f"character; a secret is one line")
        return SecretValue(value.strip(), f"env {ref.env}")
    assert ref.file is not None
    path = Path(ref.file)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SecretError(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"{path} is not a regular file")
        if info.st_mode & 0o004:
            raise SecretError(f"{path} is readable by everyone: chmod o-r (0600 or 0640)")
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"{path} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8").strip().splitlines()[0].strip() if data.strip() else ""
    except UnicodeDecodeError:
        raise SecretError(f"{path} is not UTF-8 text") from None
    if not text:
        raise SecretError(f"{path} is empty")
    if CONTROL.search(text):
        raise SecretError(f"{path}: its first line holds a control character; a secret is printable text")
    return SecretValue(text, f"file {path}")
