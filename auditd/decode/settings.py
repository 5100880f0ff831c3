"""What a format file says, as frozen settings: the record kind and the field mapping.

A format file (shipped in ``auditd/formats/`` or an operator's own) reads::

    kind: jsonl                      # one of decode.kinds.KINDS
    dataset: neo-crm.access          # event.dataset; default: the format's name
    options: {...}                   # the kind's own settings (csv columns, regex pattern)
    fields:                          # ECS target field -> where its value comes from
      "@timestamp": {path: ts, time_format: iso8601}
      event.action: {path: op, map: {customer.view: read}}
    categories: {path: res.type, map: {payment: [property]}, default: []}

These classes only hold and check what was written; ``decode.mapping`` compiles them,
and ``decode.formats`` resolves ``extends``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from auditd.config.typed import unknown_zone

DEFAULT_TIMEZONE_NAME = "Asia/Shanghai"  # the company's zone (DESIGN: canonical event)
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024

# Time formats with a name; any other text is a strptime format.
NAMED_TIME_FORMATS = ("iso8601", "epoch_s", "epoch_ms", "postgres")

# The PI categories of the privacy policy (DESIGN: canonical event); the daemon's config
# may define others, and the caller of load_format passes the configured names.
DEFAULT_CATEGORIES = frozenset(("identity", "contact", "media", "property", "location", "device", "biometric", "order"))


@dataclass(frozen=True, slots=True)
class TimeZone:
    """An IANA time zone name, checked when the file is loaded."""

    name: str

    @classmethod
    def from_config(cls, value: Any) -> "TimeZone":
        if not isinstance(value, str) or not value:
            raise ValueError("expected an IANA time zone name such as 'Asia/Shanghai'")
        why = unknown_zone(value)
        if why:
            raise ValueError(why if "did you mean" in why else f"{why} (expected an IANA name such as 'Asia/Shanghai')")
        return cls(value)

    @property
    def zone(self) -> dt.tzinfo:
        return ZoneInfo(self.name)  # ZoneInfo caches instances by name


DEFAULT_TIMEZONE = TimeZone(DEFAULT_TIMEZONE_NAME)


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """Where one target field's value comes from, and how it is turned into that field.

    Exactly one source: ``path`` (dotted, into nested objects), ``paths`` (candidates,
    the first present wins), ``join`` (present parts joined with '/', e.g. a class and a
    command) or ``value`` (a constant). Then, in this order: ``extract`` (regex: first
    group, or the whole match), ``lower``, ``split`` (text -> list), ``map`` (keys
    ending in '*' match by prefix; unmapped values take ``default`` or are an error),
    and the time parse (``time_format``, ``timezone`` for times without an offset).
    A missing or empty value leaves the field unset, unless ``required``.
    """

    path: str | None = None
    paths: list[str] | None = None
    join: list[str] | None = None
    value: Any = None
    extract: str | None = None
    lower: bool = False
    split: str | None = None
    map: dict[str, str | list[str]] | None = None
    default: str | list[str] | None = None
    time_format: str | None = None
    timezone: TimeZone = DEFAULT_TIMEZONE
    required: bool = False

    def sources(self) -> tuple[str, ...]:
        """The source keys given, to check that there is exactly one."""
        given = {"path": self.path, "paths": self.paths, "join": self.join, "value": self.value}
        return tuple(name for name, v in given.items() if v is not None)

    def check(self):
        sources = self.sources()
        if len(sources) != 1:
            found = ", ".join(sources) if sources else "none"
            yield "", f"give exactly one of path, paths, join, value (found: {found})"
        if self.paths is not None and not self.paths:
            yield "paths", "needs at least one path"
        if self.join is not None and len(self.join) < 2:
            yield "join", "needs at least two paths"
        for key, path in self._named_paths():
            if isinstance(path, str) and (not path or path.startswith(".") or path.endswith(".") or ".." in path):
                yield key, f"bad path {path!r}: dotted keys such as 'emp.id'"
        if self.value is not None and self.transforms():
            yield "value", f"a constant takes no {', '.join(self.transforms())}"
        if self.default is not None and self.map is None:
            yield "default", "default is for values the map does not list; give a map"
        if self.split == "":
            yield "split", "the separator must not be empty"
        if self.time_format == "":
            yield "time_format", "give a strptime format or one of " + ", ".join(NAMED_TIME_FORMATS)

    def _named_paths(self):
        if self.path is not None:
            yield "path", self.path
        for key in ("paths", "join"):
            for i, path in enumerate(getattr(self, key) or ()):
                yield (key, i), path

    def transforms(self) -> list[str]:
        names = ("extract", "split", "map", "time_format")
        out = [name for name in names if getattr(self, name) is not None]
        return out + (["lower"] if self.lower else [])


@dataclass(frozen=True, slots=True)
class CategoryRule:
    """Which PI categories an access touched, from a value such as a resource type or table.

    A present value that the map does not list takes ``default`` (the operator's choice
    for tables or types nobody classified yet); an absent value means no categories.
    A format that extends another gives only the keys it changes (often just ``map``).
    """

    path: str | None = None
    paths: list[str] | None = None
    lower: bool = False
    map: dict[str, str | list[str]] = field(default_factory=dict)
    default: list[str] = field(default_factory=list)

    def check(self):
        # exactly one of path, paths: checked once merged with the format it extends
        if self.paths is not None and not self.paths:
            yield "paths", "needs at least one path"


# --- the options of each kind (decode.kinds.KINDS names the class for each) -------------


@dataclass(frozen=True, slots=True)
class JsonLinesOptions:
    """One JSON object per record; nothing to configure yet."""


@dataclass(frozen=True, slots=True)
class JsonDocumentsOptions:
    """Whole JSON documents: ``records`` names the array of records in an object
    (CloudTrail's ``Records``); an object without it is a record itself."""

    records: str = "Records"

    def check(self):
        if not self.records:
            yield "records", "must not be empty"


@dataclass(frozen=True, slots=True)
class CsvOptions:
    """One CSV row per record (the source's framer has joined quoted multi-line fields).

    Rows may carry fewer columns than listed, down to ``min_columns``, so that one column
    list serves log versions that added columns at the end (PostgreSQL csvlog: 23 in
    9.x-12, 24 in 13, 26 from 14).
    """

    columns: list[str]
    min_columns: int | None = None
    delimiter: str = ","
    quote: str = '"'
    skip_header: bool = False  # a row equal to the column names is skipped, not quarantined

    def check(self):
        if not self.columns:
            yield "columns", "needs at least one column name"
        if len(set(self.columns)) != len(self.columns):
            yield "columns", "column names must be unique"
        if self.min_columns is not None and not 1 <= self.min_columns <= len(self.columns):
            yield "min_columns", f"must be between 1 and the {len(self.columns)} columns listed"
        if len(self.delimiter) != 1:
            yield "delimiter", "must be one character"
        if len(self.quote) != 1 or self.quote == self.delimiter:
            yield "quote", "must be one character, other than the delimiter"


@dataclass(frozen=True, slots=True)
class KeyValueOptions:
    """key=value pairs separated by whitespace; values may be "double" or 'single' quoted."""

    separator: str = "="

    def check(self):
        if len(self.separator) != 1 or self.separator.isspace() or self.separator in "\"'":
            yield "separator", "must be one character, not a space or a quote"


@dataclass(frozen=True, slots=True)
class RegexOptions:
    """A regular expression whose named groups are the record's keys (re.search)."""

    pattern: str


# PostgreSQL csvlog columns, in order. 9.x-12 write the first 23; 13 adds backend_type;
# 14 and later add leader_pid and query_id.
POSTGRES_CSVLOG_COLUMNS = (
    "log_time",
    "user_name",
    "database_name",
    "process_id",
    "connection_from",
    "session_id",
    "session_line_num",
    "command_tag",
    "session_start_time",
    "virtual_transaction_id",
    "transaction_id",
    "error_severity",
    "sql_state_code",
    "message",
    "detail",
    "hint",
    "internal_query",
    "internal_query_pos",
    "context",
    "query",
    "query_pos",
    "location",
    "application_name",
    "backend_type",
    "leader_pid",
    "query_id",
)


@dataclass(frozen=True, slots=True)
class PgauditOptions:
    """PostgreSQL csvlog rows; those whose message is a pgaudit ``AUDIT:`` line are events."""

    columns: list[str] = field(default_factory=lambda: list(POSTGRES_CSVLOG_COLUMNS))
    min_columns: int = 23
    message_column: str = "message"

    def check(self):
        if self.message_column not in self.columns:
            yield "message_column", f"{self.message_column!r} is not one of the columns"
        if not 1 <= self.min_columns <= len(self.columns):
            yield "min_columns", f"must be between 1 and the {len(self.columns)} columns listed"
        if self.message_column in self.columns and self.columns.index(self.message_column) >= self.min_columns:
            yield "min_columns", "every row must reach the message column"


@dataclass(frozen=True, slots=True)
class FormatSettings:
    """A format, in its own file or under ``formats:`` of the daemon's config.

    Every key may be left out of a format that ``extends`` another: a key given
    replaces the extended one, except ``fields``, which replace it target by target (a
    target set to null drops it). ``options`` is converted with the options class of
    the kind, once the kind is known.
    """

    kind: str | None = None
    extends: str | None = None  # a format under `formats:`, a shipped format, or a path
    description: str | None = None
    dataset: str | None = None  # event.dataset; default: the format's name
    options: Any = None
    fields: dict[str, FieldMapping | None] = field(default_factory=dict)
    categories: CategoryRule | None = None
    max_record_bytes: int | None = None  # default DEFAULT_MAX_RECORD_BYTES

    def check(self):
        if self.max_record_bytes is not None and self.max_record_bytes < 1:
            yield "max_record_bytes", "must be positive"
