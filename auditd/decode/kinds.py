"""Record kinds: how one raw record becomes a dict for the field mapping.

``KINDS`` is the one registry from a format file's ``kind:`` to its parser class. A
parser's ``parse(record)`` returns the record as a dict, or None for a record that is
valid but not an access event (a csvlog checkpoint line, a CSV header), which the
normaliser counts as skipped; it raises DecodeError for anything it cannot read.
"""

from __future__ import annotations

import csv
import re
from typing import Any, ClassVar, Protocol

import msgspec

from auditd.config.located import Problems
from auditd.config.regex import LinearRegex, RegexError, compile_regex
from auditd.decode.mapping import Origin
from auditd.decode.settings import (
    CsvOptions,
    JsonDocumentsOptions,
    JsonLinesOptions,
    KeyValueOptions,
    PgauditOptions,
    RegexOptions,
)
from auditd.errors import DecodeError


class RecordParser(Protocol):
    nested: bool  # whether a dotted path descends into nested objects, or names a flat key
    framing: str  # how the source splits a file into records: sources.framing.FRAMERS

    def parse(self, record: bytes) -> dict | None: ...

    # Optional: keyword arguments for the framer (a CSV quote character, a records key).
    # def framing_options(self) -> dict[str, Any]: ...


def decode_text(record: bytes) -> str:
    try:
        text = record.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 at byte {exc.start}") from None
    return text[:-1] if text.endswith("\r") else text  # a CRLF file's records keep the CR


_JSON_TYPE_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false"}


class JsonLinesParser:
    """One JSON object per record."""

    nested: ClassVar[bool] = True
    framing: ClassVar[str] = "lines"
    options_class: ClassVar[type] = JsonLinesOptions

    def __init__(self) -> None:
        self._decode = msgspec.json.Decoder().decode

    @classmethod
    def build(cls, options: JsonLinesOptions, origin: Origin, problems: Problems) -> "JsonLinesParser":
        return cls()

    def parse(self, record: bytes) -> dict:
        try:
            value = self._decode(record)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None
        except RecursionError:
            raise DecodeError("invalid JSON: nested too deeply") from None
        except UnicodeDecodeError as exc:
            raise DecodeError(f"invalid UTF-8 at byte {exc.start}") from None
        if type(value) is not dict:
            raise DecodeError(f"expected a JSON object, got {_JSON_TYPE_NAMES.get(type(value), 'null')}")
        return value


class JsonDocumentsParser(JsonLinesParser):
    """JSON documents, each file read whole when complete: a CloudTrail file
    (``{"Records": [...]}``), a JSON array, or objects one after another, compact or
    pretty-printed. The framer (sources.framing.JsonDocumentFramer) cuts the records
    out; each is one JSON object, decoded as a JSON line is."""

    framing: ClassVar[str] = "json"
    options_class: ClassVar[type] = JsonDocumentsOptions

    def __init__(self, records_key: str = "Records") -> None:
        super().__init__()
        self._records_key = records_key

    @classmethod
    def build(cls, options: JsonDocumentsOptions, origin: Origin, problems: Problems) -> "JsonDocumentsParser":
        return cls(options.records)

    def framing_options(self) -> dict[str, Any]:
        return {"records_key": self._records_key}


class CsvParser:
    """One CSV row per record; columns are named by the options' list."""

    nested: ClassVar[bool] = False
    framing: ClassVar[str] = "csv"
    options_class: ClassVar[type] = CsvOptions

    def __init__(self, options: CsvOptions):
        self._columns = tuple(options.columns)
        self._min_columns = options.min_columns or len(self._columns)
        self._dialect = {"delimiter": options.delimiter, "quotechar": options.quote, "strict": True}
        self._header = list(self._columns) if options.skip_header else None
        self._quote = options.quote

    def framing_options(self) -> dict[str, Any]:
        return {"quote": self._quote}  # a record ends at a newline outside *these* quotes

    @classmethod
    def build(cls, options: CsvOptions, origin: Origin, problems: Problems) -> "CsvParser":
        return cls(options)

    def parse(self, record: bytes) -> dict | None:
        row = self.row(decode_text(record))
        if row == self._header:
            return None
        if not self._min_columns <= len(row) <= len(self._columns):
            expected = (
                f"{self._min_columns} to {len(self._columns)}"
                if self._min_columns < len(self._columns)
                else str(len(self._columns))
            )
            raise DecodeError(f"{len(row)} CSV columns, expected {expected}")
        return dict(zip(self._columns, row))

    def row(self, text: str) -> list[str]:
        try:
            # a one-item list: the record is one row even if quoted fields hold newlines
            rows = list(csv.reader([text], **self._dialect))
        except csv.Error as exc:
            raise DecodeError(f"invalid CSV: {exc}") from None
        if len(rows) != 1:
            raise DecodeError(f"expected one CSV row, got {len(rows)}")
        return rows[0]


class KeyValueParser:
    """key=value pairs separated by whitespace; quoted values may hold spaces and \\" escapes."""

    nested: ClassVar[bool] = False
    framing: ClassVar[str] = "lines"
    options_class: ClassVar[type] = KeyValueOptions

    def __init__(self, options: KeyValueOptions):
        sep = re.escape(options.separator)
        self._pair = re.compile(
            rf"""(?P<key>[^\s{sep}"']+){sep}"""
            r"""(?:"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>(?:[^'\\]|\\.)*)'|(?P<bare>(?:[^\s"']\S*)?))(?=\s|$)"""
        )
        self._space = re.compile(r"\s*")

    @classmethod
    def build(cls, options: KeyValueOptions, origin: Origin, problems: Problems) -> "KeyValueParser":
        return cls(options)

    def parse(self, record: bytes) -> dict:
        text = decode_text(record)
        out: dict[str, str] = {}
        pos = self._space.match(text).end()
        while pos < len(text):
            match = self._pair.match(text, pos)
            if match is None:
                raise DecodeError(f"not a key=value pair at column {pos + 1}: {text[pos : pos + 40]!r}")
            out[match["key"]] = _kv_value(match)
            pos = self._space.match(text, match.end()).end()
        if not out:
            raise DecodeError("no key=value pairs")
        return out


def _kv_value(match: re.Match) -> str:
    bare = match["bare"]
    if bare is not None:
        return bare
    quoted = match["dq"] if match["dq"] is not None else match["sq"]
    return re.sub(r"\\(.)", r"\1", quoted) if "\\" in quoted else quoted


class RegexParser:
    """A regular expression, compiled once; its named groups are the record's keys."""

    nested: ClassVar[bool] = False
    framing: ClassVar[str] = "lines"
    options_class: ClassVar[type] = RegexOptions

    def __init__(self, pattern: LinearRegex):
        self._named_groups = pattern.named_groups

    @classmethod
    def build(cls, options: RegexOptions, origin: Origin, problems: Problems) -> "RegexParser | None":
        try:
            pattern = compile_regex(options.pattern)  # RE2: linear time, whatever the line
        except RegexError as exc:
            problems.add(origin.doc, origin.path + ("pattern",), str(exc))
            return None
        if not pattern.names:
            problems.add(origin.doc, origin.path + ("pattern",), "needs named groups, such as (?P<user>\\S+)")
            return None
        return cls(pattern)

    def parse(self, record: bytes) -> dict:
        groups = self._named_groups(decode_text(record))
        if groups is None:
            raise DecodeError("does not match the format's pattern")
        return groups


# The fields of a pgaudit AUDIT line, in order; 'rows' only with pgaudit.log_rows.
AUDIT_FIELDS = (
    "audit_type",
    "statement_id",
    "substatement_id",
    "class",
    "command",
    "object_type",
    "object_name",
    "statement",
    "parameter",
    "rows",
)
AUDIT_PREFIX = "AUDIT: "


class PgauditParser:
    """PostgreSQL csvlog rows; a row whose message is a pgaudit AUDIT line is an event.

    Other rows (connections, checkpoints, errors) are valid lines of another kind, so
    they are skipped and counted rather than quarantined. The AUDIT fields go under
    ``audit`` (paths such as ``audit.class``), beside the csvlog columns.
    """

    nested: ClassVar[bool] = True
    framing: ClassVar[str] = "csv"
    options_class: ClassVar[type] = PgauditOptions

    def __init__(self, options: PgauditOptions):
        self._csv = CsvParser(CsvOptions(columns=list(options.columns), min_columns=options.min_columns))
        self._message_column = options.message_column

    @classmethod
    def build(cls, options: PgauditOptions, origin: Origin, problems: Problems) -> "PgauditParser":
        return cls(options)

    def parse(self, record: bytes) -> dict | None:
        row: dict[str, Any] | None = self._csv.parse(record)
        message = row.get(self._message_column, "") if row else ""
        if not message.startswith(AUDIT_PREFIX):
            return None
        row["audit"] = parse_audit_message(message[len(AUDIT_PREFIX) :], self._csv)
        return row


def parse_audit_message(text: str, csv_parser: CsvParser) -> dict[str, str]:
    """'SESSION,1,1,READ,SELECT,TABLE,public.account,"select ...",<not logged>' -> fields.

    pgaudit writes the line itself as CSV, so a statement with commas, quotes or
    newlines is quoted, and it is read with the same CSV reader as the row.
    """
    try:
        values = csv_parser.row(text)
    except DecodeError as exc:
        raise DecodeError(f"AUDIT message: {exc}") from None
    if len(values) not in (len(AUDIT_FIELDS) - 1, len(AUDIT_FIELDS)):
        raise DecodeError(f"AUDIT message has {len(values)} fields, expected 9 (or 10 with rows)")
    return dict(zip(AUDIT_FIELDS, values))


KINDS: dict[str, type] = {
    "csv": CsvParser,
    "json": JsonDocumentsParser,
    "jsonl": JsonLinesParser,
    "kv": KeyValueParser,
    "pgaudit": PgauditParser,
    "regex": RegexParser,
}
