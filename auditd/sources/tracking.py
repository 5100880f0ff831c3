"""The tailer's knowledge of each file: opened, tracked, shadowing a copy, or orphaned.

Kept apart from the tailer's loop so that the rules deciding "is this the same file, a
copy of it, or a new one" read in one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from auditd.sources.base import Checkpoint
from auditd.sources.identity import FileIdentity, bytes_before, digest, is_rotated_name

# A tail sample reaching this far past a shared first line tells files apart by
# content alone; shorter, and two files that start alike could still agree on it.
DISTINCT_SAMPLE_BYTES = 16


@dataclass(slots=True, eq=False)
class OpenFile:
    """A file found by a glob and opened, whose first line we have not matched yet."""

    fd: int
    path: str
    device: int
    inode: int
    fresh: bool = False  # its inode was just rewritten: it starts at 0, whatever it matches
    skip_to_end: bool = False  # found at the very first start with start_at: end
    may_shadow: bool = True  # False once it proved different from the file it resembled

    @property
    def place(self) -> tuple[int, int]:
        return self.device, self.inode


@dataclass(slots=True, eq=False)
class TrackedFile:
    """A file being read. `position` may run ahead of the committed checkpoint."""

    identity: FileIdentity
    head: bytes  # the first line as read, to notice a rewrite without hashing
    fd: int
    path: str
    position: int
    order: int  # older files are read first, so records come out roughly in time order
    size: int
    mtime_ns: int
    changed_at: float
    present: bool = True  # found at a glob path in the last scan
    tail_sample: bytes = b""  # the bytes just before `position`
    announce: bool = False  # its checkpoint must be committed even without records
    forget: list[str] = field(default_factory=list)  # to retire with its next batch
    retired: bool = False
    cutter: RecordCutter | None = None  # frames its records; set by the tailer

    @property
    def key(self) -> str:
        return self.identity.key

    @property
    def place(self) -> tuple[int, int]:
        return self.identity.device, self.identity.inode

    def unchanged(self) -> bool:
        """Whether the bytes we read are still there; a rewrite fails this whatever its size.

        The bytes before `position` catch a file truncated and refilled past our offset
        even when its new first line equals the old one.
        """
        return (
            os.pread(self.fd, len(self.head), 0) == self.head
            and bytes_before(self.fd, self.position, len(self.tail_sample)) == self.tail_sample
        )


@dataclass(slots=True, eq=False)
class Orphan:
    """A checkpoint without a live file: not found yet, gone, or its inode rewritten."""

    key: str
    identity: FileIdentity | None  # None for a key this version cannot read
    path: str
    offset: int
    since: float | None  # when it lost its file; None until the first poll
    tail_hash: str = ""  # digest of the bytes before `offset`; "" if the store did not keep it
    order: int | None = None
    inode_vacated: bool = False  # rewritten in place: its inode number is no proof any more

    @classmethod
    def of_checkpoint(cls, checkpoint: Checkpoint) -> Orphan:
        return cls(checkpoint.fingerprint, FileIdentity.parse(checkpoint.fingerprint),
                   checkpoint.path, checkpoint.offset, since=None, tail_hash=checkpoint.tail_hash)

    @classmethod
    def of_tracked(cls, tracked: TrackedFile, now: float, *, inode_vacated: bool) -> Orphan:
        return cls(tracked.key, tracked.identity, tracked.path, tracked.position, now,
                   digest(tracked.tail_sample), tracked.order, inode_vacated)

    def still_held_by(self, fd: int) -> bool:
        """Whether the file behind `fd` still holds, just before `offset`, what we read."""
        return not self.tail_hash or digest(bytes_before(fd, self.offset)) == self.tail_hash

    def could_be_continued_by(self, candidate: OpenFile, head: bytes, size: int) -> bool:
        """Whether `candidate` (another inode) holds this file's bytes up to `offset`.

        That is a copytruncate copy, or the same file after its device was renumbered
        at boot. Files sharing a first line (a csv header, a banner) make this
        ambiguous: the tail hash settles it once the bytes before the offset reach past
        that line. Without it (a store that does not keep it) only the same inode
        number or a rotated name of the old path (access.log → access.log.1) is
        accepted, so that a new file which merely starts alike is not partly skipped.
        """
        if self.identity is None or self.identity.head_hash != digest(head) or size < self.offset:
            return False
        if (self.identity.device, self.identity.inode) == candidate.place:
            return False  # the same inode is resumed as itself, never as its own copy
        if self.tail_hash:
            if not self.still_held_by(candidate.fd):
                return False
            if self.offset - len(head) >= DISTINCT_SAMPLE_BYTES:
                return True
        elif bytes_before(candidate.fd, self.offset, 1) not in (b"", b"\n"):
            return False  # a checkpoint follows a record's newline (but after a cut record)
        same_inode = candidate.inode == self.identity.inode and not self.inode_vacated
        return same_inode or is_rotated_name(candidate.path, self.path)

    def preference(self, candidate: OpenFile) -> tuple[bool, bool, int]:
        """Sort key among orphans a file could continue: proof first, then the same inode,
        then the earliest offset, since reading a record twice beats skipping it."""
        same_inode = self.identity is not None and self.identity.inode == candidate.inode
        return not self.tail_hash, not same_inode, self.offset


@dataclass(slots=True, eq=False)
class Shadow:
    """A file whose bytes so far equal the start of a tracked file: a copy being made.

    It is not read while its original lives (that would read every record twice); when
    the original is truncated or gone it continues where the original stopped, or it
    proves to be a different file that only starts alike.
    """

    opened: OpenFile
    identity: FileIdentity
    head: bytes
    original: TrackedFile
    verified: tuple[int, int] = (-1, -1)  # (own size, original's size) when last compared equal
