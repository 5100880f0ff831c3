"""Settings of one file source, converted once from located YAML into a frozen dataclass.

    sources:
      - name: crm
        paths: [logs/access*.log]      # also matches the rotated access.log.1, access.log-20261102
        format: neo-crm
        start_at: end                  # only for files found at the daemon's very first start
        allow_dirs: [/srv/app/logs]    # symlinks in logs/ may point there (default: nowhere else)

A source reads only regular files that really lie in its globs' own directories or in
``allow_dirs`` (see sources.guard), never the daemon's own files. A glob that names a
compressed suffix (``*.json.gz``) reads gzip files; such files, and every file of a
whole-document format, are read once each, when complete (see sources.wholefile).
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from collections.abc import Iterator

from auditd.config.located import Doc, PathKey, Problems
from auditd.config.typed import convert
from auditd.sources.guard import NOTHING_PROTECTED, Protected
from auditd.sources.identity import COMPRESSED_SUFFIXES

MIB = 1024 * 1024
_MAGIC = frozenset("*?[")
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
    # A record longer than this (e.g. after an unbalanced csv quote) is quarantined once,
    # by its head, and skipped to its end, rather than holding the file forever.
    max_record_bytes: int = 16 * MIB
    # Directories a file (through a symlink, or a symlinked directory under `**`) may
    # really lie in, besides the globs' own directories.
    allow_dirs: tuple[Path, ...] = ()
    # A whole-file document (a CloudTrail file, after decompression) is held in memory
    # to be split into records; a larger one is quarantined, not read.
    max_document_bytes: int = 256 * MIB
    # A compressed file that inflates past this is cut there, and the cut reported: a
    # gzip bomb costs reading this much, never memory.
    max_decompressed_bytes: int = 4096 * MIB
    # The daemon's own files, filled in by the runtime from the rest of the config:
    # never a config key (init=False keeps it out of the YAML), see `with_protected`.
    protected: Protected = field(default=NOTHING_PROTECTED, init=False)

    def with_protected(self, protected: Protected) -> "FileSourceSettings":
        """A copy that refuses `protected` (dataclasses.replace would drop it: init=False)."""
        copy = dataclasses.replace(self)
        object.__setattr__(copy, "protected", protected)
        return copy

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
        for key in ("max_document_bytes", "max_decompressed_bytes"):
            if getattr(self, key) < self.read_chunk_bytes:
                yield key, "must be at least read_chunk_bytes"
        # an item that failed to convert is MISSING here, and was reported already
        for i, path in enumerate(self.paths):
            if not isinstance(path, Path):
                continue
            suffix = next((s for s in COMPRESSED_SUFFIXES if str(path).lower().endswith(s)), None)
            if suffix is not None and suffix != ".gz":
                yield ("paths", i), f"{suffix} files cannot be read; gzip (.gz) can"
        for i, directory in enumerate(self.allow_dirs):
            if not isinstance(directory, Path):
                continue
            if _MAGIC & set(str(directory)):
                yield ("allow_dirs", i), "a directory, not a glob"
            elif directory == Path(directory.anchor):
                yield ("allow_dirs", i), "the root would let a symlink reach any file; name the directories"


def load_file_source(value: Any, doc: Doc, path: PathKey, problems: Problems) -> FileSourceSettings | None:
    """Convert one `sources[i]` mapping; problems are collected, None if it is unusable."""
    out = convert(FileSourceSettings, value, doc, path, problems)
    return out if isinstance(out, FileSourceSettings) else None
