"""Personal information at rest stays private: state, store, quarantine and keys.

The store holds every access event, the quarantine holds raw log lines (raw customer
identifiers among them) and the key file makes pseudonyms reversible by guessing. The
unit file sets ``UMask=0077`` and ``StateDirectoryMode=0700``; outside systemd (a
manual start, a container, a replay from a shell with umask 022) the CLI does the same
itself with `make_private`, so that everything it creates is its user's alone.

`check_state` is what `check` (and every load) says about the places already there:
a state folder or key file others can read is a warning, located at its key in the
config, and so is one this user could not create or write; a state "folder" that is
a file is a problem (exit 78), found before the daemon starts rather than by a
traceback after.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from auditd.config.located import Doc, PathKey, Problems, read_regular_file

PRIVATE_UMASK = 0o077
PRIVATE_FILE_MODE = 0o600
STORE_SUFFIXES = ("", "-wal", "-shm", "-journal")  # SQLite's files beside the database


def make_private() -> int:
    """Set umask 077 for this process; returns the previous mask."""
    return os.umask(PRIVATE_UMASK)


def tighten(paths: list[Path]) -> list[Path]:
    """Make these existing files of ours 0600 if they are looser (e.g. created by an
    earlier start under umask 022); returns the ones changed."""
    changed = []
    for path in paths:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, PRIVATE_FILE_MODE, follow_symlinks=False)
            changed.append(path)
    return changed


def store_files(db_path: Path) -> list[Path]:
    return [db_path.with_name(db_path.name + suffix) for suffix in STORE_SUFFIXES]


def check_state(state_dir: Path, files: dict[PathKey, Path], doc: Doc | None, problems: Problems) -> None:
    """Problems for a state folder the daemon could not use; warnings for private data
    that others could read (`files`: the store and quarantine, by the config key that
    names them). The key file's own check is in `enrich.pseudonym.load_key`."""
    _check_folder(state_dir, doc, ("state_dir",), problems)
    for key_path, path in files.items():
        _check_file(path, doc, key_path, problems, what="holds personal information")


def _check_folder(path: Path, doc: Doc | None, key_path: PathKey, problems: Problems) -> None:
    # What this user may write is only a warning: `check` often runs as root, or as an
    # operator, for a daemon that runs as its own user (and `replay` may use --state-dir).
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = _existing_parent(path)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            problems.warn(doc, key_path, f"{path} does not exist, and this user cannot create it "
                                         f"({parent} is not a folder it may write)")
        return
    except OSError as exc:
        problems.add(doc, key_path, f"cannot use {path}: {exc.strerror}")
        return
    if not stat.S_ISDIR(st.st_mode):
        problems.add(doc, key_path, f"{path} is not a folder")
    elif not os.access(path, os.W_OK | os.X_OK):
        problems.warn(doc, key_path, f"{path} is not writable by this user")
    elif stat.S_IMODE(st.st_mode) & 0o007:
        problems.warn(doc, key_path, f"{path} is open to every user (mode {stat.S_IMODE(st.st_mode):04o}); "
                                     f"it holds personal information: chmod 700 it")


def _check_file(path: Path, doc: Doc | None, key_path: PathKey, problems: Problems, *, what: str) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return  # created by the daemon itself, privately
    if stat.S_ISDIR(st.st_mode):
        problems.add(doc, key_path, f"{path} is a folder, not a file")
    elif stat.S_IMODE(st.st_mode) & 0o004:
        problems.warn(doc, key_path, f"{path} is readable by every user (mode {stat.S_IMODE(st.st_mode):04o}) "
                                     f"and {what}: chmod 600 it")


def _existing_parent(path: Path) -> Path | None:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return None


def check_named_file(path: Path, doc: Doc | None, key_path: PathKey, problems: Problems, *,
                     max_bytes: int = 1024 * 1024, secret: bool = False) -> None:
    """A file the config names and the daemon reads later (an API key, CA certificates):
    a regular file of a sane size now, rather than a hang or an error at start; a secret
    that others can read is a warning."""
    try:
        _, st = read_regular_file(path, max_bytes)
    except FileNotFoundError:
        problems.add(doc, key_path, f"file not found: {path}")
        return
    except (OSError, ValueError) as exc:
        problems.add(doc, key_path, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        return
    if secret and stat.S_IMODE(st.st_mode) & 0o004:
        problems.warn(doc, key_path, f"{path} is readable by every user (mode {stat.S_IMODE(st.st_mode):04o}) "
                                     f"and holds a secret: chmod 600 it")
