"""Settings of one file source, converted once from located YAML into a frozen dataclass.

    sources:
      - name: crm
        paths: [logs/access*.log]      # also matches the rotated access.log.1, access.log-20261102
        format: neo-crm
        start_at: end                  # only for files found at the daemon's very first start
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from collections.abc import Iterator

from auditd.config.located import Doc, PathKey, Problems
from auditd.config.typed import convert

MIB = 1024 * 1024
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class FileSourceSettings:
    name: str
    paths: tuple[Path, ...]  # files and globs; relative ones are relative to the config file
    format: str  # a format name; the format registry checks it and decides the framing
    # Where to begin a file first seen at the daemon's first start, with no checkpoint.
    # Files that appear later are always read from their beginning, so nothing is skipped.
    start_at: Literal["beginning", "end"] = "beginning"
    poll_interval_s: float = 1.0  # polling fallback, and the safety net under inotify
    use_inotify: bool = True
    read_chunk_bytes: int = MIB
    fingerprint_bytes: int = 1024  # how much of the first line identifies a file
    forget_after_s: float = 7 * DAY_S  # drop the checkpoint of a file gone this long
    # A file gone from the globs (renamed away or deleted) may still be written through
    # the writer's open descriptor until it reopens its log; it is drained until it has
    # been quiet this long, then its unterminated last record, if any, is emitted.
    drain_grace_s: float = 5.0
    # A record longer than this is cut and emitted in pieces (the decoder quarantines
    # them) rather than holding the file forever, e.g. on an unbalanced csv quote.
    max_record_bytes: int = 16 * MIB

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.name:
            yield "name", "must not be empty"
        if not self.paths:
            yield "paths", "needs at least one path or glob"
        if not self.format:
            yield "format", "must not be empty"
        for key in ("poll_interval_s", "drain_grace_s", "forget_after_s"):
            if getattr(self, key) <= 0:
                yield key, "must be greater than 0"
        if self.fingerprint_bytes < 16:
            yield "fingerprint_bytes", "must be at least 16"
        if self.read_chunk_bytes < self.fingerprint_bytes:
            yield "read_chunk_bytes", "must be at least fingerprint_bytes"
        if self.max_record_bytes < self.read_chunk_bytes:
            yield "max_record_bytes", "must be at least read_chunk_bytes"


def load_file_source(value: Any, doc: Doc, path: PathKey, problems: Problems) -> FileSourceSettings | None:
    """Convert one `sources[i]` mapping; problems are collected, None if it is unusable."""
    out = convert(FileSourceSettings, value, doc, path, problems)
    return out if isinstance(out, FileSourceSettings) else None
