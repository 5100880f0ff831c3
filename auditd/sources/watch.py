"""inotify (through watchdog) only wakes the tailer early; polling alone is always correct.

The callbacks run on watchdog's thread and do nothing but set events: all reading
happens in the tailer's own thread. A callback that raised would end watchdog's
dispatch thread and leave the daemon on polling without a word, so every callback is
wrapped. If inotify cannot start (no inotify, watch or instance limits reached), the
tailer keeps polling every ``poll_interval_s``.
"""

from __future__ import annotations

import logging
import os
import threading

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from auditd.sources.globs import PathMatcher

log = logging.getLogger(__name__)

# Not opened/closed: the tailer's own opens would wake it again and again.
_EVENTS = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent,
    DirCreatedEvent, DirMovedEvent, DirDeletedEvent,
]


class _WakeHandler(FileSystemEventHandler):
    def __init__(self, matcher: PathMatcher, wake: threading.Event, rescan: threading.Event):
        self._matcher = matcher
        self._wake = wake
        self._rescan = rescan

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._note(event)
        except Exception:  # noqa: BLE001 - see the module docstring
            log.exception("file event handler failed; polling covers it")

    def _note(self, event: FileSystemEvent) -> None:
        paths = [os.fsdecode(event.src_path), os.fsdecode(event.dest_path or b"")]
        if event.event_type != "modified":
            self._rescan.set()  # a name appeared, moved or went: the globs must be read again
            self._wake.set()
        elif any(p and self._matcher.matches(p) for p in paths):
            self._wake.set()


class ChangeWatcher:
    """Watches the directories of a source's globs; the constructor does no I/O."""

    def __init__(self, matcher: PathMatcher, wake: threading.Event, rescan: threading.Event):
        self._matcher = matcher
        self._handler = _WakeHandler(matcher, wake, rescan)
        self._observer: Observer | None = None
        self._watched: set[str] = set()

    def start(self) -> bool:
        """Start inotify; False (and a warning) if it is unavailable."""
        try:
            observer = Observer()
            observer.daemon = True
            observer.start()
        except Exception as exc:  # noqa: BLE001 - any failure here just means polling
            log.warning("inotify unavailable, polling only: %s", exc)
            return False
        self._observer = observer
        self.watch_new_directories()
        return True

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def watch_new_directories(self) -> None:
        """Watch directories that did not exist before (a log directory created later)."""
        if self._observer is None:
            return
        for directory, recursive in self._matcher.watch_directories():
            if directory in self._watched or not os.path.isdir(directory):
                continue
            try:
                self._observer.schedule(self._handler, directory, recursive=recursive, event_filter=_EVENTS)
            except OSError as exc:  # e.g. fs.inotify.max_user_watches reached
                log.warning("cannot watch %s, polling it: %s", directory, exc)
            self._watched.add(directory)

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
