"""What every source hands to the pipeline: batches of raw records with a checkpoint.

A batch's checkpoint is the position just past its last record. The pipeline commits
the batch's results and the checkpoint in one store transaction, so a crash at any
moment neither loses nor double-counts a record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Checkpoint:
    source: str  # the source's name in the config
    fingerprint: str  # identity of the file (device, inode, hash of first bytes)
    path: str  # where the file was last seen (informational)
    offset: int  # bytes of the file fully processed


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

    def __len__(self) -> int:
        return len(self.records)


class Framer(Protocol):
    """Splits a byte buffer into complete records (e.g. lines, csv records)."""

    def split(self, buf: bytes, base_offset: int) -> tuple[list[bytes], list[int], int]:
        """Return (records, their start offsets, bytes consumed); keep the rest."""
        ...


class CheckpointStore(Protocol):
    def load_checkpoints(self, source: str) -> dict[str, Checkpoint]: ...
