"""What every source hands to the pipeline: batches of raw records with a checkpoint.

A batch's checkpoint is the position just past its last record. The pipeline commits
the batch's results and the checkpoint in one store transaction, so a crash at any
moment neither loses nor double-counts a record.

A batch may hold no records: it then only moves a checkpoint that must become durable on
its own (a file skipped to its end at the first start, a copy that took over a truncated
file's position). Its ``forget`` list names checkpoints the store deletes in the same
transaction, after writing ``checkpoint`` and ``extra_checkpoints``.
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

    def __len__(self) -> int:
        return len(self.records)


class Framer(Protocol):
    """Splits a byte buffer into complete records (e.g. lines, csv records)."""

    def split(self, buf: bytes, base_offset: int) -> tuple[list[bytes], list[int], int]:
        """Return (records, their start offsets, bytes consumed); keep the rest."""
        ...


class CheckpointStore(Protocol):
    def load_checkpoints(self, source: str) -> dict[str, Checkpoint]: ...
