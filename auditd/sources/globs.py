"""Which files a source reads: its globs, plus the rotated names of what they match.

What a glob matches is what Python's ``glob`` finds for it (``**`` with
``recursive=True``), with nothing filtering its result afterwards: ``logs/**/*.log``
matches ``logs/a.log`` as well as ``logs/x/y/a.log``, as a user expects.

A glob such as ``logs/access*.log`` also matches ``logs/access.log.1`` and
``logs/access.log-20261102``: after a rename rotation the old file must stay in view,
to be drained and to be recognised (never read twice) when it shows up under its new
name. Those are found by globbing ``<glob>.*`` and ``<glob>-*`` and keeping the names
whose last part is a match of the glob's last part followed by a rotated suffix.

Compressed files (.gz, .xz, ...) are matched only by a glob that names them
(``cloudtrail/**/*.json.gz``): a compressed rotation (``access.log.2.gz``) holds lines
already read from ``access.log.1``, and reading it again would count them twice. The
compressed rotations a scan meets are listed apart (`compressed_rotations`): one made
while the daemon was down, of a file it had not finished, holds the only copy of that
file's last lines (compressed.py).
"""

from __future__ import annotations

import glob
import os
from fnmatch import fnmatchcase
from pathlib import Path

from auditd.sources.identity import COMPRESSED_SUFFIXES, ROTATED_SUFFIX, is_compressed

_MAGIC = frozenset("*?[")


class PathMatcher:
    def __init__(self, patterns: tuple[Path, ...] | list[Path]):
        self.patterns = tuple(os.path.abspath(os.fspath(p)) for p in patterns)
        self._found: frozenset[str] = frozenset()  # the last scan's result, for `matches`
        self.compressed_rotations: list[str] = []  # the last scan's access.log.1.gz, access.log-20261102.gz

    def matches(self, path: str) -> bool:
        """Whether the last scan found `path` (the watcher's test for "a file we read changed")."""
        return path in self._found

    def scan(self) -> list[str]:
        """Every candidate that matches, sorted, without duplicates."""
        return sorted({path for paths in self.scan_patterns().values() for path in paths})

    def scan_patterns(self) -> dict[str, list[str]]:
        """Each glob's matches (its own and its rotated names), sorted."""
        out: dict[str, list[str]] = {}
        compressed: set[str] = set()
        for pattern in self.patterns:
            recursive = "**" in pattern
            names_compressed = pattern.lower().endswith(COMPRESSED_SUFFIXES)
            found = {path for path in glob.glob(pattern, recursive=recursive)
                     if names_compressed or not is_compressed(path)}
            last_part = os.path.basename(pattern)
            for rotated_pattern in (pattern + ".*", pattern + "-*"):
                for path in glob.glob(rotated_pattern, recursive=recursive):
                    if not is_compressed(path):
                        if is_rotation_of(os.path.basename(path), last_part):
                            found.add(path)
                    elif not names_compressed and path.endswith(".gz") \
                            and is_rotation_of(os.path.basename(path)[:-3], last_part):
                        compressed.add(path)
            out[pattern] = sorted(found)
        self._found = frozenset(path for paths in out.values() for path in paths)
        self.compressed_rotations = sorted(compressed - self._found)
        return out

    def watch_directories(self) -> list[tuple[str, bool]]:
        """(directory, recursive) pairs that inotify must watch to see every match."""
        out: dict[str, bool] = {}
        for pattern in self.patterns:
            static, has_magic_dir = static_directory(pattern)
            out[static] = out.get(static, False) or has_magic_dir
        return sorted(out.items())

    def own_directories(self) -> list[str]:
        """The globs' own directories (the deepest part without glob characters)."""
        return sorted({static_directory(pattern)[0] for pattern in self.patterns})


def is_rotation_of(name: str, pattern_part: str) -> bool:
    """Whether file name `name` is a name matched by `pattern_part` followed by a rotated
    suffix (access.log.1 for access*.log). Glob found `name` for `pattern_part + ".*"` (or
    "-*"); this only checks where that match ends."""
    for cut in range(len(name) - 1, 0, -1):
        if name[cut] in ".-" and ROTATED_SUFFIX.fullmatch(name, cut) and fnmatchcase(name[:cut], pattern_part):
            return True
    return False


def static_directory(pattern: str) -> tuple[str, bool]:
    """The deepest directory with no glob characters, and whether globs continue below it."""
    parts = Path(pattern).parts
    directory_parts = parts[:-1]
    for i, part in enumerate(directory_parts):
        if _MAGIC & set(part):
            return str(Path(*directory_parts[:i])), True
    return str(Path(*directory_parts)), False
