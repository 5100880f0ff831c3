"""A compressed rotation that continues a file the daemon had not finished reading.

logrotate's ``compress`` (without ``delaycompress``) renames access.log to access.log.1
and gzips it at once to access.log.1.gz, deleting access.log.1. A running daemon holds
the renamed file open and drains it through its descriptor. A daemon that was down (or
far behind and restarted) finds only the .gz: the file's checkpoint, now an orphan,
names the bytes it had read, and the lines after them live nowhere but in the .gz.

Such a gzip file is matched to the orphan by its first line and by the bytes just
before the orphan's offset (in the decompressed content: the checkpoint's tail hash,
or without one a rotated name and a record boundary, as for a copy), and read from
there, once. Its batches carry the orphan's key, so a crash resumes where they were
committed; the last one forgets the key. Any other compressed rotation holds lines
read before and is never read (globs.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from auditd.sources.base import Batch, Checkpoint, Framer
from auditd.sources.identity import SAMPLE_BYTES, digest, is_rotated_name
from auditd.sources.tracking import DISTINCT_SAMPLE_BYTES, Orphan
from auditd.sources.wholefile import (
    GZIP_MAGIC, Limits, Piece, StreamProblem, gunzip_blocks, stream_pieces, take_pieces,
)


class _Window:
    """The decompressed bytes from `start` to what the blocks gave so far; bytes before
    `keep_from` are let go as blocks come."""

    def __init__(self) -> None:
        self.start = 0
        self.buf = bytearray()
        self.keep_from = 0

    @property
    def end(self) -> int:
        return self.start + len(self.buf)

    def feed(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        for block in blocks:
            self.buf += block
            self.trim()
            yield block

    def trim(self) -> None:
        cut = min(len(self.buf), self.keep_from - self.start)
        if cut > 0:
            del self.buf[:cut]
            self.start += cut

    def before(self, position: int, length: int = SAMPLE_BYTES) -> bytes:
        begin = max(0, position - length)
        assert begin >= self.start and position <= self.end, "the window no longer holds those bytes"
        return bytes(self.buf[begin - self.start:position - self.start])


class CompressedContinuation:
    """A gzip file read from an orphan's offset to its end."""

    def __init__(self, fd: int, path: str, orphan: Orphan, window: _Window, rest: Iterator[bytes],
                 framer: Framer, limits: Limits):
        self.fd = fd
        self.path = path
        self.key = orphan.key
        self.position = orphan.offset
        self._window = window
        tail = bytes(window.buf[orphan.offset - window.start:])  # read past the offset already
        blocks = _chain(tail, rest)
        self._pieces = stream_pieces(blocks, framer, limits, start=orphan.offset)
        self._piece: Piece | None = None
        self.done = False

    @classmethod
    def match(cls, fd: int, path: str, orphans: Iterable[Orphan], framer: Framer, limits: Limits,
              fingerprint_bytes: int) -> tuple["CompressedContinuation", Orphan] | None:
        """The continuation of the orphan this gzip file continues, or None."""
        if os.pread(fd, 2, 0) != GZIP_MAGIC:
            return None
        window = _Window()
        blocks = window.feed(gunzip_blocks(fd, limits))
        try:
            while window.end < fingerprint_bytes and b"\n" not in window.buf:
                if next(blocks, None) is None:
                    break
            data = bytes(window.buf[:fingerprint_bytes])
            newline = data.find(b"\n")
            head = data[:newline + 1] if newline >= 0 else data if len(data) >= fingerprint_bytes else None
            if head is None:
                return None
            wanted = digest(head)
            candidates = sorted((o for o in orphans if o.identity is not None and o.identity.head_hash == wanted
                                 and o.offset >= len(head)), key=lambda o: (o.offset, not o.tail_hash))
            weak: Orphan | None = None  # continued by the bytes around its head alone
            for orphan in candidates:
                window.keep_from = orphan.offset - SAMPLE_BYTES
                window.trim()
                while window.end < orphan.offset and next(blocks, None) is not None:
                    pass
                if window.end < orphan.offset:
                    break  # shorter than this orphan's offset, and than every one after it
                if _continues(orphan, window, path, len(head)):
                    if orphan.tail_hash and orphan.offset - len(head) >= DISTINCT_SAMPLE_BYTES:
                        return cls(fd, path, orphan, window, blocks, framer, limits), orphan
                    # An orphan that had read no more than a shared first line (a CSV header)
                    # agrees with every rotation of its file: one that had read this one further
                    # is the better claim (else its lines are read twice, the weak one's lost).
                    weak = weak or orphan
            if weak is None:
                return None
            window = _Window()  # the stream again, from its start, up to the weak one's offset
            blocks = window.feed(gunzip_blocks(fd, limits))
            window.keep_from = weak.offset - SAMPLE_BYTES
            while window.end < weak.offset and next(blocks, None) is not None:
                pass
            if window.end < weak.offset:
                return None
            return cls(fd, path, weak, window, blocks, framer, limits), weak
        except StreamProblem:
            return None

    def read(self, source: str, budget: int) -> Batch:
        """The next records, at most `budget`; the last batch forgets the orphan's key."""
        taken = take_pieces(self._pieces, self._piece, self.position, budget)
        records, offsets, rejected, end = taken.records, taken.offsets, taken.rejected, taken.end
        self._piece, self.done = taken.held, taken.done
        self.position = end
        checkpoint = Checkpoint(source, self.key, self.path, end, tail_hash=digest(self._window.before(end)))
        self._window.keep_from = end - SAMPLE_BYTES
        self._window.trim()
        return Batch(source, self.path, self.key, records, offsets, checkpoint, rejected=rejected,
                     forget=[self.key] if self.done else [])

    def close(self) -> None:
        os.close(self.fd)


def _continues(orphan: Orphan, window: _Window, path: str, head_length: int) -> bool:
    """Whether the content holds what the orphan had read, as a copy must (tracking.Orphan)."""
    before = window.before(orphan.offset)
    plain_name = path[:-3]  # without ".gz"
    # the orphan's path: where its file was last seen, or this .gz when a crash cut its reading
    seen_at = orphan.path[:-3] if orphan.path.endswith(".gz") else orphan.path
    rotated = plain_name == seen_at or is_rotated_name(plain_name, seen_at)
    if orphan.tail_hash:
        if digest(before) != orphan.tail_hash:
            return False
        return orphan.offset - head_length >= DISTINCT_SAMPLE_BYTES or rotated
    return before[-1:] in (b"", b"\n") and rotated


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
