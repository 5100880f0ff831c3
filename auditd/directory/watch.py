"""Reload the directory when its files change, keeping the old one if the new one is bad.

HR exports land without a SIGHUP, so the service polls: `poll()` costs nothing until
`min_interval_s` has passed, then a `stat` per source file; it reloads only when a
file's size, mtime or inode changed. A bad new file leaves the current directory in
place and its problems are reported once (not at every poll) until the file changes
again.

With `background`, a changed file is read on a thread of its own (by `load_apart`, if
given: in a child process, see `directory.packed`), and the poll that finds it read
returns the outcome: a directory of 10,000 employees takes half a second to load,
which the pipeline's thread would otherwise spend not reading lines.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from auditd.config.located import Problems
from auditd.directory.load import load_directory, stamp
from auditd.directory.model import Directory, FileStamp
from auditd.errors import ConfigProblem, Location

Loader = Callable[[Path, Problems], "Directory | None"]


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    changed: bool  # a new directory is in place
    problems: tuple[ConfigProblem, ...] = ()  # why a changed file was rejected


class DirectoryWatcher:
    """Holds the current directory and swaps in a changed file's contents when valid."""

    def __init__(
        self,
        directory: Directory,
        path: Path,
        *,
        min_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        loader: Loader = load_directory,
        background: bool = False,
        load_apart: Callable[[Path, Problems], tuple[Directory | None, bytes | None]] | None = None,
    ):
        self.directory = directory
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._loader = loader  # e.g. functools.partial(load_directory, categories=…)
        self._next_check = clock() + min_interval_s
        self._rejected: tuple[FileStamp, ...] | None = None  # stamps of the last bad version
        self._background = background
        self._loading: threading.Thread | None = None
        self._loaded: tuple[tuple[FileStamp, ...], Directory | None, Problems, bytes | None] | None = None
        self._load_apart = load_apart  # with `background`: (directory, its packed form)
        self.packed: bytes | None = None  # the directory in force, packed, when loaded apart

    def poll(self) -> ReloadOutcome | None:
        """Reload if due and changed; None when nothing was checked or nothing changed
        (in the background: also while the changed file is being read)."""
        if self._loading is not None:
            if self._loading.is_alive():
                return None
            self._loading, loaded, self._loaded = None, self._loaded, None
            if loaded is None:  # the thread died before it had a result: looked at again when due
                return None
            return self._outcome(*loaded)
        now = self._clock()
        if now < self._next_check:
            return None
        self._next_check = now + self.min_interval_s
        current = tuple(stamp(s.path) for s in self._watched())
        if current == self._watched() or current == self._rejected:
            return None
        if self._background:
            self._loading = threading.Thread(target=self._load_in_background, args=(current,), daemon=True,
                                             name="neo-auditd-directory-load")
            self._loading.start()
            return None
        return self.reload(current)

    def _load_in_background(self, seen: tuple[FileStamp, ...]) -> None:
        self._loaded = (seen, *self._load(apart=self._load_apart is not None))

    def reload(self, seen: tuple[FileStamp, ...] | None = None) -> ReloadOutcome:
        """Load now (for SIGHUP or a changed file); swap only if the new file is valid."""
        if seen is None:
            seen = tuple(stamp(s.path) for s in self._watched())
        return self._outcome(seen, *self._load())

    def _load(self, apart: bool = False) -> tuple[Directory | None, Problems, bytes | None]:
        """(the directory or None, its problems, its packed form when loaded apart)."""
        problems = Problems()
        packed = None
        try:
            if apart:
                fresh, packed = self._load_apart(self.path, problems)
            else:
                fresh = self._loader(self.path, problems)
        except Exception as exc:  # a loader bug is a rejected file, never the end of the daemon
            problems.items.append(ConfigProblem(Location(str(self.path), 0, 0), "",
                                                f"cannot load: {type(exc).__name__}: {exc}"))
            fresh = None
        return fresh, problems, packed

    def _outcome(self, seen: tuple[FileStamp, ...], fresh: Directory | None, problems: Problems,
                 packed: bytes | None) -> ReloadOutcome:
        if fresh is None or problems:
            # stamped before reading: an unchanged bad file is not re-read at every poll,
            # and a fix written during this read still counts as a change
            self._rejected = seen
            return ReloadOutcome(False, tuple(problems.shown))
        self.directory, self.packed = fresh, packed
        self._rejected = None
        return ReloadOutcome(True)

    def _watched(self) -> tuple[FileStamp, ...]:
        """The files the current directory was read from. A CSV file that only a rejected
        YAML names is not among them: its fix is seen once the YAML changes or on SIGHUP."""
        return self.directory.sources or (FileStamp(self.path, None, None, None, None),)
