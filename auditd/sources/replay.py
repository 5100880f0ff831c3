"""ReplaySource: read given files once, start to end, for `neo-auditd replay`.

No watching, no rotation: the files are taken to be finished. One that is not (its last
line unterminated and the file written less than `unfinished_grace_s` ago: a log the
application still writes) keeps that line for the next replay rather than reading half
of it now (the rest would be quarantined apart from it, and the event never be one);
`unfinished` lists such files. Big sequential reads
(8 MiB by default) keep the framer, not the system calls, the cost. A file whose
checkpoint (same key as the tailer's) is found resumes past it, so an interrupted
replay can be run again without counting anything twice. A copy of a file replayed
before (another inode, say restored from an archive) is recognised by its content: the
same first line and the same bytes before a checkpoint's offset; it resumes there too.

The paths are the operator's explicit choice, so a symlink given is followed; but a
file is opened without blocking (``O_NONBLOCK``: a FIFO never stalls the replay) and
read only if the descriptor is a regular file; anything else is skipped and listed in
``refused``. The CLI refuses the daemon's own files (state directory, keys,
configuration) before it gets here. Gzip files and whole-document formats are read as
the tailer reads them (wholefile.py), under the same checkpoint keys.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from collections.abc import Iterator

from auditd.sources.base import Batch, Checkpoint, Framer, Rejected
from auditd.sources.framing import RecordCutter
from auditd.sources.guard import Refusal, type_reason
from auditd.sources.identity import FileIdentity, bytes_before, digest, read_head
from auditd.sources.wholefile import DONE, Limits, content_key, is_gzip, pieces

log = logging.getLogger(__name__)

REPLAY_CHUNK_BYTES = 8 * 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class ReplaySource:
    def __init__(self, name: str, paths: list[Path], framer: Framer,
                 checkpoints: dict[str, Checkpoint] | None = None, *,
                 chunk_bytes: int = REPLAY_CHUNK_BYTES, fingerprint_bytes: int = 1024,
                 max_record_bytes: int = 16 * 1024 * 1024, max_document_bytes: int = 256 * 1024 * 1024,
                 max_decompressed_bytes: int = 4096 * 1024 * 1024, unfinished_grace_s: float = 5.0,
                 clock=time.time):
        self.name = name
        self.paths = [Path(p) for p in paths]
        self._framer = framer
        self._checkpoints = dict(checkpoints or {})
        self._chunk_bytes = chunk_bytes
        self._fingerprint_bytes = fingerprint_bytes
        self._max_record_bytes = max_record_bytes  # a longer record is cut once a read finds no end in it
        self._limits = Limits(chunk_bytes, self._max_record_bytes, max_document_bytes, max_decompressed_bytes)
        self._bytes_done = 0
        self.refused: list[Refusal] = []  # paths given that are not regular files
        self.unfinished: list[str] = []  # files whose last line, still being written, was left for later
        self.already_read: list[str] = []  # files this store's checkpoints show were read to their end before
        self._grace_s, self._clock = unfinished_grace_s, clock

    def total_bytes(self) -> int:
        total = 0
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                continue  # reported when it is opened
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
        return total

    def bytes_done(self) -> int:
        """Bytes of the given files behind us, skipped ones included (for a progress bar)."""
        return self._bytes_done

    def batches(self, max_records: int) -> Iterator[Batch]:
        """Every record of every file, in order, at most `max_records` per batch."""
        for path in self.paths:
            done_before = self._bytes_done
            fd = self._open(str(path))
            if fd is None:
                continue
            with open(fd, "rb", buffering=0) as fh:
                if getattr(self._framer, "whole_file", False) or is_gzip(fd):
                    yield from self._whole_batches(fd, str(path), max_records, done_before)
                else:
                    yield from self._file_batches(fh, str(path), max_records, done_before)

    def _open(self, path: str) -> int | None:
        """A descriptor of a regular file, never waiting on a FIFO; None (and a refusal) else."""
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            self._refuse(Refusal(path, "unreadable", f"cannot open: {exc.strerror or exc}"))
            return None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            reason, what = type_reason(mode)
            self._refuse(Refusal(path, reason, f"{what}: only regular files are read"))
            return None
        return fd

    def _refuse(self, refusal: Refusal) -> None:
        log.warning("%s: not reading %s: %s", self.name, refusal.path, refusal.detail)
        self.refused.append(refusal)

    def _whole_batches(self, fd: int, path: str, max_records: int, done_before: int) -> Iterator[Batch]:
        """A gzip file or a whole document: every record, resumable by the content key."""
        size = os.fstat(fd).st_size
        key = content_key(fd, size)
        checkpoint = self._checkpoints.get(key)
        if checkpoint is not None and checkpoint.cursor == DONE:
            self._bytes_done = done_before + size
            self.already_read.append(path)
            return  # replayed (or tailed) into this store before
        resume_at = checkpoint.offset if checkpoint is not None else 0
        records: list[bytes] = []
        offsets: list[int] = []
        rejected: list[Rejected] = []
        for piece in pieces(fd, self._framer, self._limits):
            for record, offset in zip(piece.records, piece.offsets):
                if offset < resume_at:
                    continue
                if len(records) == max_records:
                    yield Batch(self.name, path, key, records, offsets, Checkpoint(self.name, key, path, offset),
                                rejected=rejected)
                    records, offsets, rejected = [], [], []
                records.append(record)
                offsets.append(offset)
            rejected += [r for r in piece.rejected if r.offset >= resume_at]
        self._bytes_done = done_before + size
        yield Batch(self.name, path, key, records, offsets, Checkpoint(self.name, key, path, size, cursor=DONE),
                    rejected=rejected)

    def _file_batches(self, fh, path: str, max_records: int, done_before: int) -> Iterator[Batch]:
        fd = fh.fileno()
        identity = self._identity(fd)
        size = os.fstat(fd).st_size
        position = self._resume_offset(fd, identity, size)
        if position and position == size:
            self.already_read.append(path)
        self._bytes_done = done_before + position
        fh.seek(position)
        leftover = b""
        cutter = RecordCutter(self._framer, self._max_record_bytes)
        while True:
            data = fh.read(self._chunk_bytes)
            buf = leftover + data if leftover else data
            if not data:  # the end: an unterminated last record is still a record, once written
                if buf and self._clock() - os.fstat(fd).st_mtime < self._grace_s:
                    log.warning("%s: %s: the last line is unfinished and the file was written just now; "
                                "left for the next replay of it", self.name, path)
                    self.unfinished.append(path)
                elif buf:
                    record = buf[:-1] if buf.endswith(b"\r") else buf
                    yield self._batch(fd, path, identity, [record], [position], position + len(buf))
                break
            records, offsets, consumed, too_long = cutter.split(buf, position)
            if too_long is not None:
                log.warning("%s: %s: the record at %d is over max_record_bytes; quarantined once and "
                            "skipped to its end", self.name, path, too_long.offset)
            yield from self._slices(fd, path, identity, records, offsets, position + consumed, max_records,
                                    [too_long] if too_long is not None else [])
            leftover = buf[consumed:]
            position += consumed
            self._bytes_done = done_before + position + len(leftover)

    def _identity(self, fd: int) -> FileIdentity:
        st = os.fstat(fd)
        head = read_head(fd, self._fingerprint_bytes) or os.pread(fd, self._fingerprint_bytes, 0)
        return FileIdentity(digest(head), st.st_dev, st.st_ino)

    def _resume_offset(self, fd: int, identity: FileIdentity, size: int) -> int:
        checkpoint = self._checkpoints.get(identity.key)
        if checkpoint is not None:
            return checkpoint.offset if checkpoint.offset <= size else 0
        best = 0
        for candidate in self._checkpoints.values():  # a copy of a file read before
            known = FileIdentity.parse(candidate.fingerprint)
            if (known is None or known.head_hash != identity.head_hash or not best < candidate.offset <= size
                    or not candidate.tail_hash):
                continue
            if digest(bytes_before(fd, candidate.offset)) == candidate.tail_hash:
                best = candidate.offset
        return best

    def _slices(self, fd: int, path: str, identity: FileIdentity, records: list[bytes], offsets: list[int],
                end: int, max_records: int, rejected: list[Rejected]) -> Iterator[Batch]:
        """Batches of at most max_records; what was rejected (after the records) goes with the last."""
        if len(records) <= max_records:  # the usual case: no list copies
            yield self._batch(fd, path, identity, records, offsets, end, rejected)
            return
        for start in range(0, len(records), max_records):
            stop = start + max_records
            last = stop >= len(records)
            yield self._batch(fd, path, identity, records[start:stop], offsets[start:stop],
                              end if last else offsets[stop], rejected if last else None)

    def _batch(self, fd: int, path: str, identity: FileIdentity, records: list[bytes], offsets: list[int],
               end: int, rejected: list[Rejected] | None = None) -> Batch:
        checkpoint = Checkpoint(self.name, identity.key, path, end, digest(bytes_before(fd, end)))
        return Batch(self.name, path, identity.key, records, offsets, checkpoint, rejected=rejected or [])
