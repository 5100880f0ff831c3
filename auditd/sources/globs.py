"""Which files a source reads: its globs, plus the rotated names of what they match.

A glob such as ``logs/access*.log`` also matches ``logs/access.log.1`` and
``logs/access.log-20261102``: after a rename rotation the old file must stay in view,
to be drained and to be recognised (never read twice) when it shows up under its new
name. Compressed rotations (.gz, .xz, ...) are never matched.
"""

from __future__ import annotations

import glob
import os
from fnmatch import fnmatchcase
from pathlib import Path

from auditd.sources.identity import is_compressed, strip_rotated_suffix

_MAGIC = frozenset("*?[")


class PathMatcher:
    def __init__(self, patterns: tuple[Path, ...] | list[Path]):
        self.patterns = tuple(os.path.abspath(os.fspath(p)) for p in patterns)

    def matches(self, path: str) -> bool:
        if is_compressed(path):
            return False
        unrotated = strip_rotated_suffix(path)
        return any(
            fnmatchcase(path, pattern) or (unrotated is not None and fnmatchcase(unrotated, pattern))
            for pattern in self.patterns
        )

    def scan(self) -> list[str]:
        """Every regular-file candidate that matches, sorted, without duplicates."""
        found: set[str] = set()
        for pattern in self.patterns:
            recursive = "**" in pattern
            for candidate_pattern in (pattern, pattern + ".*", pattern + "-*"):
                found.update(glob.glob(candidate_pattern, recursive=recursive))
        return sorted(path for path in found if self.matches(path))

    def watch_directories(self) -> list[tuple[str, bool]]:
        """(directory, recursive) pairs that inotify must watch to see every match."""
        out: dict[str, bool] = {}
        for pattern in self.patterns:
            static, has_magic_dir = _static_directory(pattern)
            out[static] = out.get(static, False) or has_magic_dir
        return sorted(out.items())


def _static_directory(pattern: str) -> tuple[str, bool]:
    """The deepest directory with no glob characters, and whether globs continue below it."""
    parts = Path(pattern).parts
    directory_parts = parts[:-1]
    for i, part in enumerate(directory_parts):
        if _MAGIC & set(part):
            return str(Path(*directory_parts[:i])), True
    return str(Path(*directory_parts)), False
