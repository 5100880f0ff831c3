"""What the running daemon is doing, where `status` can read it even on a full disk.

The store cannot record "the store is full". So the daemon keeps a small file beside
the store, allocated once at start (``RESERVED`` bytes) and then only overwritten in
place: rewriting blocks a file already has needs no free space, so it keeps working
when the disk is full (not when the file system is read-only: `status` then says the
record is stale, and the log and the metrics still tell). It holds JSON: the pid, the
state (``running``, ``holding_back``, ``stopped``), the reason and since when.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("neo_auditd.runstate")

RESERVED = 4096
FILE_NAME = "daemon.state"
STALE_AFTER_S = 180.0


def path_for(store_path: Path) -> Path:
    return Path(store_path).with_name(FILE_NAME)


class RunState:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self.record: dict = {}
        self._lock = threading.Lock()  # the daemon's loop and the deliver process's supervisor both write

    def open(self) -> "RunState":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            if os.fstat(fd).st_size < RESERVED:
                os.posix_fallocate(fd, 0, RESERVED)
            self._fd = fd
        except OSError as exc:  # the daemon runs on without it; status says it cannot tell
            log.warning("cannot keep the run-state file", extra={"file.path": str(self.path), "error": str(exc)})
        return self

    def set(self, **fields) -> None:
        with self._lock:
            self.record.update(fields, pid=os.getpid(),
                               updated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
            if self._fd is None:
                return
            data = json.dumps(self.record, ensure_ascii=False).encode("utf-8")[:RESERVED - 1]
            try:
                os.pwrite(self._fd, data + b"\n" + b" " * (RESERVED - len(data) - 1), 0)
            except OSError as exc:
                log.debug("run-state not written", extra={"error": str(exc)})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read(store_path: Path, now: dt.datetime | None = None) -> dict | None:
    """The record, with ``alive`` (the pid runs) and ``stale`` (not renewed lately)."""
    try:
        with open(path_for(store_path), "rb") as fh:
            record = json.loads(fh.read(RESERVED).strip() or b"null")
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    try:
        os.kill(int(record.get("pid", 0)), 0)
        record["alive"] = True
    except PermissionError:  # runs, as another user
        record["alive"] = True
    except (OSError, ValueError, TypeError):
        record["alive"] = False
    try:
        updated = dt.datetime.fromisoformat(record["updated_at"])
        now = now or dt.datetime.now(dt.timezone.utc)
        record["stale"] = (now - updated).total_seconds() > STALE_AFTER_S
    except (KeyError, ValueError, TypeError):
        record["stale"] = True
    return record
