"""What every source hands to the pipeline: batches of raw records with a checkpoint.

A batch's checkpoint is the position just past its last record. The pipeline commits
the batch's results and the checkpoint in one store transaction, so a crash at any
moment neither loses nor double-counts a record.

A batch may hold no records: it then only moves a checkpoint that must become durable on
its own (a file skipped to its end at the first start, a copy that took over a truncated
file's position). Its ``forget`` list names checkpoints the store deletes in the same
transaction, after writing ``checkpoint`` and ``extra_checkpoints``.

A batch may also carry what the source could not even cut into records (``rejected``:
a broken CloudTrail document, a truncated gzip), which the pipeline quarantines with
the batch, and the source's latest ``report`` (what its globs found and refused). A
batch that only carries a report names no file: its checkpoint's fingerprint is ""
and the pipeline moves no checkpoint for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Checkpoint:
    source: str  # the source's name in the config
    fingerprint: str  # identity of the file (hash of its first line, device, inode)
    path: str  # where the file was last seen (informational)
    offset: int  # bytes of the file fully processed
    # Hash of the (up to 256) bytes just before `offset`: lets a restarted tailer prove
    # the file still holds what was read, and recognise a copy of it. "" = unknown.
    tail_hash: str = ""
    cursor: str | None = None  # for non-file sources: an opaque resume token (e.g. search_after)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Bytes a source could not cut into records, with the reason (quarantined as is)."""

    offset: int  # where they start, in the file (or in its decompressed content)
    reason: str  # what was expected and what was found
    data: bytes  # at most a sample: the file still holds all of it


@dataclass(frozen=True, slots=True)
class SourceReport:
    """What a source's globs found at its last scan, for `status` and the metrics."""

    files: int  # files matched and read (or waiting to be read)
    unmatched: tuple[str, ...] = ()  # globs that matched nothing
    refused: tuple[tuple[str, str, str], ...] = ()  # (path, reason, detail): see sources.guard


NO_FILE = ""  # the fingerprint of a batch that carries only a report


@dataclass(slots=True)
class Batch:
    """Consecutive complete records of one file, and where reading stopped."""

    source: str
    path: str
    fingerprint: str
    records: list[bytes]  # each without its record terminator
    offsets: list[int]  # byte offset where each record starts
    checkpoint: Checkpoint
    extra_checkpoints: list[Checkpoint] = field(default_factory=list)  # e.g. a file now gone
    forget: list[str] = field(default_factory=list)  # fingerprints whose checkpoints are obsolete
    rejected: list[Rejected] = field(default_factory=list)  # quarantined with the batch
    report: SourceReport | None = None  # the source's scan, when it changed

    def __len__(self) -> int:
        return len(self.records)


class Framer(Protocol):
    """Splits a byte buffer into complete records (e.g. lines, csv records).

    A framer whose ``whole_file`` is true cuts a whole document instead
    (``split_document``), and its files are read once, when complete.
    """

    whole_file: bool

    def split(self, buf: bytes, base_offset: int) -> tuple[list[bytes], list[int], int]:
        """Return (records, their start offsets, bytes consumed); keep the rest."""
        ...


class CheckpointStore(Protocol):
    def load_checkpoints(self, source: str) -> dict[str, Checkpoint]: ...
