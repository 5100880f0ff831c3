"""One sender per store: an advisory lock on ``deliver.lock`` beside the store.

Each run of the deliver work starts by queueing again what a sender that is gone left
``sending`` (``outbox.recover``). That is only right when no other sender is alive on
the same store: the daemon's deliver process holds this lock for its whole life, a
restarted one waits for its predecessor to let go, and ``neo-auditd outbox send`` sends
only while no daemon's deliver process holds it. The kernel drops the lock when its
holder dies, kill -9 included.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

FILE_NAME = "deliver.lock"


def path_for(store_path: Path) -> Path:
    return Path(store_path).with_name(FILE_NAME)


class DeliverLock:
    """Constructing it does no I/O; `acquire` opens the file (0600, links not followed)."""

    def __init__(self, store_path: Path):
        self.path = path_for(store_path)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the message of one that waits
        except OSError:  # a full disk: the lock is ours all the same; only its holder goes unsaid
            pass
        self._fd = fd
        return True

    def acquire(self, should_stop: Callable[[], bool], on_wait: Callable[[str], None] = lambda holder: None,
                poll_s: float = 0.2) -> bool:
        """Wait until the lock is ours (True) or a stop is asked for (False)."""
        told = False
        while not should_stop():
            if self.try_acquire():
                return True
            if not told:
                on_wait(self.holder())
                told = True
            time.sleep(poll_s)
        return False

    def holder(self) -> str:
        try:
            with open(self.path, "rb") as fh:
                return fh.read(32).decode("ascii", "replace").strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


__all__ = ["FILE_NAME", "DeliverLock", "path_for"]
