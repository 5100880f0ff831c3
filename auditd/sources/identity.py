"""What makes a log file the same file: its first line, and where it lives on disk.

The content identity is a hash of the file's first line (up to ``fingerprint_bytes``):
it survives rename and copy, and changes when a file is truncated and rewritten. The
(device, inode) pair is kept alongside: it tells apart files that share a first line,
and matching by it is a dictionary lookup. The checkpoint key holds all three, and a
generation when one inode was rewritten behind the same first line:
``<hash>@<device>:<inode>[#<generation>]``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

# logrotate's names for an old file: access.log.1, access.log.2, access.log-20261102, ...
ROTATED_SUFFIX = re.compile(r"(?:\.\d{1,6}|-\d{8}(?:[-_]?\d{2,6})?)+")
_TRAILING_ROTATED_SUFFIX = re.compile(rf"{ROTATED_SUFFIX.pattern}$")
# Compressed rotations are not log text; reading them would only fill the quarantine.
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".z")
SAMPLE_BYTES = 256  # how much of the bytes before a position is kept to recognise a copy


@dataclass(frozen=True, slots=True)
class FileIdentity:
    head_hash: str
    device: int
    inode: int
    # Bumped when an inode is rewritten with the same first line, so the new file's
    # checkpoint never overwrites the old one that a copy of the old bytes still needs.
    generation: int = 0

    @property
    def key(self) -> str:
        base = f"{self.head_hash}@{self.device}:{self.inode}"
        return f"{base}#{self.generation}" if self.generation else base

    @property
    def content_and_place(self) -> tuple[str, int, int]:
        return self.head_hash, self.device, self.inode

    @classmethod
    def parse(cls, key: str) -> FileIdentity | None:
        """The identity in a checkpoint key, or None for a key this version did not write."""
        head_hash, _, place = key.rpartition("@")
        place, _, generation = place.partition("#")
        device, _, inode = place.partition(":")
        numbers = (device, inode, generation or "0")
        if not head_hash or not all(n.isdigit() for n in numbers):
            return None
        return cls(head_hash, int(device), int(inode), int(generation or 0))


def digest(data: bytes) -> str:
    """The hash used for first lines and tail samples (blake2b: fast, and collisions
    do not happen by chance)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_head(fd: int, limit: int) -> bytes | None:
    """The first line with its newline, or the first `limit` bytes of a longer one.

    None while the first line is unfinished and shorter than `limit`: hashing half a
    line would give the file an identity it loses as soon as the line is finished.
    """
    data = os.pread(fd, limit, 0)
    newline = data.find(b"\n")
    if newline >= 0:
        return data[: newline + 1]
    return data if len(data) >= limit else None


def bytes_before(fd: int, position: int, length: int = SAMPLE_BYTES) -> bytes:
    """The tail sample: what a file holds just before `position`."""
    start = max(0, position - length)
    return os.pread(fd, position - start, start)


def same_bytes(fd_a: int, fd_b: int, start: int, length: int) -> bool:
    return os.pread(fd_a, length, start) == os.pread(fd_b, length, start)


def is_prefix_copy(copy_fd: int, original_fd: int, common: int, window: int = 4096) -> bool:
    """Whether the first `common` bytes of two files look equal (both ends compared).

    Comparing the first and last few KiB is enough to tell a copy from a different file
    that merely starts with the same line, without reading gigabytes.
    """
    head = min(common, window)
    tail_start = max(head, common - window)
    return same_bytes(copy_fd, original_fd, 0, head) and same_bytes(
        copy_fd, original_fd, tail_start, common - tail_start
    )


def is_rotated_name(path: str, original: str) -> bool:
    """access.log.1 or access.log-20261102 is a rotated name of access.log."""
    return path.startswith(original) and ROTATED_SUFFIX.fullmatch(path[len(original):]) is not None


def strip_rotated_suffix(path: str) -> str | None:
    """access.log.1 → access.log; None if the path has no rotated suffix."""
    match = _TRAILING_ROTATED_SUFFIX.search(path)
    return path[: match.start()] if match else None


def is_compressed(path: str) -> bool:
    return path.lower().endswith(COMPRESSED_SUFFIXES)


def last_record_end(fd: int, size: int, window: int = 64 * 1024, limit: int = 16 * 1024 * 1024) -> int:
    """Just past the last newline before `size`, for starting a file at its end.

    Starting exactly at `size` could land inside a line still being written, and the
    next read would yield half a record.
    """
    end = size
    while end > 0 and size - end < limit:
        start = max(0, end - window)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0 if end == 0 else size
