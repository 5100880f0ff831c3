"""Files read once, whole, when complete: gzip files, and whole-document formats.

A gzip file cannot be tailed like text (its last bytes are a checksum, written last),
and a CloudTrail file is one JSON document that means nothing until its last byte. So
such a file is read once, when it is complete: its size and time have not changed for
``drain_grace_s`` (AWS and ``aws s3 sync`` write a file and never touch it again).

Its identity is the hash of all its bytes (compressed, as on disk), so a file renamed,
copied or synced again is never read twice. While it is read, its checkpoint holds the
position (in the decompressed content) past the records committed, so a crash resumes
there; once read, the checkpoint says ``done`` and the file is only remembered, until
it has been gone for ``forget_after_s``.

Nothing in a file can exhaust memory or stop the source: a gzip stream is inflated a
chunk at a time, and inflating past ``max_decompressed_bytes`` (a gzip bomb) stops
there; a document is held whole only up to ``max_document_bytes``; a truncated or
corrupt stream, a broken document, are rejected with the reason (the pipeline
quarantines them) and every complete record before them is kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from auditd.sources.base import Batch, Checkpoint, Framer, Rejected
from auditd.sources.framing import SAMPLE_BYTES, RecordCutter

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
DONE = "done"  # the cursor of a whole file's checkpoint once every record is committed
KEY_SUFFIX = "@whole"  # whole files' checkpoint keys: "<hash of the file>@whole"
HASH_CHUNK = 1024 * 1024


def is_whole_key(key: str) -> bool:
    return key.endswith(KEY_SUFFIX)


@dataclass(frozen=True, slots=True)
class Limits:
    chunk_bytes: int
    max_record_bytes: int
    max_document_bytes: int
    max_decompressed_bytes: int


@dataclass(slots=True)
class Piece:
    """Records cut from a whole file, and the position just past them."""

    records: list[bytes]
    offsets: list[int]
    end: int  # in the decompressed content: where the records after these start
    rejected: list[Rejected] = field(default_factory=list)


class StreamProblem(Exception):
    """The file's bytes stop making sense: what was expected, what was found."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def content_key(fd: int, size: int) -> str:
    """The identity of a whole file: the hash of its bytes, read through its descriptor."""
    h = hashlib.blake2b(digest_size=16)
    position = 0
    while position < size:
        data = os.pread(fd, min(HASH_CHUNK, size - position), position)
        if not data:
            break
        h.update(data)
        position += len(data)
    return h.hexdigest() + KEY_SUFFIX


def is_gzip(fd: int) -> bool:
    return os.pread(fd, 2, 0) == GZIP_MAGIC


def pieces(fd: int, framer: Framer, limits: Limits) -> Iterator[Piece]:
    """Every record of the file, gzip or not, cut by `framer`, in order."""
    blocks = gunzip_blocks(fd, limits) if is_gzip(fd) else _raw_blocks(fd, limits.chunk_bytes)
    if getattr(framer, "whole_file", False):
        yield from _document_pieces(blocks, framer, limits)
    else:
        yield from stream_pieces(blocks, framer, limits)


def _raw_blocks(fd: int, chunk: int) -> Iterator[bytes]:
    position = 0
    while True:
        data = os.pread(fd, chunk, position)
        if not data:
            return
        position += len(data)
        yield data


def gunzip_blocks(fd: int, limits: Limits) -> Iterator[bytes]:
    """The inflated content, a chunk at a time; members one after another (as `cat a.gz
    b.gz` makes) are one stream. Raises StreamProblem for what is not a whole gzip file."""
    chunk, limit = limits.chunk_bytes, limits.max_decompressed_bytes
    inflater = zlib.decompressobj(wbits=31)
    position = 0  # compressed bytes read from the file
    pending = b""  # compressed bytes read but not yet given to the inflater
    inflated = 0
    while True:
        if inflater.unconsumed_tail:
            data = inflater.unconsumed_tail
        elif pending:
            data, pending = pending, b""
        else:
            data = os.pread(fd, chunk, position)
            position += len(data)
            if not data:
                if not inflater.eof:
                    raise StreamProblem(f"truncated gzip: expected the end of the stream, found the end of the "
                                        f"file after {position} compressed bytes ({inflated} inflated)")
                return
        try:
            out = inflater.decompress(data, chunk)
        except zlib.error as exc:
            raise StreamProblem(f"not valid gzip data (after {inflated} inflated bytes): {exc}") from None
        inflated += len(out)
        if inflated > limit:
            yield out[: len(out) - (inflated - limit)]
            raise StreamProblem(f"inflates past max_decompressed_bytes ({limit}): a gzip bomb, or a limit to "
                                f"raise for this source; the rest is not read")
        if out:
            yield out
        if inflater.eof:
            rest = inflater.unused_data
            if len(rest) < len(GZIP_MAGIC):  # the next member's start may not be read yet
                more = os.pread(fd, chunk, position)
                position += len(more)
                rest += more
                if not rest:
                    return
            if not rest.startswith(GZIP_MAGIC):
                if not rest.strip(b"\0") and not os.pread(fd, 1, position):
                    return  # zero padding after the last member (some writers add it)
                raise StreamProblem(f"expected another gzip member after {inflated} inflated bytes, "
                                    f"found other data")
            inflater = zlib.decompressobj(wbits=31)
            pending = rest


def _document_pieces(blocks: Iterator[bytes], framer, limits: Limits) -> Iterator[Piece]:
    buf = bytearray()
    try:
        for block in blocks:
            if len(buf) + len(block) > limits.max_document_bytes:
                reason = (f"expected a document of at most max_document_bytes ({limits.max_document_bytes}), "
                          f"found a larger one; it is not read")
                yield Piece([], [], len(buf), [Rejected(0, reason, bytes(buf[:SAMPLE_BYTES]))])
                return
            buf += block
    except StreamProblem as exc:
        yield Piece([], [], len(buf), [Rejected(0, f"{exc.reason}; the document is not read",
                                                bytes(buf[:SAMPLE_BYTES]))])
        return
    doc = bytes(buf)
    del buf
    records, offsets, rejected = framer.split_document(doc)
    yield Piece(records, offsets, len(doc), rejected)


def stream_pieces(blocks: Iterator[bytes], framer: Framer, limits: Limits, start: int = 0) -> Iterator[Piece]:
    """Records of a stream whose first block starts at `start` (a record boundary)."""
    position = start  # where `leftover` starts
    leftover = b""
    cutter = RecordCutter(framer, limits.max_record_bytes)
    try:
        for block in blocks:
            buf = leftover + block if leftover else block
            records, offsets, consumed, too_long = cutter.split(buf, position)
            leftover = buf[consumed:]
            position += consumed
            if records or too_long is not None:
                yield Piece(records, offsets, position, [too_long] if too_long is not None else [])
    except StreamProblem as exc:
        reason = f"{exc.reason}; an unfinished record is cut here" if leftover else exc.reason
        yield Piece([], [], position + len(leftover), [Rejected(position, reason, leftover[:SAMPLE_BYTES])])
        return
    if leftover:  # the end: an unterminated last record is still a record
        record = leftover[:-1] if leftover.endswith(b"\r") else leftover
        yield Piece([record], [position], position + len(leftover))


# -- the tailer's part ---------------------------------------------------------------------------
Place = tuple[int, int]


@dataclass(slots=True, eq=False)
class _Candidate:
    """A whole file found by a glob, open: waiting to be complete, or being read."""

    fd: int
    path: str
    size: int
    mtime_ns: int
    quiet_since: float  # when its size and time were last seen to change
    skip: bool = False  # found at the very first start with start_at: end
    key: str | None = None  # its content hash, once complete
    reading: Iterator[Piece] | None = None
    piece: Piece | None = None  # what is left of the piece being handed out
    resume_at: int = 0  # records before this (decompressed) position were committed before


@dataclass(frozen=True, slots=True)
class _Settled:
    """A whole file read (or known to be): closed, and recognised by its place and shape."""

    size: int
    mtime_ns: int
    key: str
    path: str


@dataclass(slots=True)
class _Known:
    """A checkpoint of a whole file: done, or read up to `offset` (decompressed)."""

    path: str
    offset: int
    done: bool
    absent_since: float | None = None


class WholeFileReader:
    """The tailer's whole files, fed by its scan with opened, allowed descriptors.

    A file read (or found read before) is closed and remembered by its (device, inode,
    size, mtime): a directory of a year of CloudTrail files holds no descriptor open.
    A remembered file that changes is a new file, read again whole (with a warning:
    its earlier records are then counted twice; whole files are not to be appended to).
    """

    def __init__(self, name: str, framer: Framer, limits: Limits, checkpoints: dict[str, Checkpoint], *,
                 quiet_s: float, forget_after_s: float, clock: Callable[[], float],
                 wall_clock: Callable[[], float] = time.time):
        self._name = name
        self._framer = framer
        self._limits = limits
        self._quiet_s = quiet_s
        self._forget_after_s = forget_after_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._candidates: dict[Place, _Candidate] = {}
        self._settled: dict[Place, _Settled] = {}
        self._known = {key: _Known(cp.path, cp.offset, cp.cursor == DONE) for key, cp in checkpoints.items()}
        self._forget: list[str] = []

    def __len__(self) -> int:
        return len(self._candidates) + len(self._settled)

    def knows(self, path: str, st: os.stat_result) -> bool:
        """Whether a scan's candidate (`st`: its stat) is one of ours already."""
        place = (st.st_dev, st.st_ino)
        candidate = self._candidates.get(place)
        if candidate is not None:
            candidate.path = path
            return True
        settled = self._settled.get(place)
        if settled is None:
            return False
        if (settled.size, settled.mtime_ns) == (st.st_size, st.st_mtime_ns):
            known = self._known.get(settled.key)
            if known is not None:
                known.path = path
            return True
        if settled.path == path:
            log.warning("%s: %s changed after it was read whole; reading it again as a new file "
                        "(whole files are not to be appended to)", self._name, path)
        del self._settled[place]  # changed, or a new file in an inode number used again
        return False

    def offer(self, fd: int, path: str, st: os.stat_result, now: float, *, skip: bool = False) -> None:
        """A new whole file, opened and allowed by the tailer (which hands over `fd`).

        With `skip` (found at the very first start with ``start_at: end``) it is
        remembered as read without being read.
        """
        # a file quiet for longer than quiet_s by the wall clock is complete already
        old = self._wall_clock() - st.st_mtime_ns / 1e9 >= self._quiet_s
        self._candidates[(st.st_dev, st.st_ino)] = _Candidate(
            fd, path, st.st_size, st.st_mtime_ns, now - self._quiet_s if old else now, skip=skip)

    def end_scan(self, seen: set[Place], now: float) -> None:
        """Let go of files gone from the globs; start the forget clock of keys no file holds."""
        for place in [p for p, c in self._candidates.items() if p not in seen and c.reading is None]:
            os.close(self._candidates.pop(place).fd)  # one being read is finished through its descriptor
        for place in [p for p in self._settled if p not in seen]:
            del self._settled[place]
        present = {s.key for s in self._settled.values()}
        present.update(c.key for c in self._candidates.values() if c.key is not None)
        for key, known in list(self._known.items()):
            if key in present:
                known.absent_since = None
            elif known.absent_since is None:
                known.absent_since = now
            elif now - known.absent_since >= self._forget_after_s:
                del self._known[key]
                self._forget.append(key)

    def poll(self, budget: int, now: float) -> list[Batch]:
        batches: list[Batch] = []
        for place, candidate in sorted(self._candidates.items(), key=lambda kv: kv[1].mtime_ns):
            if budget <= 0:
                break
            try:
                batch = self._advance(place, candidate, budget, now)
            except OSError as exc:
                log.warning("%s: reading %s failed: %s", self._name, candidate.path, exc)
                os.close(self._candidates.pop(place).fd)
                continue
            if batch is not None:
                batches.append(batch)
                budget -= len(batch.records)
        return batches

    def take_forget(self) -> list[str]:
        """Checkpoint keys to forget: files gone for forget_after_s."""
        out, self._forget = self._forget, []
        return out

    def close(self) -> None:
        for candidate in self._candidates.values():
            os.close(candidate.fd)
        self._candidates.clear()

    def lag_bytes(self) -> dict[str, int]:
        """Files not read yet: all of their bytes."""
        return {c.path: c.size for c in self._candidates.values()}

    # -- one file ----------------------------------------------------------------------------
    def _advance(self, place: Place, candidate: _Candidate, budget: int, now: float) -> Batch | None:
        if candidate.reading is not None:
            return self._next_batch(place, candidate, budget)
        if not self._complete(candidate, now):
            return None  # still being written
        candidate.key = key = content_key(candidate.fd, candidate.size)
        known = self._known.get(key)
        reading_elsewhere = any(c.key == key and c.reading is not None for c in self._candidates.values())
        if (known is not None and known.done) or reading_elsewhere:
            self._settle(place, candidate)  # read before, under this name or another
            return None
        if candidate.skip:  # found at the first start with start_at: end: remembered as read
            return self._finish(place, candidate, [], [], [])
        candidate.resume_at = known.offset if known is not None else 0
        candidate.reading = pieces(candidate.fd, self._framer, self._limits)
        log.info("%s: reading %s whole (%d bytes)", self._name, candidate.path, candidate.size)
        return self._next_batch(place, candidate, budget)

    def _complete(self, candidate: _Candidate, now: float) -> bool:
        st = os.fstat(candidate.fd)
        if (st.st_size, st.st_mtime_ns) != (candidate.size, candidate.mtime_ns):
            candidate.size, candidate.mtime_ns, candidate.quiet_since = st.st_size, st.st_mtime_ns, now
            return False
        # an empty file is one just created: nothing is complete about it yet
        return st.st_size > 0 and now - candidate.quiet_since >= self._quiet_s

    def _next_batch(self, place: Place, candidate: _Candidate, budget: int) -> Batch | None:
        taken = take_pieces(candidate.reading, candidate.piece, candidate.resume_at, budget)
        records, offsets, rejected, end = taken.records, taken.offsets, taken.rejected, taken.end
        candidate.piece = taken.held
        if taken.done:
            return self._finish(place, candidate, records, offsets, rejected)
        candidate.resume_at = end
        checkpoint = Checkpoint(self._name, candidate.key, candidate.path, end)
        return Batch(self._name, candidate.path, candidate.key, records, offsets, checkpoint, rejected=rejected)

    def _finish(self, place: Place, candidate: _Candidate, records: list[bytes], offsets: list[int],
                rejected: list[Rejected]) -> Batch:
        key = candidate.key
        self._known[key] = _Known(candidate.path, candidate.size, True)
        # done: the checkpoint's offset is the file's size on disk, so its lag shows 0
        checkpoint = Checkpoint(self._name, key, candidate.path, candidate.size, cursor=DONE)
        if not candidate.skip:
            log.info("%s: read %s whole", self._name, candidate.path)
        self._settle(place, candidate)
        return Batch(self._name, candidate.path, key, records, offsets, checkpoint, rejected=rejected)

    def _settle(self, place: Place, candidate: _Candidate) -> None:
        del self._candidates[place]
        os.close(candidate.fd)
        self._settled[place] = _Settled(candidate.size, candidate.mtime_ns, candidate.key, candidate.path)


@dataclass(slots=True)
class Taken:
    """The records of the next pieces, as many as a budget allows (`take_pieces`)."""

    records: list[bytes]
    offsets: list[int]
    rejected: list[Rejected]
    end: int  # where the records after these start
    held: Piece | None  # what is left of a piece cut at the budget
    done: bool  # the pieces ran out


def take_pieces(pieces: Iterator[Piece], held: Piece | None, resume_at: int, budget: int) -> Taken:
    """At most `budget` records from `held`, then `pieces`, past what was committed before
    `resume_at`; a piece cut at the budget is held for the next call."""
    taken = Taken([], [], [], resume_at, None, False)
    while len(taken.records) < budget:
        piece = held or next(pieces, None)
        held = None
        if piece is None:
            taken.done = True
            break
        piece = past_resume(piece, resume_at)
        room = budget - len(taken.records)
        if len(piece.records) > room:  # the rest waits for the next batch
            taken.records += piece.records[:room]
            taken.offsets += piece.offsets[:room]
            taken.held = Piece(piece.records[room:], piece.offsets[room:], piece.end, piece.rejected)
            taken.end = piece.offsets[room]
            break
        taken.records += piece.records
        taken.offsets += piece.offsets
        taken.rejected += piece.rejected
        taken.end = piece.end
    return taken


def past_resume(piece: Piece, resume_at: int) -> Piece:
    """The piece without what was committed before a restart (below resume_at)."""
    if (not piece.offsets or piece.offsets[0] >= resume_at) and all(r.offset >= resume_at for r in piece.rejected):
        return piece
    keep = next((i for i, offset in enumerate(piece.offsets) if offset >= resume_at), len(piece.offsets))
    rejected = [r for r in piece.rejected if r.offset >= resume_at]
    return Piece(piece.records[keep:], piece.offsets[keep:], piece.end, rejected)
