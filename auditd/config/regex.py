"""Regular expressions from configuration, run on a linear-time engine (RE2).

Rule conditions (``regex '...'``), a format's ``pattern`` and a field's ``extract``
are written by operators and run on every event. A backtracking engine such as
Python's ``re`` takes exponential time on patterns like ``^(a+)+$`` against a long
line, and one such line would stall the whole pipeline. RE2 matches in time linear
in the input whatever the pattern, so every configured pattern is compiled here, and
one that RE2 cannot run (it is not a regular language) is a configuration problem
with its reason, never a fallback to ``re``.

What changes for someone used to Python's ``re``:

- ``\\w``, ``\\d``, ``\\s`` and ``\\b`` are ASCII-only: Chinese text is ``\\p{Han}``,
  any letter ``\\p{L}``, any digit ``\\p{N}``;
- no back-references (``\\1``, ``(?P=name)``), no look-ahead or look-behind
  (``(?=``, ``(?!``, ``(?<=``, ``(?<!``), no atomic groups or possessive repeats;
- ``\\Z`` is written ``\\z``; ``$`` matches only at the very end (not before a final
  newline); ``\\uXXXX`` is written ``\\x{XXXX}``; a repeat count is at most 1000.

Matching is a search (anywhere in the value), as with ``re.search``. The engine's own
error log (C++ on stderr) is switched off: its reasons come back as the problem text.
RE2 is slower than ``re`` to *start* a match on short text (~0.5 µs against ~0.15),
so the answer for a short value (a rule's yes/no, an extract's group) is kept per
distinct value in a bounded cache: the values rules and extracts see (user ids, hosts,
addresses, actions) repeat endlessly.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

import re2
from re2 import _re2

# Values longer than this are matched every time rather than cached: a cache of long
# lines would hold megabytes, and a long line is rarely seen twice.
CACHED_VALUE_CHARS = 256
CACHE_ENTRIES = 16_384  # per distinct pattern; ~1-2 MB when full

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 otherwise writes each refusal to stderr from C++
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_NO_MATCH = (-1, -1)

# Constructs RE2 refuses, with what to write instead; checked before RE2's own (terser) reason.
_UNSUPPORTED = (
    (re.compile(r"\\[1-9]|\(\?P="), "back-references (\\1, (?P=name)) are not supported"),
    (re.compile(r"\(\?<?[=!]"), "look-ahead and look-behind ((?=, (?!, (?<=, (?<!) are not supported: "
     "match the text itself, or test it in two conditions"),
    (re.compile(r"\(\?>|[*+?}][+]"), "atomic groups and possessive repeats are not supported"),
    (re.compile(r"\\Z"), "\\Z is written \\z (end of text)"),
    (re.compile(r"\\u[0-9A-Fa-f]{4}"), "\\uXXXX is written \\x{XXXX}"),
)


class RegexError(ValueError):
    """A pattern RE2 refuses; the message says why and what to write instead."""


class LinearRegex:
    """A compiled pattern: `search` (yes/no), `extract` (first group) and `named_groups`."""

    __slots__ = ("pattern", "groups", "names", "_match", "search", "extract", "__weakref__")

    def __init__(self, pattern: str, compiled: "_re2.RE2"):
        self.pattern = pattern
        self.groups = compiled.NumberOfCapturingGroups()
        self.names = tuple((name.decode(), index) for name, index in compiled.NamedCapturingGroups())
        self._match = compiled.Match
        self.search = _cached(self._search)
        self.extract = _cached(self._extract)

    def _spans(self, text: str) -> tuple[bytes, list[tuple[int, int]]]:
        data = text.encode("utf-8", "surrogatepass")
        return data, self._match(_UNANCHORED, data, 0, len(data))

    def _search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in text."""
        data = text.encode("utf-8", "surrogatepass")
        return self._match(_UNANCHORED, data, 0, len(data))[0] != _NO_MATCH

    def _extract(self, text: str) -> str | None:
        """The first group of the first match (the whole match without groups); None without a match."""
        data, spans = self._spans(text)
        if spans[0] == _NO_MATCH:
            return None
        start, end = spans[1] if self.groups else spans[0]
        return None if start < 0 else data[start:end].decode("utf-8", "replace")

    def replace_each(self, text: str, replacement: Callable[[str], str], limit: int = 1000) -> str:
        """`text` with each (non-overlapping, non-empty) match replaced by
        `replacement(match)`, in one pass: what a replacement writes is never matched
        again. At most `limit` matches are replaced."""
        data = text.encode("utf-8", "surrogatepass")
        pieces: list[str] = []
        pos = kept = n = 0
        while pos <= len(data) and n < limit:
            start, end = self._match(_UNANCHORED, data, pos, len(data))[0]
            if (start, end) == _NO_MATCH:
                break
            if end == start:  # an empty match replaces nothing
                pos = end + 1
                continue
            pieces += [data[kept:start].decode("utf-8", "surrogatepass"),
                       replacement(data[start:end].decode("utf-8", "surrogatepass"))]
            pos = kept = end
            n += 1
        if not pieces:
            return text
        pieces.append(data[kept:].decode("utf-8", "surrogatepass"))
        return "".join(pieces)

    def named_groups(self, text: str) -> dict[str, str] | None:
        """Named groups that took part in the first match; None without a match."""
        data, spans = self._spans(text)
        if spans[0] == _NO_MATCH:
            return None
        out = {}
        for name, index in self.names:
            start, end = spans[index]
            if start >= 0:
                out[name] = data[start:end].decode("utf-8", "replace")
        return out

    def __eq__(self, other: object) -> bool:  # the same text is the same pattern, as for re.Pattern
        return isinstance(other, LinearRegex) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(("LinearRegex", self.pattern))

    def __repr__(self) -> str:
        return f"LinearRegex({self.pattern!r})"


def _cached(function: Callable[[str], object]) -> Callable[[str], object]:
    """`function` answered from a bounded cache for short values (rules and extracts see
    the same user ids, hosts and addresses over and over)."""
    cached = lru_cache(maxsize=CACHE_ENTRIES)(function)

    def answer(text: str) -> object:
        return cached(text) if len(text) <= CACHED_VALUE_CHARS else function(text)

    return answer


def compile_regex(pattern: str) -> LinearRegex:
    """Compile with RE2; raise RegexError naming the construct RE2 refuses."""
    if not isinstance(pattern, str):
        raise RegexError(f"expected a pattern as text, got {type(pattern).__name__}")
    compiled = _re2.RE2(pattern.encode("utf-8", "surrogatepass"), _OPTIONS)
    if compiled.ok():
        return LinearRegex(pattern, compiled)
    for construct, why in _UNSUPPORTED:
        if construct.search(pattern):
            raise RegexError(f"{why} (regexes run on RE2, in linear time)")
    reason = compiled.error()
    reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    raise RegexError(f"invalid regular expression: {reason}")
