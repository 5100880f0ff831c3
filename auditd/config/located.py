"""YAML documents that remember where each value came from.

Every error about a config, rule, playbook or directory file must name file, line,
column and key path, so YAML is composed into nodes (with the C loader when
available) and each value's position is kept beside the plain data, keyed by its path.

Every file is hostile input, so reading one never hangs, crashes or exhausts memory:
it is opened non-blocking and must be a regular file of at most `MAX_FILE_BYTES`
(not a FIFO, not /dev/zero); nesting deeper than `MAX_DEPTH` and aliases expanding to
more than `ALIAS_EXPANSION_LIMIT` values are refused; a scalar YAML cannot construct
(2026-13-45 as a date, a bad !!tag) is a located problem. The text of unquoted
scalars that YAML 1.1 typed (00123, 1:30, yes) is kept, so that loaders wanting text
can refuse what YAML rewrote (`Doc.read_as_text`) instead of using 83 or 90.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from auditd.errors import ALREADY_REPORTED, ConfigProblem, Location

try:  # the C loader is several times faster on large rule and directory files
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

PathKey = tuple[str | int, ...]


def format_key_path(path: PathKey) -> str:
    """('rules', 2, 'condition') -> 'rules[2].condition'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Doc:
    """A parsed YAML file: plain data plus the location of every value."""

    file: str
    data: Any
    marks: dict[PathKey, Location] = field(default_factory=dict)  # where each value starts
    key_marks: dict[PathKey, Location] = field(default_factory=dict)  # where each mapping key is
    # The text of unquoted scalars that YAML 1.1 read as something other than text (a
    # number, a boolean, a date, null): `00123` is 83 and `1:30` is 90 by then, so a
    # loader that wants text asks `read_as_text` rather than calling str() on the value.
    plain: dict[PathKey, str] = field(default_factory=dict)
    broken: set[PathKey] = field(default_factory=set)  # scalars already reported (a bad !!tag, 2026-13-45): None

    def read_as_text(self, path: PathKey, value: Any) -> tuple[str | None, str | None]:
        """(text, None) for a value meant as text, or (None, why) when YAML changed it.

        A number whose digits are exactly as written (10086, 2.5) is taken as its text;
        anything YAML rewrote (00123, 0x1F, 1_000, 1:30, 1.50, yes, 2026-01-01) is
        refused with the hint to quote it, because the text it now holds is not the
        text written, and an id list or an exception would silently stop matching.
        """
        if isinstance(value, str):
            return value, None
        written = self.plain.get(path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if written is None or written == str(value):
                return str(value), None
            return None, (f"YAML 1.1 reads the unquoted {written} as the number {value!r}; "
                          f"quote it ('{written}') if it is text")
        if written is not None and isinstance(value, (bool, dt.date)):
            return None, (f"YAML 1.1 reads the unquoted {written} as {_yaml_kind(value)}; "
                          f"quote it ('{written}') if it is text")
        return None, None

    @property
    def folder(self) -> Path:
        return Path(self.file).parent

    def where(self, path: PathKey, *, at_key: bool = False) -> Location | None:
        """The location of the value at path (or of its key), or of its nearest located ancestor."""
        if at_key and path in self.key_marks:
            return self.key_marks[path]
        while True:
            loc = self.marks.get(path)
            if loc is not None or not path:
                return loc or Location(self.file, 1, 1)
            path = path[:-1]

    def problem(self, path: PathKey, message: str, *, at_key: bool = False) -> ConfigProblem:
        return ConfigProblem(self.where(path, at_key=at_key), format_key_path(path), message)


class Problems:
    """Collects every problem found while loading, so all are reported at once."""

    def __init__(self) -> None:
        self.items: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []  # said, but not a reason to refuse the set

    def add(self, doc: Doc | None, path: PathKey, message: str, *, at_key: bool = False) -> None:
        if doc is None:
            self.items.append(ConfigProblem(None, format_key_path(path), message))
        else:
            self.items.append(doc.problem(path, message, at_key=at_key))

    def warn(self, doc: Doc | None, path: PathKey, message: str) -> None:
        if doc is None:
            self.warnings.append(ConfigProblem(None, format_key_path(path), message))
        else:
            self.warnings.append(doc.problem(path, message))

    def extend(self, other: "Problems") -> None:
        self.items.extend(other.items)
        self.warnings.extend(other.warnings)

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def shown(self) -> list[ConfigProblem]:
        """The problems to show (without the markers of values already reported)."""
        return [p for p in self.items if p.message != ALREADY_REPORTED]

    def raise_if_any(self) -> None:
        from auditd.errors import ConfigError

        if self.items:
            raise ConfigError(self.items)


def _loc(file: str, node: yaml.Node) -> Location:
    mark = node.start_mark
    return Location(file, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, file: str, problems: Problems) -> Doc | None:
    """Parse YAML text; a syntax error becomes a located problem and None."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        problems.items.append(ConfigProblem(loc, "", f"invalid YAML: {_yaml_reason(exc)}{_indent_hint(exc)}"))
        return None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # a reader error (bad bytes), no mark
        problems.items.append(ConfigProblem(Location(file, 1, 1), "", f"invalid YAML: {_yaml_reason(exc)}"))
        return None
    finally:
        loader.dispose()
    doc = Doc(file=file, data=None)
    if root is None:
        doc.data = {}
        return doc
    builder = _Builder(doc, loader, problems)
    try:
        doc.data = builder.build(root, ())
    except _TooLarge:
        problems.items.append(ConfigProblem(Location(file, 1, 1), "",
                                            f"aliases (*name) expand to more than {ALIAS_EXPANSION_LIMIT:,} "
                                            f"extra values; refusing to build it"))
        return None
    return doc


# Aliases may repeat a small mapping here and there; a "billion laughs" file (aliases
# of aliases) would expand to more values than memory holds, so the expansion is capped.
ALIAS_EXPANSION_LIMIT = 100_000
MAX_DEPTH = 64  # no file of ours nests half as deep; building deeper ones would exhaust the stack


class _TooLarge(Exception):
    pass


_STR_TAG = "tag:yaml.org,2002:str"


class _Builder:
    """Builds plain data from the composed nodes, recording where each value came from."""

    def __init__(self, doc: Doc, loader: Any, problems: Problems):
        self.doc = doc
        self.loader = loader
        self.problems = problems
        self.budget = ALIAS_EXPANSION_LIMIT  # values built again through an alias
        self._collections: set[int] = set()  # collection nodes built once already

    def build(self, node: yaml.Node, path: PathKey, aliased: bool = False) -> Any:
        doc = self.doc
        collection = isinstance(node, (yaml.MappingNode, yaml.SequenceNode))
        if collection:
            aliased = aliased or id(node) in self._collections
            self._collections.add(id(node))
        if aliased:
            self.budget -= 1
            if self.budget < 0:
                raise _TooLarge()
        doc.marks[path] = _loc(doc.file, node)
        if collection and len(path) >= MAX_DEPTH:
            self.problems.add(doc, path, f"nested deeper than {MAX_DEPTH} levels")
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, aliased)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), aliased) for i, item in enumerate(node.value)]
        if node.tag == _STR_TAG:  # most values: what the constructor would return, without it
            return node.value
        value = self._scalar(node, path)
        if not node.style and not isinstance(value, str):  # plain: None (Python loader) or '' (C loader)
            doc.plain[path] = node.value  # what was written, before YAML 1.1 typed it
        return value

    def _mapping(self, node: yaml.MappingNode, path: PathKey, aliased: bool) -> dict[str, Any]:
        doc = self.doc
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                key = None
            elif key_node.tag == _STR_TAG:
                key = key_node.value
            else:
                key = self._scalar(key_node, path)
            if not isinstance(key, (str, int, float, bool)):
                self.problems.items.append(
                    ConfigProblem(_loc(doc.file, key_node), format_key_path(path), "keys must be scalars")
                )
                continue
            if not isinstance(key, str) and str(key) != key_node.value:  # 01: or yes: as a key
                self.problems.items.append(ConfigProblem(
                    _loc(doc.file, key_node), format_key_path(path + (key_node.value,)),
                    f"YAML 1.1 reads the unquoted key {key_node.value} as {key!r}; quote it ('{key_node.value}')"))
                continue
            key = str(key)
            if key in out:
                self.problems.items.append(
                    ConfigProblem(_loc(doc.file, key_node), format_key_path(path + (key,)), "duplicate key")
                )
                continue
            out[key] = self.build(value_node, path + (key,), aliased)
            doc.key_marks[path + (key,)] = _loc(doc.file, key_node)
        return out

    def _scalar(self, node: yaml.Node, path: PathKey) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # e.g. 2026-13-45 as a date
            self.problems.items.append(
                ConfigProblem(_loc(self.doc.file, node), format_key_path(path), f"bad value: {_yaml_reason(exc)}")
            )
            self.doc.broken.add(path)
            return None


def _yaml_reason(exc: BaseException) -> str:
    """The reason alone, without PyYAML's second line that repeats the position."""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        if parts:
            return ", ".join(parts)
    return str(exc).split("\n")[0].strip() or type(exc).__name__


# What PyYAML says when a line is indented more or less than its neighbours.
_INDENT_PROBLEMS = ("mapping values are not allowed", "did not find expected '-' indicator",
                    "did not find expected key", "expected <block end>")


def _indent_hint(exc: yaml.MarkedYAMLError) -> str:
    if not any(p in (exc.problem or "") for p in _INDENT_PROBLEMS):
        return ""
    return ("; check the indentation of this line and the one above it: a key lines up with the other "
            "keys of its section, two spaces deeper than the section's name")


def _yaml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return "a time"
    return "a date"


# A config, rule, format or directory file larger than this is refused rather than read
# (a log file named by mistake, /dev/zero): the biggest real ones are a few megabytes.
MAX_FILE_BYTES = 64 * 1024 * 1024


def read_regular_file(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes and its stat. Raises OSError (with strerror).

    Opened non-blocking, so that a FIFO named by mistake cannot hang `check` or a
    reload; only a regular file is read (not /dev/zero, not /proc/self/mem), and at
    most `max_bytes` of it.
    """
    fd, st = _open_regular(path)
    try:
        too_big = OSError(errno.EFBIG, f"larger than {_size(max_bytes)}")
        if st.st_size > max_bytes:
            raise too_big
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        if remaining <= 0:  # it grew while being read
            raise too_big
    finally:
        os.close(fd)
    return b"".join(chunks), st


def regular_file_stat(path: Path) -> os.stat_result:
    """The stat of a regular file, opened as `read_regular_file` opens it (non-blocking:
    a FIFO cannot hang the caller) but not read: for a file another library opens (an
    SQLite database). Raises OSError (with strerror) for anything but a regular file."""
    fd, st = _open_regular(path)
    os.close(fd)
    return st


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """A descriptor of a regular file and its stat, opened non-blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n:,} bytes"


def read_config_text(path: Path) -> str:
    """A config file's text (UTF-8; a BOM from Windows editors dropped). Raises OSError
    or UnicodeDecodeError; see `read_regular_file`."""
    text = read_regular_file(path, MAX_FILE_BYTES)[0].decode("utf-8")
    return text[1:] if text.startswith("\ufeff") else text


def load_yaml_file(path: Path, problems: Problems, *, key_path: PathKey = (), referrer: Doc | None = None) -> Doc | None:
    """Read and parse a YAML file; a missing or unreadable file is a located problem."""
    try:
        text = read_config_text(Path(path))
    except FileNotFoundError:
        _file_problem(problems, referrer, key_path, path, f"file not found: {path}")
        return None
    except UnicodeDecodeError as exc:
        _file_problem(problems, referrer, key_path, path, f"{path} is not UTF-8 text (bad byte at offset {exc.start})")
        return None
    except (OSError, ValueError) as exc:  # a folder, a device, an embedded NUL in the name
        why = getattr(exc, "strerror", None) or str(exc)
        _file_problem(problems, referrer, key_path, path, f"cannot read {path}: {why}")
        return None
    return parse_yaml(text, str(path), problems)


def _file_problem(problems: Problems, referrer: Doc | None, key_path: PathKey, path: Path, why: str) -> None:
    if referrer is None:  # a file no other file names (the config itself): the file is the location
        problems.items.append(ConfigProblem(Location(str(path), 0, 0), format_key_path(key_path), why))
    else:
        problems.add(referrer, key_path, why)
