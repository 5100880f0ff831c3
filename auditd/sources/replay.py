"""ReplaySource: read given files once, start to end, for `neo-auditd replay`.

No watching, no rotation: the files are taken to be finished. Big sequential reads
(8 MiB by default) keep the framer, not the system calls, the cost. A file whose
checkpoint (same key as the tailer's) is found resumes past it, so an interrupted
replay can be run again without counting anything twice. A copy of a file replayed
before (another inode, say restored from an archive) is recognised by its content: the
same first line and the same bytes before a checkpoint's offset; it resumes there too.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterator

from auditd.sources.base import Batch, Checkpoint, Framer
from auditd.sources.identity import FileIdentity, bytes_before, digest, read_head

REPLAY_CHUNK_BYTES = 8 * 1024 * 1024


class ReplaySource:
    def __init__(self, name: str, paths: list[Path], framer: Framer,
                 checkpoints: dict[str, Checkpoint] | None = None, *,
                 chunk_bytes: int = REPLAY_CHUNK_BYTES, fingerprint_bytes: int = 1024,
                 max_record_bytes: int = 16 * 1024 * 1024):
        self.name = name
        self.paths = [Path(p) for p in paths]
        self._framer = framer
        self._checkpoints = dict(checkpoints or {})
        self._chunk_bytes = chunk_bytes
        self._fingerprint_bytes = fingerprint_bytes
        self._max_record_bytes = max(max_record_bytes, chunk_bytes)
        self._bytes_done = 0

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    def bytes_done(self) -> int:
        """Bytes of the given files behind us, skipped ones included (for a progress bar)."""
        return self._bytes_done

    def batches(self, max_records: int) -> Iterator[Batch]:
        """Every record of every file, in order, at most `max_records` per batch."""
        for path in self.paths:
            done_before = self._bytes_done
            with open(path, "rb", buffering=0) as fh:
                yield from self._file_batches(fh, str(path), max_records, done_before)

    def _file_batches(self, fh, path: str, max_records: int, done_before: int) -> Iterator[Batch]:
        fd = fh.fileno()
        identity = self._identity(fd)
        position = self._resume_offset(fd, identity, os.fstat(fd).st_size)
        self._bytes_done = done_before + position
        fh.seek(position)
        leftover = b""
        while True:
            data = fh.read(self._chunk_bytes)
            buf = leftover + data if leftover else data
            if not data:  # the end: an unterminated last record is still a record
                if buf:
                    record = buf[:-1] if buf.endswith(b"\r") else buf
                    yield self._batch(fd, path, identity, [record], [position], position + len(buf))
                break
            records, offsets, consumed = self._framer.split(buf, position)
            if consumed == 0 and len(buf) >= self._max_record_bytes:
                records, offsets, consumed = [buf], [position], len(buf)  # cut, as the tailer does
            yield from self._slices(fd, path, identity, records, offsets, position + consumed, max_records)
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
                end: int, max_records: int) -> Iterator[Batch]:
        if len(records) <= max_records:  # the usual case: no list copies
            yield self._batch(fd, path, identity, records, offsets, end)
            return
        for start in range(0, len(records), max_records):
            stop = start + max_records
            checkpoint_at = offsets[stop] if stop < len(records) else end
            yield self._batch(fd, path, identity, records[start:stop], offsets[start:stop], checkpoint_at)

    def _batch(self, fd: int, path: str, identity: FileIdentity, records: list[bytes], offsets: list[int],
               end: int) -> Batch:
        checkpoint = Checkpoint(self.name, identity.key, path, end, digest(bytes_before(fd, end)))
        return Batch(self.name, path, identity.key, records, offsets, checkpoint)
