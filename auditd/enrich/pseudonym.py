"""Keyed pseudonyms for customer identifiers, and the key file they come from.

A pseudonym is ``p:`` + the first 16 bytes (32 hex digits) of HMAC-SHA-256(key, id).

Why keyed: customer ids are low-entropy (``C`` + 8 digits is 10⁸ values), so a plain
SHA-256 is reversed by enumerating them in seconds; without the key the HMAC cannot be
computed, so a pseudonym in an alert, a report or Elasticsearch tells nothing about the
customer to someone who lacks the key file. The key is therefore the secret that
matters: mode 0600, never logged, and rotating it changes every pseudonym (so
incidents and counts do not correlate across a rotation).

Why 128 bits: the chance that two of n distinct ids share a pseudonym is about
n² / 2¹²⁹; for a billion ids that is ~1.5·10⁻²¹, so a collision (which would merge two
customers in an incident's count) is not a practical concern, while the short form keeps
events and indices small. The ``p:`` tag makes a pseudonym recognisable at a glance, so
nobody mistakes it for a raw id (or the reverse).

All identifiers share one namespace: a customer's id gives the same pseudonym in
``subject_ids`` and as the ``resource_id`` of a customer record, so incidents can count
distinct customers across both.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from auditd.config.located import Doc, PathKey, Problems, read_regular_file

PREFIX = "p:"
DIGEST_BYTES = 16
MIN_KEY_BYTES = 16
MAX_KEY_FILE_BYTES = 4096  # keygen writes 65; a bigger file is the wrong file


class Pseudonymiser:
    """Maps a raw identifier to its pseudonym; a bounded cache keeps repeats cheap."""

    def __init__(self, key: bytes, *, cache_size: int = 65536):
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a pseudonym key needs at least {MIN_KEY_BYTES} bytes")
        self._inner, self._outer = _hmac_states(bytes(key))
        # the bound matters: ids are unbounded over months, memory is not (~230 B an entry)
        self._cached = PseudonymCache(self._compute, cache_size)
        self._known = self._cached.table.get  # raw -> pseudonym, None when not cached

    def _compute(self, raw: str) -> str:
        inner = self._inner.copy()
        inner.update(raw.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return PREFIX + outer.digest()[:DIGEST_BYTES].hex()

    def __call__(self, raw: str) -> str:
        found = self._known(raw)
        return self._cached(raw) if found is None else found

    def many(self, raws: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.each(list(raws)))

    def each(self, raws: list[str]) -> list[str]:
        """The pseudonyms of a list of ids, in order: cached ones are looked up in C,
        and only the others take a Python call each."""
        out = list(map(self._known, raws))
        if None in out:
            add, find, at = self._cached, out.index, 0
            try:
                while True:
                    at = find(None, at)  # a pseudonym is never None: the next uncached id
                    out[at] = add(raws[at])
                    at += 1
            except ValueError:  # no uncached id left
                pass
        return out

    def __repr__(self) -> str:  # never show the key, even in a traceback's locals
        return "Pseudonymiser(key=<hidden>)"


class CacheInfo(NamedTuple):
    misses: int  # pseudonyms computed
    maxsize: int
    currsize: int


class PseudonymCache:
    """raw id -> pseudonym for at most `maxsize` ids; the oldest entry is forgotten first.

    First in, first out rather than least recently used: a hit is then one dict lookup
    that callers can make in C (`table.get`), with no bookkeeping, and costs about half
    of what an `lru_cache` hit does on a cache too large for the CPU's caches. An id
    still in use when it is forgotten is computed once more.
    """

    def __init__(self, compute: Callable[[str], str], maxsize: int):
        self._compute = compute
        self.maxsize = max(1, maxsize)
        self.table: dict[str, str] = {}
        self._order: deque[str] = deque()  # the table's keys, oldest first
        self.misses = 0

    def __call__(self, raw: str) -> str:
        found = self.table.get(raw)
        return self._add(raw) if found is None else found

    def _add(self, raw: str) -> str:
        value = self._compute(raw)
        table = self.table
        if len(table) >= self.maxsize:
            del table[self._order.popleft()]
        table[raw] = value
        self._order.append(raw)
        self.misses += 1
        return value

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self.misses, self.maxsize, len(self.table))


def _hmac_states(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA-256 (RFC 2104) with the keyed pads hashed once: each pseudonym then costs
    two hash-state copies, about half of what `hmac.digest` costs per call."""
    if len(key) > 64:  # SHA-256's block size
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def load_key(path: Path | str, problems: Problems, *, referrer: Doc | None = None,
             key_path: PathKey = ()) -> bytes | None:
    """Read a key file; a missing, unreadable, empty or short key is a located problem.

    A key file that every user may read is accepted with a warning in `problems`
    (the daemon still works; the operator should chmod 600 it). Text keys, such as the hex that
    `create_key_file` writes, lose one trailing newline; binary keys are used byte for
    byte.
    """
    path = Path(path)
    try:
        # a regular file of a key's size: /dev/zero or a FIFO named by mistake must not hang `check`
        data, st = read_regular_file(path, MAX_KEY_FILE_BYTES)
        mode = st.st_mode
    except FileNotFoundError:
        problems.add(referrer, key_path, f"pseudonym key file not found: {path}; on a first start create it with "
                                         f"`neo-auditd keygen {path}` (a new key, not a lost one restored, "
                                         "changes every pseudonym)")
        return None
    except OSError as exc:
        problems.add(referrer, key_path, f"cannot read pseudonym key file {path}: {exc.strerror}")
        return None
    key = _strip_text_newline(data)
    if not key:
        problems.add(referrer, key_path, f"pseudonym key file is empty: {path}")
        return None
    if len(key) < MIN_KEY_BYTES:
        problems.add(referrer, key_path,
                     f"pseudonym key file {path} holds {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
        return None
    if mode & stat.S_IROTH:  # `check` prints it; the daemon logs it at start and on reload
        problems.warn(referrer, key_path, f"pseudonym key file {path} is readable by every user "
                                          f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    return key


def _strip_text_newline(data: bytes) -> bytes:
    # only printable text: a random binary key that happens to end in 0x0a stays whole
    if data.endswith(b"\n") and all(32 <= b < 127 for b in data.rstrip(b"\r\n")):
        return data.rstrip(b"\r\n")
    return data


def create_key_file(path: Path | str, *, nbytes: int = 32) -> Path:
    """Write a new random key (hex text) readable by its owner only; never overwrite.

    Overwriting would silently change every pseudonym, so an existing file is an error
    (FileExistsError).
    """
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        os.write(fd, (secrets.token_hex(nbytes) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


class IdScrubber:
    """Raw customer ids in an alert's words, replaced by their pseudonyms.

    The fields that hold customers are pseudonymised when an event is enriched; a raw id
    can still reach an alert through a field that never should hold one (a store or a
    partner named by a customer's id, an unknown employee id typed as one) and be
    rendered into the title, the reason or an output field, which go to chat, SMS and
    Elasticsearch. With `pseudonym.id_patterns` (what the company's ids look like), every
    match in those words becomes the pseudonym the id has everywhere else."""

    def __init__(self, patterns: Iterable[str], pseudonymise: Callable[[str], str]):
        from auditd.config.regex import compile_regex

        self._patterns = [compile_regex(p) for p in patterns]
        self._pseudonymise = pseudonymise

    def text(self, text: str) -> str:
        for pattern in self._patterns:
            text = pattern.replace_each(text, self._pseudonymise)
        return text

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(v) for v in value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def alert(self, alert):
        """The alert with its title, reason, output fields and actor scrubbed (itself if
        clean). The actor too: it keys the incident and is written into its timeline, the
        breach register and the reports; a customer's id there (a self-service account
        logged as the user) is keyed by its pseudonym just as well."""
        import msgspec

        title, reason = self.text(alert.title), None if alert.reason is None else self.text(alert.reason)
        fields = self.value(alert.output_fields) if alert.output_fields else alert.output_fields
        actor = None if alert.actor is None else self.text(alert.actor)
        if title == alert.title and reason == alert.reason and fields == alert.output_fields and actor == alert.actor:
            return alert
        return msgspec.structs.replace(alert, title=title, reason=reason, output_fields=fields, actor=actor)
