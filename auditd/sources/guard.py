"""Which files a source may read, and opening them so that what is read is what was allowed.

A glob is an operator's wish, and a log directory is often writable by the application
whose log it is: a symlink named ``access.log.1`` pointing at a key, or a FIFO named
like a log, must neither leak nor stall the daemon. So a candidate is opened with
``O_NOFOLLOW | O_NONBLOCK`` and judged by the descriptor it gave, never by a stat taken
before the open:

- only a regular file is read. A FIFO, socket, device or directory is refused with its
  reason; the name is looked at (lstat) first so that such a file is never even
  opened (opening some devices has effects), and the descriptor is checked again after
  the open (``O_NONBLOCK``: a FIFO swapped in between never makes the open wait);
- the file's real place, read back from the descriptor (``/proc/self/fd/N``: where the
  descriptor really points, whatever was swapped meanwhile), must lie in the source's
  allowed directories: its globs' own directories and ``allow_dirs``. A symlink is
  followed only to a target inside them; a file reached through a symlinked directory
  (a ``**`` glob walks into those) is judged the same way, by where it really is;
- the daemon's own files (state directory, store, quarantine, key files, configuration,
  HR directory, rule files) are refused whatever the globs and ``allow_dirs`` say.

What remains: between the lstat and the open, a regular file could be replaced by a
device, which the open would then open (non-blocking, read-only) before the check on
the descriptor closes it again. Linux's openat2(RESOLVE_NO_SYMLINKS) would close that;
Python does not offer it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DELETED = " (deleted)"  # what /proc/self/fd/N says of an unlinked file

# Refusal reasons: short, fixed words, for logs and the metrics' `reason` label.
REASONS = ("fifo", "socket", "device", "directory", "not_regular", "symlink_outside", "outside_allowed",
           "daemon_file", "dangling_symlink", "replaced", "unreadable")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A candidate the source will not read, and why (`reason` is one of REASONS)."""

    path: str
    reason: str
    detail: str  # for the log and `status`: says what was found and what would be allowed


@dataclass(frozen=True, slots=True)
class Opened:
    """A candidate opened and found acceptable: read it through `fd` only."""

    fd: int
    path: str
    st: os.stat_result  # fstat of the descriptor
    real_path: str


@dataclass(frozen=True, slots=True)
class Protected:
    """The daemon's own files: never a source, whatever a glob or a symlink says."""

    directories: tuple[str, ...] = ()  # the state directory: nothing below it is read
    files: tuple[str, ...] = ()  # the store, quarantine, key, config, directory, rule files

    @classmethod
    def of(cls, directories, files) -> Protected:
        """Absolute, symlink-free forms of the given paths (they need not exist yet)."""
        return cls(tuple(sorted({os.path.realpath(d) for d in directories})),
                   tuple(sorted({os.path.realpath(f) for f in files})))

    def refuses(self, real_path: str) -> bool:
        return real_path in self.files or any(inside(real_path, d) for d in self.directories)

    def places(self) -> set[tuple[int, int]]:
        """(device, inode) of the protected files that exist now: a hard link to a key in
        a log directory has another name but the same inode."""
        out: set[tuple[int, int]] = set()
        for path in self.files:
            try:
                st = os.stat(path)
            except OSError:
                continue
            out.add((st.st_dev, st.st_ino))
        return out


NOTHING_PROTECTED = Protected()


def inside(path: str, directory: str) -> bool:
    """Whether the absolute `path` is `directory` or lies below it (both symlink-free)."""
    if directory == os.sep:
        return True
    return path == directory or path.startswith(directory + os.sep)


def type_reason(mode: int) -> tuple[str, str]:
    """(reason, what the file is) for a mode that is not a regular file's."""
    if stat.S_ISFIFO(mode):
        return "fifo", "a FIFO"
    if stat.S_ISSOCK(mode):
        return "socket", "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device", "a device"
    if stat.S_ISDIR(mode):
        return "directory", "a directory"
    return "not_regular", "not a regular file"


def classify(path: str) -> tuple[os.stat_result, os.stat_result] | Refusal | None:
    """(lstat, stat) of a candidate's name, a Refusal for what is never opened, or None if
    it is gone or a directory. Only a hint for the open: `open_checked` decides on the descriptor."""
    try:
        lst = os.lstat(path)
    except OSError:
        return None
    st = lst
    if stat.S_ISLNK(lst.st_mode):
        try:
            st = os.stat(path)
        except OSError:
            return Refusal(path, "dangling_symlink", "a symlink to nothing (or to a place not readable)")
    if stat.S_ISDIR(st.st_mode):
        return None  # `logs/*` meets subdirectories: not files, and nothing to report
    if not stat.S_ISREG(st.st_mode):
        reason, what = type_reason(st.st_mode)
        via = ", through a symlink" if stat.S_ISLNK(lst.st_mode) else ""
        return Refusal(path, reason, f"{what}{via}: only regular files are read")
    return lst, st


def open_checked(path: str, lst: os.stat_result, allowed: tuple[str, ...], protected: Protected,
                 protected_places: set[tuple[int, int]]) -> Opened | Refusal:
    """Open `path` (classified as `lst` by `classify`) and judge the descriptor.

    `allowed` are symlink-free directories the file must really lie in.
    """
    is_link = stat.S_ISLNK(lst.st_mode)
    try:
        fd = os.open(path, _OPEN_FLAGS if is_link else _OPEN_FLAGS | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not is_link:
            return Refusal(path, "replaced", "became a symlink between the scan and the open; judged again "
                                             "at the next scan")
        return Refusal(path, "unreadable", f"cannot open: {exc.strerror or exc}")
    try:
        verdict = _judge(fd, path, is_link, allowed, protected, protected_places)
    except OSError as exc:
        verdict = Refusal(path, "unreadable", f"cannot read its descriptor: {exc.strerror or exc}")
    if isinstance(verdict, Refusal):
        os.close(fd)
    return verdict


def _judge(fd: int, path: str, is_link: bool, allowed: tuple[str, ...], protected: Protected,
           protected_places: set[tuple[int, int]]) -> Opened | Refusal:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        reason, what = type_reason(st.st_mode)
        return Refusal(path, reason, f"{what} (swapped in before the open): only regular files are read")
    real = real_path_of(fd, path)
    if real is None:
        return Refusal(path, "unreadable", "deleted while it was opened")
    if (st.st_dev, st.st_ino) in protected_places or protected.refuses(real):
        return Refusal(path, "daemon_file", f"is the daemon's own file ({real}): never a source")
    if not any(inside(real, d) for d in allowed):
        where = ", ".join(allowed) or "nowhere"
        if is_link:
            return Refusal(path, "symlink_outside",
                           f"a symlink to {real}, outside the directories this source reads ({where}); "
                           f"list the target's directory in the source's allow_dirs to read it")
        return Refusal(path, "outside_allowed",
                       f"really lies at {real} (through a symlinked directory), outside the directories "
                       f"this source reads ({where}); list it in allow_dirs to read it")
    return Opened(fd, path, st, real)


def real_path_of(fd: int, path: str) -> str | None:
    """Where the descriptor really points; None if the file was deleted meanwhile."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        # Without /proc (not Linux): the name's real path now, checked to be this file.
        real = os.path.realpath(path)
        try:
            st, fst = os.stat(real), os.fstat(fd)
        except OSError:
            return None
        return real if (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino) else None
    if real.endswith(_DELETED) and not os.path.exists(real):
        return None
    return real
