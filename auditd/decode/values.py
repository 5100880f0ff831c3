"""Raw record values -> AccessEvent values: one small function per target kind, and times.

These helpers raise ValueError with a message that names what was found; the field
rule that calls them adds the target field and the path, and turns it into a
DecodeError, so that the quarantined record says exactly what was wrong.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from functools import partial
from typing import Any, Callable

import msgspec

from auditd.event import EARLIEST, FIELDS, LATEST  # FIELDS: where a field sits on an event

UTC = dt.timezone.utc
# The largest record count: SQLite and msgpack hold 64-bit integers; no export carries
# more records than there are people, a trillion is far above any real one.
MAX_COUNT = 10**12
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_TRUE_WORDS = frozenset(("true", "yes", "on", "1"))
_FALSE_WORDS = frozenset(("false", "no", "off", "0"))


def describe(value: Any, limit: int = 60) -> str:
    """A short, printable description of a bad value for a quarantine reason."""
    if isinstance(value, (dict, list, tuple)):
        kind = "an object" if isinstance(value, dict) else "a list"
        return f"{kind} {_clip(repr(value), limit)}"
    return _clip(repr(value), limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_text(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # ids such as 10023 are often written as numbers
    raise ValueError(f"expected text, got {describe(value)}")


def to_int(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)  # text formats (csv, kv, regex) give every value as text
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"expected an integer, got {describe(value)}")


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError(f"expected true or false, got {describe(value)}")


def to_list(value: Any) -> tuple[str, ...]:
    """A list of text; one scalar becomes a list of one (use `split` for 'a,b,c')."""
    if isinstance(value, (list, tuple)):
        return tuple(to_text(item) for item in value if item is not None and item != "")
    return (to_text(value),)


def to_labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object of labels, got {describe(value)}")
    return {str(k): to_text(v) for k, v in value.items() if v is not None and v != ""}


# The kinds of event.FIELDS other than "time", which has its own parser below.
_ADDRESSES: dict[str, bool] = {}  # text -> is it an IP address: asked once per distinct value
_ADDRESSES_KEPT = 65536
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}", re.ASCII)


def is_address(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address (answers kept per distinct text, bounded)."""
    known = _ADDRESSES.get(text)
    if known is None:
        if len(_ADDRESSES) >= _ADDRESSES_KEPT:
            _ADDRESSES.clear()
        try:
            # a scope id (fe80::1%eth0) may hold any text at all: never in an address field
            known = "%" not in text and ipaddress.ip_address(text) is not None
        except ValueError:  # Python refuses 06.237.252.245 (octal?); logs write it, meaning decimal
            known = bool(_DOTTED_QUAD.fullmatch(text)) and all(int(part) <= 255 for part in text.split("."))
        _ADDRESSES[text] = known
    return known


_COUNTRY = re.compile(r"[A-Z]{2}", re.ASCII)


def is_country(text: str) -> bool:
    """A two-letter country code (ISO 3166-1 alpha-2, upper case)."""
    return _COUNTRY.fullmatch(text) is not None


# Fields whose text reaches titles, evidence and regulator reports: each holds one shape
# or the record is quarantined, so free text (a phone number, a name) cannot ride in them.
SHAPES: dict[str, tuple[Callable[[str], bool], str]] = {
    "source.ip": (is_address, "an IP address"),
    "destination.ip": (is_address, "an IP address"),
    "destination.geo.country_iso_code": (is_country, "a two-letter country code such as CN"),
}


def event_problem(event: Any) -> str | None:
    """What makes a built event one the decoders would have quarantined (an address field
    not an address, a time or count out of bounds), or None: for events that come whole
    (ECS documents), not through a mapping."""
    for name, (valid, what) in SHAPES.items():
        value = getattr(event, FIELDS[name].attr, None)
        if value is not None and not (isinstance(value, str) and valid(value)):
            return f"{name}: expected {what}, got {describe(value)}"
    if not EARLIEST <= event.timestamp < LATEST:
        return f"@timestamp: {event.timestamp.isoformat()} is outside the years {EARLIEST.year} to {LATEST.year - 1}"
    if not 0 <= event.record_count <= MAX_COUNT:
        return f"neo.data.record_count: must be from 0 to {MAX_COUNT:,}, got {describe(event.record_count)}"
    return None


def shape_step(name: str) -> Callable[[Any], Any]:
    """The conversion step that refuses a value of the wrong shape for field `name`."""
    valid, what = SHAPES[name]

    def check(value: Any) -> Any:
        if value is not None and not valid(value):
            raise ValueError(f"expected {what}, got {describe(value)} (extract: takes one out of a longer text)")
        return value

    return check


COERCERS: dict[str, Callable[[Any], Any]] = {
    "str": to_text,
    "ip": to_text,  # its shape: SHAPES, a step of its own
    "int": to_int,
    "bool": to_bool,
    "list": to_list,
    "map": to_labels,
}


# --- times ------------------------------------------------------------------------------


def make_time_parser(time_format: str, zone: dt.tzinfo) -> Callable[[Any], dt.datetime]:
    """A parser giving an aware UTC datetime; times without an offset are in `zone`."""
    named = {
        "iso8601": parse_iso8601,
        "epoch_s": partial(_parse_epoch, unit="seconds"),
        "epoch_ms": partial(_parse_epoch, unit="milliseconds"),
        "postgres": _parse_postgres,
    }
    parse = named.get(time_format) or partial(_parse_strptime, time_format=time_format)

    def to_time(value: Any) -> dt.datetime:
        out = parse(value)
        if out.tzinfo is None:
            out = out.replace(tzinfo=zone)
        try:
            utc = out.astimezone(UTC)
        except (OverflowError, ValueError):
            utc = None
        if utc is None or not EARLIEST <= utc < LATEST:
            shown = out.isoformat() if isinstance(value, dt.datetime) else describe(value)
            raise ValueError(f"time {shown} is outside the years {EARLIEST.year} to {LATEST.year - 1}: no access "
                             "log holds it, and its local day, hour and deadlines could not be counted")
        return utc

    return to_time


def parse_iso8601(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value  # already parsed by a typed decoder
    if type(value) is not str:
        raise ValueError(f"expected an ISO 8601 time, got {describe(value)}")
    try:
        # msgspec's RFC 3339 parser is the one the typed JSON decoder uses, so both
        # decoding paths read a time the same way; fromisoformat takes the rest of ISO 8601
        return msgspec.convert(value, dt.datetime)
    except msgspec.ValidationError:
        pass
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time, got {describe(value)}") from None


def _parse_epoch(value: Any, unit: str) -> dt.datetime:
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value) if "." in value else int(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"expected a number of {unit} since 1970, got {describe(value)}")
    try:
        return _EPOCH + dt.timedelta(**{unit: value})  # exact for integer milliseconds
    except OverflowError:
        raise ValueError(f"{unit} since 1970 out of range: {describe(value)}") from None


_POSTGRES_TIME = re.compile(
    r"(?P<local>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)"
    r"(?: (?:(?P<offset>[+-]\d\d(?::?\d\d)?)|(?P<abbrev>[A-Za-z][A-Za-z0-9_+-]*)))?"
)
_UTC_ABBREVIATIONS = frozenset(("UTC", "GMT", "UCT", "Z"))


def _parse_postgres(value: Any) -> dt.datetime:
    """PostgreSQL's log_time, '2015-08-12 16:13:43.810 UTC' or '... +08'.

    Zone abbreviations other than UTC are ambiguous (CST is in China, the US and Cuba),
    so they leave the time naive and the field's configured `timezone`, which should
    be the server's log_timezone, decides.
    """
    match = _POSTGRES_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a PostgreSQL log time such as '2015-08-12 16:13:43.810 UTC', got {describe(value)}")
    local = parse_iso8601(match["local"])
    offset, abbrev = match["offset"], match["abbrev"]
    if offset:
        digits = offset.replace(":", "")
        minutes = int(digits[1:3]) * 60 + int(digits[3:5] or 0)
        return local.replace(tzinfo=dt.timezone(dt.timedelta(minutes=-minutes if digits[0] == "-" else minutes)))
    if abbrev and abbrev.upper() in _UTC_ABBREVIATIONS:
        return local.replace(tzinfo=UTC)
    return local


def _parse_strptime(value: Any, time_format: str) -> dt.datetime:
    if type(value) is not str:
        raise ValueError(f"expected a time like {time_format!r}, got {describe(value)}")
    try:
        return dt.datetime.strptime(value, time_format)
    except ValueError:
        raise ValueError(f"expected a time like {time_format!r}, got {describe(value)}") from None
