"""FileTailer: follow a source's files through rotation, truncation and restarts.

Nothing here is durable. Each Batch carries the checkpoint just past its last record;
the pipeline commits it with the batch's results, and after a crash a new tailer built
from the committed checkpoints resumes exactly there. In memory the read position may
run ahead of what is committed.

A file is known by the hash of its first line plus (device, inode) — the checkpoint key
(see identity.py). Each poll:

1. Every tracked file is checked through its open descriptor. If it shrank below our
   position, or its first line or the bytes just before our position changed (a
   truncation, even one refilled past our offset while we were frozen), the old file is
   retired to an *orphan* and its inode is read again from 0 as a new file.
2. The globs are read again (on a directory event, or every ``poll_interval_s``). A new
   inode is matched, in this order, to: its own checkpoint (a restart, or a rename back
   into view); an orphan whose bytes it continues (the copy of a copytruncate, resumed
   at the orphan's offset so lines written between our last read and the copy are
   kept); a tracked file whose start it copies (a copy still being made: shadowed, not
   read, until its original is truncated or gone); otherwise it is a new file, read
   from 0 (or from its end at the very first start with ``start_at: end``).
   A compressed rotation (access.log.1.gz) is read only when it continues an orphan:
   the file was compressed and deleted while the daemon was down, before it was read
   to its end (compressed.py).
3. Files are read in age order. A file gone from the globs (renamed away or deleted) is
   drained through its descriptor, and retired once quiet for ``drain_grace_s``.
4. Orphans are forgotten after ``forget_after_s``; their keys ride on the next batch.

Only regular files that really lie in the source's directories are opened, without
following a link or blocking on a FIFO, and never the daemon's own files (see guard.py);
what is refused is logged once with the reason and reported (``SourceReport``, carried
by a batch) with the globs that match nothing. Gzip files, and every file of a
whole-document format, are read once each when complete (wholefile.py), not tailed.

Two files with identical first lines (a csv header, a banner) are told apart by inode,
and a generation number keeps apart the old and new contents of one inode rewritten
with the same first line. Whether a file still holds what we read, or is a copy of it,
is decided by the bytes just before the offset, kept in memory and as the checkpoint's
``tail_hash`` (see tracking.Orphan). What remains: a file rewritten with exactly the
bytes we had read (say, a header-only file truncated and given its header again) looks
untouched; and if the store does not keep ``tail_hash``, a restarted tailer cannot see
that a file was refilled past its old offset with an identical first line while the
daemon was down (nor a file deleted and re-created so, in the same inode number), and
recognises a copy only under a rotated name of the old path (access.log →
access.log.1) or the same inode number.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

from auditd.sources.base import NO_FILE, Batch, Checkpoint, Framer, Rejected, SourceReport
from auditd.sources.compressed import CompressedContinuation
from auditd.sources.framing import RecordCutter
from auditd.sources.globs import PathMatcher
from auditd.sources.guard import Refusal, classify, open_checked
from auditd.sources.identity import (
    FileIdentity, bytes_before, digest, is_compressed, is_prefix_copy, is_rotated_name, last_record_end, read_head,
)
from auditd.sources.replay import ReplaySource  # noqa: F401 - `neo-auditd replay` imports it from here
from auditd.sources.settings import FileSourceSettings
from auditd.sources.tracking import OpenFile, Orphan, Shadow, TrackedFile
from auditd.sources.watch import ChangeWatcher
from auditd.sources.wholefile import Limits, WholeFileReader, is_whole_key

log = logging.getLogger(__name__)

Place = tuple[int, int]  # (device, inode)


class FileTailer:
    def __init__(self, settings: FileSourceSettings, framer: Framer, checkpoints: dict[str, Checkpoint], *,
                 first_start: bool, clock: Callable[[], float] = time.monotonic,
                 wake: threading.Event | None = None):
        self.settings = settings
        self._framer = framer
        self._clock = clock
        self._matcher = PathMatcher(settings.paths)
        self._wake = wake if wake is not None else threading.Event()
        self._rescan = threading.Event()
        self._watcher: ChangeWatcher | None = None
        self._skip_to_end = first_start and settings.start_at == "end"
        self._next_scan_at = float("-inf")
        self._sequence = itertools.count()
        self._opened: dict[Place, OpenFile] = {}
        self._tracked: dict[Place, TrackedFile] = {}
        self._shadows: dict[Place, Shadow] = {}
        self._orphans = {key: Orphan.of_checkpoint(cp) for key, cp in checkpoints.items() if not is_whole_key(key)}
        self._continuations: dict[Place, CompressedContinuation] = {}  # gzip files continuing an orphan
        self._compressed_seen: dict[Place, tuple[int, int]] = {}  # (size, mtime) of those that continue none
        self._compressed_due = False
        self._expired: list[str] = []
        self._whole_format = bool(getattr(framer, "whole_file", False))
        self._limits = limits = Limits(settings.read_chunk_bytes, settings.max_record_bytes,
                                       settings.max_document_bytes, settings.max_decompressed_bytes)
        self._whole = WholeFileReader(
            settings.name, framer, limits, {k: cp for k, cp in checkpoints.items() if is_whole_key(k)},
            quiet_s=settings.drain_grace_s, forget_after_s=settings.forget_after_s, clock=clock)
        self._refused: dict[str, Refusal] = {}
        self._reported: SourceReport | None = None
        self._report_due: SourceReport | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start inotify; without it (or with use_inotify: false) the tailer polls."""
        if self.settings.use_inotify and self._watcher is None:
            watcher = ChangeWatcher(self._matcher, self._wake, self._rescan)
            if watcher.start():
                self._watcher = watcher

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        fds = [f.fd for f in self._tracked.values()] + [o.fd for o in self._opened.values()]
        fds += [s.opened.fd for s in self._shadows.values()]
        fds += [c.fd for c in self._continuations.values()]
        self._continuations.clear()
        self._whole.close()
        self._tracked.clear()
        self._opened.clear()
        self._shadows.clear()
        for fd in fds:
            os.close(fd)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a file event or the poll interval; True if an event woke us."""
        interval = self.settings.poll_interval_s
        woken = self._wake.wait(interval if timeout is None else min(timeout, interval))
        self._wake.clear()
        return woken

    def lag_bytes(self) -> dict[str, int]:
        """Bytes written but not yet read, per file path (as of the last poll)."""
        lag: dict[str, int] = {}
        for tracked in self._tracked.values():  # a drained old file may share its last path
            lag[tracked.path] = lag.get(tracked.path, 0) + max(0, tracked.size - tracked.position)
        for path, size in self._whole.lag_bytes().items():
            lag[path] = lag.get(path, 0) + size
        return lag

    def report(self) -> SourceReport | None:
        """What the last scan found (None before the first one)."""
        return self._report_due or self._reported

    # -- one round -----------------------------------------------------------------------------
    def poll(self, max_records: int = 10_000) -> list[Batch]:
        """Read what is new in every file: at most `max_records` records, one batch per file."""
        now = self._clock()
        self._check_watcher()
        self._check_tracked(now)
        if self._rescan.is_set() or now >= self._next_scan_at:
            self._scan(now)
        self._settle_shadows(now)
        self._identify_opened(now)
        if self._compressed_due:
            self._compressed_due = False
            self._find_continuations()
        batches = self._read_continuations(max_records)
        batches += self._read_files(max_records - sum(len(b) for b in batches), now)
        batches += self._whole.poll(max_records - sum(len(b) for b in batches), now)
        self._expire_orphans(now)
        self._expired += self._whole.take_forget()
        if batches and self._expired:
            batches[0].forget.extend(self._not_in_use(self._expired))
            self._expired.clear()
        if self._report_due is not None:
            if not batches:  # a batch that only carries the report: it names no file
                name = self.settings.name
                batches.append(Batch(name, "", NO_FILE, [], [], Checkpoint(name, NO_FILE, "", 0)))
            batches[0].report, self._reported, self._report_due = self._report_due, self._report_due, None
        return batches

    def _check_watcher(self) -> None:
        if self._watcher is not None and not self._watcher.alive():
            log.warning("inotify watcher stopped; %s continues by polling", self.settings.name)
            self._watcher.stop()
            self._watcher = None

    # -- step 1: tracked files, through their descriptors ------------------------------------------
    def _check_tracked(self, now: float) -> None:
        for tracked in list(self._tracked.values()):
            try:
                st = os.fstat(tracked.fd)
                if (st.st_size, st.st_mtime_ns) == (tracked.size, tracked.mtime_ns):
                    continue
                rewritten = st.st_size < tracked.position or not tracked.unchanged()
            except OSError as exc:
                log.warning("%s: cannot read %s any more: %s", self.settings.name, tracked.path, exc)
                self._retire(tracked, now)
                continue
            tracked.changed_at = now
            if rewritten:
                self._restart_inode(tracked, now)
            else:
                tracked.size, tracked.mtime_ns = st.st_size, st.st_mtime_ns

    def _restart_inode(self, tracked: TrackedFile, now: float) -> None:
        """The inode now holds other bytes: the old file becomes an orphan (its copy, if
        any, will continue it) and the inode is read from 0 as a new file."""
        log.info("%s: %s was truncated or rewritten; reading it from the start",
                 self.settings.name, tracked.path)
        self._retire(tracked, now, inode_vacated=True, close=False)
        device, inode = tracked.place
        self._opened[tracked.place] = OpenFile(tracked.fd, tracked.path, device, inode, fresh=True)
        self._rescan.set()  # a copytruncate copy is already on disk: find it in this poll

    def _retire(self, tracked: TrackedFile, now: float, *, inode_vacated: bool = False,
                close: bool = True) -> None:
        tracked.retired = True
        del self._tracked[tracked.place]
        if close:
            os.close(tracked.fd)
        # Its tail hash will tell its own bytes from those of a new file that is handed
        # the same inode number (ext4 does so at once) and starts with the same line.
        self._orphans[tracked.key] = Orphan.of_tracked(tracked, now, inode_vacated=inode_vacated)

    # -- step 2: the globs -----------------------------------------------------------------------
    def _scan(self, now: float) -> None:
        self._rescan.clear()
        self._next_scan_at = now + self.settings.poll_interval_s
        if self._watcher is not None:
            self._watcher.watch_new_directories()
        seen: set[Place] = set()
        refused: dict[str, Refusal] = {}
        by_pattern = self._matcher.scan_patterns()
        allowed = self._allowed_directories()
        protected_places = self.settings.protected.places()
        for path in sorted({path for paths in by_pattern.values() for path in paths}):
            found = classify(path)
            if found is None:
                continue  # gone between the glob and the look, or a directory
            if isinstance(found, Refusal):
                refused[path] = found  # a FIFO, socket, device: never opened
                continue
            lst, st = found
            place = (st.st_dev, st.st_ino)
            if self._is_whole(path) and self._whole.knows(path, st):
                seen.add(place)
                continue
            known = self._tracked.get(place) or self._opened.get(place) or self._shadows.get(place)
            if known is not None:
                (known.opened if isinstance(known, Shadow) else known).path = path
                seen.add(place)
                continue
            refusal = self._open(path, lst, place, allowed, protected_places, now)
            if refusal is not None:
                refused[path] = refusal
            elif place in self._opened or self._whole.knows(path, st):
                seen.add(place)
        self._forget_unseen(seen)
        self._compressed_due = True
        self._whole.end_scan(seen, now)
        self._skip_to_end = False  # only files found by the first scan may start at their end
        self._note_scan(by_pattern, refused, len(seen))

    def _allowed_directories(self) -> tuple[str, ...]:
        """Where a file this source reads must really lie: its globs' own directories, and
        allow_dirs; symlink-free, as the descriptor check compares them."""
        directories = [*self._matcher.own_directories(), *map(os.fspath, self.settings.allow_dirs)]
        return tuple(sorted({os.path.realpath(d) for d in directories}))

    def _is_whole(self, path: str) -> bool:
        return self._whole_format or is_compressed(path)

    def _open(self, path: str, lst: os.stat_result, place: Place, allowed: tuple[str, ...],
              protected_places: set[Place], now: float) -> Refusal | None:
        """Open a new candidate through the guard; a Refusal says why it is not read."""
        opened = open_checked(path, lst, allowed, self.settings.protected, protected_places)
        if isinstance(opened, Refusal):
            if opened.reason == "replaced":
                self._rescan.set()
            return opened
        if (opened.st.st_dev, opened.st.st_ino) != place:  # replaced between the look and the open
            os.close(opened.fd)
            self._rescan.set()
            return None
        if self._is_whole(path):
            self._whole.offer(opened.fd, path, opened.st, now, skip=self._skip_to_end)
        else:
            self._opened[place] = OpenFile(opened.fd, path, *place, skip_to_end=self._skip_to_end)
        return None

    def _note_scan(self, by_pattern: dict[str, list[str]], refused: dict[str, Refusal], files: int) -> None:
        """Log what is newly refused or unmatched, once; report the scan when it changed."""
        name = self.settings.name
        for path, refusal in refused.items():
            if self._refused.get(path) != refusal:
                log.warning("%s: not reading %s: %s", name, path, refusal.detail)
        self._refused = refused
        unmatched = tuple(pattern for pattern, paths in by_pattern.items() if not paths)
        report = SourceReport(files, unmatched, tuple((r.path, r.reason, r.detail) for r in refused.values()))
        previous = self.report()
        for pattern in unmatched:
            if previous is None or pattern not in previous.unmatched:
                log.warning("%s: %s matches no file", name, pattern)
        if report != previous:
            self._report_due = report

    def _forget_unseen(self, seen: set[Place]) -> None:
        """Tracked files out of view keep draining; opened and shadow files are let go."""
        for place, tracked in self._tracked.items():
            tracked.present = place in seen
        for place in [p for p in self._opened if p not in seen]:
            os.close(self._opened.pop(place).fd)
        for place in [p for p in self._shadows if p not in seen]:
            os.close(self._shadows.pop(place).opened.fd)

    def _identify_opened(self, now: float) -> None:
        ready: list[tuple[OpenFile, bytes, os.stat_result]] = []
        for opened in list(self._opened.values()):
            try:
                head = read_head(opened.fd, self.settings.fingerprint_bytes)
                st = os.fstat(opened.fd)
            except OSError:
                os.close(self._opened.pop(opened.place).fd)
                continue
            if head is None:
                opened.skip_to_end = False  # its first line came after we started: all of it is new
                continue
            ready.append((opened, head, st))
        # Files resuming their own checkpoint first, so that no copy can take it from them;
        # then oldest first, which is the order their records were written.
        ready.sort(key=lambda r: (not self._resumes_own(r[0], r[1]), r[2].st_mtime_ns, r[0].path))
        for opened, head, st in ready:
            del self._opened[opened.place]
            self._bind(opened, head, st, now)

    def _resumes_own(self, opened: OpenFile, head: bytes) -> bool:
        return opened.fresh or bool(self._own_orphans(digest(head), opened.place))

    def _own_orphans(self, head_hash: str, place: Place) -> list[Orphan]:
        """Checkpoints of this very inode with this first line (any generation)."""
        wanted = (head_hash, *place)
        return [o for o in self._orphans.values() if o.identity and o.identity.content_and_place == wanted]

    def _bind(self, opened: OpenFile, head: bytes, st: os.stat_result, now: float) -> None:
        head_hash = digest(head)
        own = self._own_orphans(head_hash, opened.place)
        if own and not opened.fresh:
            resumable = [o for o in own
                         if not o.inode_vacated and st.st_size >= o.offset and o.still_held_by(opened.fd)]
            if resumable:
                mine = max(resumable, key=lambda o: o.identity.generation)
                del self._orphans[mine.key]
                self._track(opened, mine.identity, head, st, now, position=mine.offset, order=mine.order)
                return
        # Shrunk or rewritten in place: the old bytes live on only in a copy, if anywhere.
        for orphan in own:
            orphan.inode_vacated = True
        generation = 1 + max((o.identity.generation for o in own), default=-1)
        identity = FileIdentity(head_hash, *opened.place, generation)
        if not own and not opened.fresh and self._continue_or_shadow(opened, identity, head, st, now):
            return
        position = last_record_end(opened.fd, st.st_size) if opened.skip_to_end else 0
        self._track(opened, identity, head, st, now, position=position, announce=opened.skip_to_end)

    def _continue_or_shadow(self, opened: OpenFile, identity: FileIdentity, head: bytes,
                            st: os.stat_result, now: float) -> bool:
        """A copy of a file we knew: continue it where that file stopped, or, while the
        original is still being read, shadow it. False if it is neither.

        A copytruncate may truncate the original after step 1 looked at it, in the very
        moment its copy is found: the original then fails the copy test only because it
        was emptied. It is retired to an orphan here, as step 1 would have done, and the
        copy continues that orphan; concluding "a new file" would read it again from 0.
        """
        while True:
            source = self._copy_source(opened, head, st)
            if source is not None:
                del self._orphans[source.key]
                self._track(opened, identity, head, st, now, position=source.offset, order=source.order,
                            announce=True, forget=[source.key])
                return True
            if not opened.may_shadow:
                return False
            original, rewritten = self._original_of(opened, identity, head, st)
            if original is not None:
                verified = (st.st_size, os.fstat(original.fd).st_size)
                self._shadows[opened.place] = Shadow(opened, identity, head, original, verified)
                return True
            if not rewritten:
                return False
            for tracked in rewritten:  # each round retires at least one: the loop ends
                self._restart_inode(tracked, now)
            st = os.fstat(opened.fd)  # the copy may have grown since it was first looked at

    def _copy_source(self, opened: OpenFile, head: bytes, st: os.stat_result) -> Orphan | None:
        candidates = [o for o in self._orphans.values()
                      if o.could_be_continued_by(opened, head, st.st_size) and not self._superseded(o)]
        return min(candidates, key=lambda o: o.preference(opened), default=None)

    def _superseded(self, orphan: Orphan) -> bool:
        """Without a tail hash to prove a copy, a checkpoint of an inode that has since
        been rewritten (a newer generation exists) is old history: a copy of it was
        dealt with then, and a rotated file found now is more likely another one."""
        if orphan.tail_hash or orphan.identity is None:
            return False
        same, generation = orphan.identity.content_and_place, orphan.identity.generation
        others = itertools.chain(self._orphans.values(), self._tracked.values())
        return any(o.identity is not None and o.identity.content_and_place == same
                   and o.identity.generation > generation for o in others)

    def _original_of(self, opened: OpenFile, identity: FileIdentity, head: bytes,
                     st: os.stat_result) -> tuple[TrackedFile | None, list[TrackedFile]]:
        """A tracked file this one is a copy in progress of: same start, not longer.
        With None, the tracked files sharing its first line that failed the test because
        they were truncated or rewritten since step 1 (to retire, then try again).

        A file holding nothing but its first line is a copy only under a rotated name
        of the original (access.log → access.log.1): otherwise, with a csv header or a
        banner, it is the usual brand-new file, and holding it back would delay it.
        """
        only_first_line = st.st_size <= len(head)
        rewritten: list[TrackedFile] = []
        for tracked in self._tracked.values():
            if tracked.identity.head_hash != identity.head_hash or tracked.place == opened.place:
                continue
            if only_first_line and not is_rotated_name(opened.path, tracked.path):
                continue
            original_size = os.fstat(tracked.fd).st_size
            if st.st_size <= original_size and is_prefix_copy(opened.fd, tracked.fd, st.st_size):
                return tracked, []
            # Looked at after the failed test: a truncation before the test shows here.
            if self._rewritten(tracked):
                rewritten.append(tracked)
        return None, rewritten

    @staticmethod
    def _rewritten(tracked: TrackedFile) -> bool:
        """Step 1's test, now: the file no longer holds the bytes we read from it."""
        try:
            return os.fstat(tracked.fd).st_size < tracked.position or not tracked.unchanged()
        except OSError:
            return False  # step 1 deals with a file it cannot read any more

    def _track(self, opened: OpenFile, identity: FileIdentity, head: bytes, st: os.stat_result,
               now: float, *, position: int, order: int | None = None, announce: bool = False,
               forget: list[str] | None = None) -> None:
        tracked = TrackedFile(
            identity, head, opened.fd, opened.path, position,
            order=next(self._sequence) if order is None else order,
            size=st.st_size, mtime_ns=st.st_mtime_ns, changed_at=now,
            tail_sample=bytes_before(opened.fd, position), announce=announce, forget=forget or [],
            cutter=RecordCutter(self._framer, self.settings.max_record_bytes),
        )
        self._tracked[opened.place] = tracked

    def _settle_shadows(self, now: float) -> None:
        for place, shadow in list(self._shadows.items()):
            try:
                size = os.fstat(shadow.opened.fd).st_size
                if shadow.original.retired:
                    self._end_shadow(shadow, size, now)
                    continue
                sizes = (size, os.fstat(shadow.original.fd).st_size)
                if sizes == shadow.verified or sizes[1] < shadow.original.position:
                    continue  # unchanged, or the original was just truncated: next poll retires it
                # a copy never outgrows its original (a truncated original is retired above)
                if size <= sizes[1] and is_prefix_copy(shadow.opened.fd, shadow.original.fd, size):
                    shadow.verified = sizes
                    continue
                if self._rewritten(shadow.original):
                    continue  # truncated (and refilled) since step 1: the next poll retires it
            except OSError:
                os.close(self._shadows.pop(place).opened.fd)
                continue
            shadow.opened.may_shadow = False  # it diverged: a different file that starts alike
            self._opened[place] = self._shadows.pop(place).opened

    def _end_shadow(self, shadow: Shadow, size: int, now: float) -> None:
        """Its original was truncated or is gone: the copy continues it, or is new."""
        del self._shadows[shadow.opened.place]
        orphan = self._orphans.get(shadow.original.key)
        if orphan is not None and shadow.verified[0] == size and size <= orphan.offset:
            # A finished copy of bytes we had already read through the original. The
            # orphan stays: another, longer copy may be the one that continues it.
            st = os.fstat(shadow.opened.fd)
            self._track(shadow.opened, shadow.identity, shadow.head, st, now,
                        position=size, order=orphan.order, announce=True)
            return
        shadow.opened.may_shadow = False
        self._opened[shadow.opened.place] = shadow.opened  # matched against the orphan as a copy

    def _find_continuations(self) -> None:
        """Compressed rotations that continue an orphan (compressed.py); each other one is
        looked at once (again only if it changes)."""
        paths = self._matcher.compressed_rotations
        if self._whole_format or not paths:
            self._compressed_seen.clear()
            return
        orphans = [o for o in self._orphans.values() if o.identity is not None]
        allowed, protected_places = None, None
        present: set[Place] = set()
        for path in paths:
            found = classify(path)
            if found is None or isinstance(found, Refusal):
                continue
            lst, st = found
            place = (st.st_dev, st.st_ino)
            present.add(place)
            if place in self._continuations or self._compressed_seen.get(place) == (st.st_size, st.st_mtime_ns):
                continue
            if not orphans:
                self._compressed_seen[place] = (st.st_size, st.st_mtime_ns)
                continue
            if time.time() - st.st_mtime_ns / 1e9 < self.settings.drain_grace_s:
                continue  # maybe still being compressed: looked at when quiet
            if allowed is None:
                allowed, protected_places = self._allowed_directories(), self.settings.protected.places()
            opened = open_checked(path, lst, allowed, self.settings.protected, protected_places)
            if isinstance(opened, Refusal) or (opened.st.st_dev, opened.st.st_ino) != place:
                if not isinstance(opened, Refusal):
                    os.close(opened.fd)
                continue
            matched = CompressedContinuation.match(opened.fd, path, orphans, self._framer, self._limits,
                                                   self.settings.fingerprint_bytes)
            if matched is None:
                os.close(opened.fd)
                self._compressed_seen[place] = (opened.st.st_size, opened.st.st_mtime_ns)
                continue
            continuation, orphan = matched
            del self._orphans[orphan.key]
            orphans.remove(orphan)
            self._continuations[place] = continuation
            log.info("%s: %s continues %s, compressed before it was read to its end; reading it from "
                     "offset %d", self.settings.name, path, orphan.path, orphan.offset)
        for place in [p for p in self._compressed_seen if p not in present]:
            del self._compressed_seen[place]

    def _read_continuations(self, max_records: int) -> list[Batch]:
        batches: list[Batch] = []
        budget = max_records
        for place, continuation in list(self._continuations.items()):
            if budget <= 0:
                break
            try:
                batch = continuation.read(self.settings.name, budget)
            except OSError as exc:
                log.warning("%s: reading %s failed: %s", self.settings.name, continuation.path, exc)
                continue
            batches.append(batch)
            budget -= len(batch.records)
            if continuation.done:
                del self._continuations[place]
                st = os.fstat(continuation.fd)
                continuation.close()
                self._compressed_seen[place] = (st.st_size, st.st_mtime_ns)  # read: never again
        return batches

    # -- step 3: reading ---------------------------------------------------------------------------
    def _read_files(self, max_records: int, now: float) -> list[Batch]:
        batches: list[Batch] = []
        budget = max_records
        for tracked in sorted(self._tracked.values(), key=lambda f: f.order):
            if budget <= 0:
                break
            try:
                batch = self._read_file(tracked, budget, now)
            except OSError as exc:
                log.warning("%s: reading %s failed: %s", self.settings.name, tracked.path, exc)
                continue
            if batch is not None:
                batches.append(batch)
                budget -= len(batch.records)
        return batches

    def _read_file(self, tracked: TrackedFile, budget: int, now: float) -> Batch | None:
        records, offsets, position, rejected = self._read_records(tracked, budget)
        if (records or rejected) and not tracked.unchanged():  # rewritten while we read: not the bytes we know
            self._restart_inode(tracked, now)
            return None
        self._advance(tracked, position)
        if self._drained_and_gone(tracked, len(records) < budget, now):
            tail = self._unterminated_tail(tracked)
            if tail:  # the writer will never finish it: hand it on rather than lose it
                if not tracked.cutter.skipping:
                    records.append(tail)
                    offsets.append(tracked.position)
                self._advance(tracked, tracked.position + len(tail))
            batch = self._batch(tracked, records, offsets, rejected)
            self._retire(tracked, now)
            return batch
        if not records and not rejected and not tracked.announce:
            return None
        return self._batch(tracked, records, offsets, rejected)

    def _read_records(self, tracked: TrackedFile, budget: int) -> tuple[list[bytes], list[int], int, list[Rejected]]:
        """Complete records from `position` on, at most `budget` of them; the position past
        them; and the rejection of a record over max_record_bytes, if one starts there."""
        records: list[bytes] = []
        offsets: list[int] = []
        rejected: list[Rejected] = []
        position = tracked.position
        chunk = self.settings.read_chunk_bytes
        want = chunk
        while len(records) < budget and (position < tracked.size or not tracked.present):
            data = os.pread(tracked.fd, want, position)
            if not data:
                break
            found, starts, consumed, too_long = tracked.cutter.split(data, position)
            if consumed == 0:
                if len(data) < want:
                    break  # an unfinished record at the end: wait for the rest
                want = min(want * 2, self.settings.max_record_bytes)
                continue  # a record longer than a chunk: read more of it at once
            if too_long is not None:  # (a read is never longer than the limit: no records came before it)
                log.warning("%s: %s: the record at %d is over max_record_bytes; quarantined once and "
                            "skipped to its end", self.settings.name, tracked.path, too_long.offset)
                rejected.append(too_long)
            room = budget - len(records)
            if len(found) > room:
                consumed = starts[room] - position
                del found[room:], starts[room:]
            records += found
            offsets += starts
            position += consumed
            if len(data) < want:
                break  # that read reached the end of the file
            want = chunk
        return records, offsets, position, rejected

    def _advance(self, tracked: TrackedFile, position: int) -> None:
        if position != tracked.position:
            tracked.position = position
            tracked.size = max(tracked.size, position)
            tracked.tail_sample = bytes_before(tracked.fd, position)

    def _drained_and_gone(self, tracked: TrackedFile, read_to_end: bool, now: float) -> bool:
        return (not tracked.present and read_to_end
                and now - tracked.changed_at >= self.settings.drain_grace_s)

    def _unterminated_tail(self, tracked: TrackedFile) -> bytes:
        tail = os.pread(tracked.fd, self.settings.max_record_bytes, tracked.position)
        return tail[:-1] if tail.endswith(b"\r") else tail

    def _batch(self, tracked: TrackedFile, records: list[bytes], offsets: list[int],
               rejected: list[Rejected]) -> Batch:
        name = self.settings.name
        checkpoint = Checkpoint(name, tracked.key, tracked.path, tracked.position,
                                tail_hash=digest(tracked.tail_sample))
        forget = self._not_in_use(tracked.forget)
        tracked.announce, tracked.forget = False, []
        return Batch(name, tracked.path, tracked.key, records, offsets, checkpoint, forget=forget, rejected=rejected)

    # -- step 4: forgetting --------------------------------------------------------------------------
    def _expire_orphans(self, now: float) -> None:
        for key, orphan in list(self._orphans.items()):
            if orphan.since is None:
                orphan.since = now  # a checkpoint nobody claimed: its clock starts now
            elif now - orphan.since >= self.settings.forget_after_s:
                del self._orphans[key]
                self._expired.append(key)

    def _not_in_use(self, keys: list[str]) -> list[str]:
        """Never drop the checkpoint of a file being read, whatever asked for it."""
        in_use = {tracked.key for tracked in self._tracked.values()}
        return [key for key in keys if key not in in_use]
