"""Convert located YAML data into frozen dataclasses, collecting every problem.

Supported field types: str, int, float, bool, None unions, Literal, list/tuple,
dict[str, X], nested dataclasses, Path (relative to the file that names it), date,
datetime (made timezone-aware), Duration, and any class with a
``from_config(value) -> instance`` classmethod that raises ValueError with a message.
A dataclass may define ``check(self) -> Iterable[tuple[str, str]]`` returning
(relative key, message) pairs for cross-field rules. Unknown keys are errors.

Nothing a file holds ends in a traceback: whatever a ``from_config``, a constructor or
a ``check`` raises becomes a problem at the value's location; floats must be finite,
integers fit in 64 bits, paths hold no NUL, and text the YAML reader rewrote (00123)
is refused with "quote it". Unknown keys and enum values say what was probably meant.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import re
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from auditd.config.located import Doc, PathKey, Problems, format_key_path
from auditd.errors import ALREADY_REPORTED

MISSING: Any = dataclasses.MISSING
DEFAULT_ZONE = ZoneInfo("Asia/Shanghai")
MAX_DURATION_S = 100 * 366 * 86400.0
# Integers travel into C (sockets, file offsets, SQLite), where a bigger one overflows.
MAX_INT = 2**63 - 1


def near_miss(value: Any, choices: Iterable[Any]) -> str | None:
    """The choice `value` most likely meant (the same but for case, or close), else None."""
    if not isinstance(value, str):
        return None
    names = [str(c) for c in choices]
    by_case = {n.casefold(): n for n in names}
    if value.casefold() in by_case:
        return by_case[value.casefold()]
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """' (did you mean 'x'?)' for a near miss among the choices, else ''."""
    meant = near_miss(value, choices)
    return f" (did you mean {meant!r}?)" if meant is not None else ""


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Duration:
    """A span of time written as '15m', '4h', '90d', '30s' or a number of seconds."""

    seconds: float

    _UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

    @classmethod
    def from_config(cls, value: Any) -> "Duration":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"expected a duration such as '15m', '4h' or '90d', got {_describe(value)}")
        if isinstance(value, int) and abs(value) > MAX_INT:
            seconds = float("inf")  # refused below
        elif isinstance(value, (int, float)):
            seconds = float(value)
        else:
            m = re.fullmatch(r"\s*(\d{1,15}(?:\.\d{1,15})?)\s*(ms|s|m|h|d|w)\s*", value)
            if not m:
                raise ValueError(f"expected a duration such as '15m', '4h' or '90d', got {value!r}")
            seconds = float(m.group(1)) * cls._UNITS[m.group(2)]
        if not 0 <= seconds <= MAX_DURATION_S:  # also refuses NaN
            raise ValueError(f"expected a duration from 0 to 100 years, got {_short(value)}")
        return cls(seconds)

    @property
    def timedelta(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.seconds)


def unknown_zone(name: str) -> str | None:
    """Why `name` is not an IANA time zone (with the nearest names), or None if it is one."""
    try:
        ZoneInfo(name)
        return None
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name that is a folder, e.g. 'Asia'
        pass
    from zoneinfo import available_timezones

    return f"unknown time zone {name!r}{did_you_mean(name, sorted(available_timezones()))}"


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def convert(tp: Any, value: Any, doc: Doc, path: PathKey, problems: Problems) -> Any:
    """Convert value to tp; on failure record a problem and return MISSING."""
    if value is None and path in doc.broken:
        # The YAML value itself was bad and is reported; this twin keeps "a problem was
        # added" true for callers that count, and is dropped when problems are shown.
        problems.add(doc, path, ALREADY_REPORTED)
        return MISSING
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return convert(rest[0], value, doc, path, problems)
        for alt in rest:  # first alternative that converts without problems wins
            trial = Problems()
            out = convert(alt, value, doc, path, trial)
            if not trial:
                return out
        _, why = doc.read_as_text(path, value) if str in rest else (None, None)
        problems.add(doc, path, why or f"expected {' or '.join(_type_name(a) for a in rest)}, got {_describe(value)}")
        return MISSING
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, (str, int, float, bool)) and any(value == c and type(value) is type(c) for c in choices):
            return value
        got = repr(value) if isinstance(value, (str, int, float, bool)) else _describe(value)
        problems.add(doc, path, f"expected {_type_name(tp)}, got {got}{did_you_mean(value, choices)}")
        return MISSING
    if dataclasses.is_dataclass(tp) and not hasattr(tp, "from_config"):
        return _convert_dataclass(tp, value, doc, path, problems)
    if origin in (list, tuple):
        if not isinstance(value, list):
            problems.add(doc, path, f"expected a list, got {_describe(value)}")
            return MISSING
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [convert(item_tp, v, doc, path + (i,), problems) for i, v in enumerate(value)]
        # A failed item stays as MISSING so that indices in later cross-checks still
        # match the file; such a document has problems and is never used.
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            problems.add(doc, path, f"expected a mapping, got {_describe(value)}")
            return MISSING
        _, value_tp = get_args(tp) or (str, Any)
        out = {k: convert(value_tp, v, doc, path + (k,), problems) for k, v in value.items()}
        return out
    return _convert_scalar(tp, value, doc, path, problems)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _convert_scalar(tp: Any, value: Any, doc: Doc, path: PathKey, problems: Problems) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) <= MAX_INT:
                return value
            problems.add(doc, path, f"{_short(value)} is out of range (at most {MAX_INT})")
            return MISSING
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > MAX_INT or not math.isfinite(value):
                problems.add(doc, path, f"expected a finite number, got {_short(value)}")
                return MISSING
            return float(value)
    elif tp is str:
        text, why = doc.read_as_text(path, value)  # 10086 unquoted is its text; 00123 is not
        if text is not None:
            return text
        if why is not None:
            problems.add(doc, path, why)
            return MISSING
    elif tp is Path:
        if isinstance(value, str) and value:
            if "\0" in value:
                problems.add(doc, path, "a path cannot hold a NUL character")
                return MISSING
            p = Path(value)
            p = p if p.is_absolute() else (doc.folder / p)
            too_long = _too_long(p)
            if too_long:
                problems.add(doc, path, too_long)
                return MISSING
            return p
    elif tp is dt.datetime:
        return _to_datetime(value, doc, path, problems)
    elif tp is dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
    elif hasattr(tp, "from_config"):
        try:
            return tp.from_config(value)
        except ValueError as exc:
            problems.add(doc, path, str(exc))
            return MISSING
        except Exception as exc:  # a bug in a from_config must still be a located problem, not a crash
            problems.add(doc, path, f"cannot convert {_describe(value)}: {type(exc).__name__}: {exc}")
            return MISSING
    else:  # pragma: no cover - a programming error in a settings class
        raise TypeError(f"unsupported config type {tp!r}")
    problems.add(doc, path, f"expected {_type_name(tp)}, got {_describe(value)}")
    return MISSING


NAME_MAX, PATH_MAX = 255, 4096  # Linux: bytes in one name, in a whole path with its NUL


def _too_long(p: Path) -> str | None:
    """Why no file can have this path (the system would refuse every call on it with
    ENAMETOOLONG), or None."""
    for name in p.parts:
        size = len(name.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            return f"a path with a name of {size:,} bytes cannot exist (at most {NAME_MAX} bytes a name)"
    size = len(str(p).encode("utf-8", "surrogateescape"))
    if size >= PATH_MAX:
        return f"a path of {size:,} bytes cannot exist (at most {PATH_MAX - 1} bytes)"
    return None


def _to_datetime(value: Any, doc: Doc, path: PathKey, problems: Problems) -> Any:
    if isinstance(value, dt.datetime):
        out = value
    elif isinstance(value, dt.date):
        out = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            out = dt.datetime.fromisoformat(value)
        except ValueError:
            problems.add(doc, path, f"expected an ISO 8601 time, got {value!r}")
            return MISSING
    else:
        problems.add(doc, path, f"expected a time, got {_describe(value)}")
        return MISSING
    if out.tzinfo is None:  # the company's zone unless the file says otherwise
        out = out.replace(tzinfo=DEFAULT_ZONE)
    try:
        return out.astimezone(dt.timezone.utc)
    except (OverflowError, ValueError):  # year 1 or 9999 moved across midnight
        problems.add(doc, path, f"time {value!s} is out of range")
        return MISSING


def _convert_dataclass(cls: type, value: Any, doc: Doc, path: PathKey, problems: Problems) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.add(doc, path, f"expected a mapping, got {_describe(value)}")
        return MISSING
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    known = {_key_of(f): f for f in fields.values()}
    misspelt: set[str] = set()  # required keys an unknown key is a near miss of: said once, not twice
    for key in value:
        if key not in known:
            valid = ", ".join(sorted(known))
            meant = near_miss(key, known)
            hint = f" (did you mean {meant!r}?)" if meant is not None else _indent_hint(cls, key, path)
            problems.add(doc, path + (key,), f"unknown key '{key}'{hint} (valid keys: {valid})", at_key=True)
            if meant is not None:
                misspelt.add(meant)
    kwargs: dict[str, Any] = {}
    broken = False
    before = len(problems.items)
    for key, f in known.items():
        if key in value:
            out = convert(hints[f.name], value[key], doc, path + (key,), problems)
            if out is MISSING:
                broken = True
            else:
                kwargs[f.name] = out
        elif f.default is MISSING and f.default_factory is MISSING:
            if key not in misspelt:
                problems.add(doc, path + (key,), f"missing required key '{key}'")
            else:
                problems.add(doc, path + (key,), ALREADY_REPORTED)
            broken = True
    if broken:
        return MISSING
    try:
        obj = cls(**kwargs)
    except Exception as exc:  # a __post_init__ that refuses what the fields let through
        problems.add(doc, path, f"cannot build this value: {type(exc).__name__}: {exc}")
        return MISSING
    _run_check(obj, doc, path, problems, parts_broken=len(problems.items) > before)
    return obj


def _indent_hint(cls: type, key: Any, path: PathKey) -> str:
    """' (did you mean 'directory.reload_check_s'? ...)' for a key of a section one level down,
    the usual result of a line indented too little."""
    if not isinstance(key, str):
        return ""
    homes = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls).get(f.name)
        if get_origin(tp) in (typing.Union, types.UnionType):
            inner = [a for a in get_args(tp) if a is not type(None)]
            tp = inner[0] if len(inner) == 1 else None
        under: PathKey = (_key_of(f),)
        if get_origin(tp) in (list, tuple) and get_args(tp):
            tp, under = get_args(tp)[0], (_key_of(f), 0)  # a key of a list's items: the first one's
        if dataclasses.is_dataclass(tp) and any(_key_of(g) == key for g in dataclasses.fields(tp)):
            homes.append(format_key_path(path + under + (key,)))
    if not homes:
        return ""
    return f" (did you mean {' or '.join(repr(h) for h in homes)}? indent it under {homes[0][:-len(key) - 1]!r})"


def _run_check(obj: Any, doc: Doc, path: PathKey, problems: Problems, *, parts_broken: bool) -> None:
    """The dataclass's cross-field check; whatever it raises becomes a located problem.

    An object some of whose parts failed (a list keeps failed items as MISSING) may
    trip its own check; those parts' problems are already reported, so that is quiet.
    """
    check = getattr(obj, "check", None)
    if check is None:
        return
    try:
        for rel_key, message in check():
            rel: PathKey = tuple(rel_key) if isinstance(rel_key, tuple) else ((rel_key,) if rel_key else ())
            problems.add(doc, path + rel, message)
    except Exception as exc:
        if not parts_broken:
            problems.add(doc, path, f"cannot check this value: {type(exc).__name__}: {exc}")


def _key_of(f: dataclasses.Field) -> str:
    """The YAML key of a field: its name, unless metadata says otherwise."""
    return f.metadata.get("key", f.name)


def key(name: str, **kwargs: Any) -> Any:
    """A dataclass field whose YAML key differs from its Python name (e.g. 'in')."""
    return dataclasses.field(metadata={"key": name}, **kwargs)
