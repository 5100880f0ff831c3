"""When storage cannot take a write: which errors mean "hold back and try again".

A full disk (ENOSPC, SQLITE_FULL, the store's own size cap), a file system gone
read-only (EROFS, SQLITE_READONLY), an I/O error (EIO, SQLITE_IOERR), a quota, or
another process holding the store's write lock past the busy timeout (SQLITE_BUSY: a
person's long transaction in the sqlite3 shell) are conditions that pass or that the
operator can clear: the daemon stops reading, says so, retries with
backoff and goes on by itself once a write succeeds, losing and repeating nothing (a
batch's transaction either committed or left no trace). Damage (SQLITE_CORRUPT) is not
one of them: that is ``store.health``'s, and stops the daemon.
"""

from __future__ import annotations

import errno
import sqlite3

from auditd.errors import NeoError

# SQLite's primary result codes (the low byte of an extended one)
_SQLITE_HOLD = {5: "the store is busy (SQLITE_BUSY: another connection held its write lock past the busy timeout)",
                13: "the store is full (SQLITE_FULL: the disk, or the store's max_bytes)",
                8: "the store is read-only (SQLITE_READONLY)",
                10: "the store cannot be written (SQLITE_IOERR: an I/O error)",
                14: "the store cannot be opened for writing (SQLITE_CANTOPEN)"}
_OS_HOLD = {errno.ENOSPC: "no space left on the device (ENOSPC)",
            errno.EROFS: "the file system is read-only (EROFS)",
            errno.EIO: "an I/O error (EIO)",
            errno.EDQUOT: "the disk quota is exceeded (EDQUOT)",
            errno.EACCES: "permission denied (EACCES)",
            errno.EPERM: "operation not permitted (EPERM)"}


class StorageUnavailable(NeoError):
    """A batch could not be committed; nothing of it was kept. Retry it later."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class MirrorBehind(NeoError):
    """The batch committed, but the quarantine file could not be appended: the store
    holds the lines; the file catches up when it can be written."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def hold_reason(exc: BaseException) -> str | None:
    """Why the write failed, if it is a condition to wait out; None otherwise."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _SQLITE_HOLD:
            return _SQLITE_HOLD[code & 0xFF]
        text = str(exc)
        if "disk is full" in text or "disk I/O error" in text or "readonly" in text:
            return f"the store cannot be written ({text})"
        return None
    if isinstance(exc, OSError) and exc.errno in _OS_HOLD:
        where = f" at {exc.filename}" if exc.filename else ""
        return _OS_HOLD[exc.errno] + where
    return None
