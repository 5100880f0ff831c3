"""Compile a format's field mapping, once, into small closures that build event facts.

A compiled field is a `Source` (which paths of the decoded record it reads) and an
`apply(raw, facts)` closure that converts the raw value and stores it in `facts`, the
keyword arguments of the AccessEvent being built. Readers are made separately for
each record shape (nested dicts, flat dicts, typed structs: decode.typed_json), so
that every decoding path shares the one conversion of each field.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

from auditd.config.located import Doc, PathKey, Problems
from auditd.config.regex import RegexError, compile_regex
from auditd.decode import steps
from auditd.decode.settings import (
    DEFAULT_CATEGORIES,
    NAMED_TIME_FORMATS,
    CategoryRule,
    FieldMapping,
)
from auditd.decode.values import COERCERS, EARLIEST, LATEST, SHAPES, UTC, make_time_parser, shape_step, to_text
from auditd.errors import DecodeError
from auditd.event import ACTIONS, EVENT_DEFAULTS, FIELDS, OUTCOMES, REQUIRED_FIELDS

Reader = Callable[[Any], Any]  # decoded record -> raw value, None when absent
Apply = Callable[[Any, dict], None]  # (raw value, facts) -> stores the converted value
RecordPath = tuple[str, ...]

# Fields other stages own: a log line must not be able to set them.
OWNED_ELSEWHERE = {
    "event.id": "the normaliser sets it from the file's fingerprint and the record's offset",
    "event.dataset": "it comes from the format's 'dataset'",
    "log.file.path": "the normaliser sets it",
    "log.offset": "the normaliser sets it",
}
ENRICHED_PREFIXES = ("neo.actor.", "neo.entitlement.")
VOCABULARIES = {"event.action": ACTIONS, "event.outcome": OUTCOMES}
NON_NEGATIVE = frozenset(("neo.data.record_count",))
CATEGORIES_FIELD = "neo.data.categories"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a mapped value goes: an AccessEvent attribute, or one key of its labels."""

    name: str  # as written: 'user.id', 'labels.request_id'
    attr: str
    kind: str  # an event.FIELDS kind
    label: str | None = None


def resolve_target(name: str) -> Target:
    """The target field called `name`; ValueError says why a name cannot be mapped."""
    if name.startswith("labels."):
        key = name[len("labels.") :]
        if not key:
            raise ValueError("a label target needs a name: 'labels.<name>'")
        return Target(name, "labels", "str", label=key)
    spec = FIELDS.get(name)
    if spec is None:
        raise ValueError(f"unknown target field {name!r} (valid: {', '.join(mappable_fields())}, labels.<name>)")
    if name in OWNED_ELSEWHERE:
        raise ValueError(f"{name!r} cannot be mapped: {OWNED_ELSEWHERE[name]}")
    if name.startswith(ENRICHED_PREFIXES):
        raise ValueError(f"{name!r} cannot be mapped: the enrich stage decides it, a log line must not")
    return Target(name, spec.attr, spec.kind)


def mappable_fields() -> list[str]:
    return [n for n in FIELDS if n not in OWNED_ELSEWHERE and not n.startswith(ENRICHED_PREFIXES)]


@dataclass(frozen=True, slots=True)
class Source:
    """The paths a rule reads. Candidates: the first present wins; joined: '/'.join(present)."""

    paths: tuple[RecordPath, ...]
    joined: bool = False
    constant: Any = None  # a `value:` rule reads no path

    def describe(self) -> str:
        if not self.paths:
            return "constant"
        names = ", ".join(".".join(p) for p in self.paths)
        return f"join {names}" if self.joined else f"path {names}"


@dataclass(frozen=True, slots=True)
class Column:
    """How a field may be computed for a whole chunk of typed records at once
    (decode.columnar), giving what `apply` gives record by record.

    ``how`` is 'copy' (the value as read), 'time' (a parsed ISO 8601 time with its
    offset, to UTC) or 'exact' (looked up in ``table``, which also maps an absent value
    to the event's default unless the field is required). A value the table lacks, or a
    time without an offset, sends the chunk back to the record-by-record path.
    """

    how: str
    table: dict | None = None


@dataclass(frozen=True, slots=True)
class CompiledField:
    target: Target
    source: Source
    apply: Apply
    copied: bool  # the value is used as read (no transform): a typed decoder may copy it
    # A type a typed decoder may give the raw value when this rule alone reads it:
    # `apply` gives the same result for the typed value as for the JSON text (times).
    raw_type: Any = None
    column: Column | None = None  # None: only record by record


@dataclass(frozen=True, slots=True)
class Mapping:
    """A compiled mapping: its rules in file order, categories last (they merge)."""

    fields: tuple[CompiledField, ...]
    categories: tuple[Source, Apply] | None
    categories_column: Column | None = None  # 'exact', when one path and plain keys

    def rules(self) -> tuple[tuple[Source, Apply], ...]:
        out = tuple((f.source, f.apply) for f in self.fields)
        return out + ((self.categories,) if self.categories else ())


# --- readers --------------------------------------------------------------------------


def nested_reader(path: RecordPath) -> Reader:
    """Read a dotted path from nested dicts (JSON objects)."""
    first, rest = path[0], path[1:]
    if not rest:
        return lambda record: record.get(first)

    def read(record: dict) -> Any:
        node = record.get(first)
        for part in rest:
            if type(node) is not dict:
                return None
            node = node.get(part)
        return node

    return read


def flat_reader(path: RecordPath) -> Reader:
    """Read a key of a flat record (csv column, kv key, regex group): dots are part of it."""
    key = ".".join(path)
    return lambda record: record.get(key)


def compile_reader(source: Source, leaf_reader: Callable[[RecordPath], Reader]) -> Reader:
    if not source.paths:
        constant = source.constant
        return lambda record: constant
    readers = tuple(leaf_reader(p) for p in source.paths)
    if source.joined:
        return _joined_reader(readers)
    if len(readers) == 1:
        return readers[0]
    return _first_present_reader(readers)


# Hot-path helpers are closures rather than functools.partial with keywords: a partial
# call merges its keyword dict on every call, and every record calls these.


def _first_present_reader(readers: tuple[Reader, ...]) -> Reader:
    def read(record: Any) -> Any:
        for read_one in readers:
            value = read_one(record)
            if value is not None and value != "":
                return value
        return None

    return read


def _joined_reader(readers: tuple[Reader, ...]) -> Reader:
    """`join`: the parts that are text or numbers, "/" between them. A part that is an
    object or a list is left out, not an error: in a well-formed record a name can hold
    a structure (CloudTrail's `requestParameters.key` is the item's key map for
    DynamoDB, an object name for S3), and an optional part must not cost the record."""
    def read(record: Any) -> Any:
        present = []
        for read_one in readers:
            part = read_one(record)
            if part is not None and part != "" and not isinstance(part, (dict, list, bool)):
                present.append(to_text(part))
        return "/".join(present) if present else None

    return read


# --- compiling one field -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a piece of a format was written: a file (or the daemon's config) and a key path."""

    doc: Doc | None  # None: a format given to load_format without its config document
    path: PathKey

    def __add__(self, key: str) -> "Origin":
        return Origin(self.doc, self.path + (key,))


class _Located:
    """Records problems about one rule, relative to where it was written."""

    def __init__(self, origin: Origin, problems: Problems):
        self.origin, self.problems = origin, problems
        self.count = 0

    def __call__(self, rel: PathKey, message: str, *, at_key: bool = False) -> None:
        self.count += 1
        self.problems.add(self.origin.doc, self.origin.path + rel, message, at_key=at_key)


def compile_field(
    name: str,
    spec: FieldMapping,
    origin: Origin,
    problems: Problems,
    known_categories: frozenset[str] = DEFAULT_CATEGORIES,
) -> CompiledField | None:
    """One `fields:` entry; None (with located problems) when it cannot be compiled."""
    report = _Located(origin, problems)
    try:
        target = resolve_target(name)
    except ValueError as exc:
        report((), str(exc), at_key=True)  # the target's name is what is wrong
        return None
    _check_fits_target(target, spec, report)
    convert = _compile_convert(target, spec, known_categories, report)
    if report.count:
        return None
    source = _source_of(spec)
    required = spec.required or name in REQUIRED_FIELDS
    apply = with_shortcut(target, spec, make_apply(target, convert, required, source.describe()))
    if source.constant is not None:
        _check_constant(convert, source.constant, report)
    if report.count:
        return None
    copied = _is_copied(target, spec, required)
    return CompiledField(target, source, apply, copied, _raw_type(target, spec),
                         _column_of(target, spec, required, copied))


def _column_of(target: Target, spec: FieldMapping, required: bool, copied: bool) -> Column | None:
    """The chunk-at-once form of a field read from one path, when it has one."""
    if spec.path is None or target.label is not None:
        return None
    if copied:
        return Column("copy")
    if _is_iso8601_only(target, spec):
        return Column("time")
    if spec.transforms() == ["map"] and target.kind in ("str", "ip"):
        table: dict = _exact_text_map(spec)
        if not required:  # absent ('' or null): the event keeps its default, as in make_apply
            table[None] = table[""] = EVENT_DEFAULTS[target.attr]
        return Column("exact", table)
    return None


def _is_copied(target: Target, spec: FieldMapping, required: bool) -> bool:
    """Whether the value read is the event's value once its type is right (no step of ours)."""
    checked = target.name in VOCABULARIES or target.name == CATEGORIES_FIELD
    plain_kind = target.kind in ("str", "ip", "int", "bool", "list") and target.label is None
    return spec.sources() == ("path",) and not spec.transforms() and not required and not checked and plain_kind


def _is_iso8601_only(target: Target, spec: FieldMapping) -> bool:
    return (
        target.kind == "time"
        and (spec.time_format or "iso8601") == "iso8601"
        and spec.transforms() in ([], ["time_format"])
    )


def _raw_type(target: Target, spec: FieldMapping) -> Any:
    # msgspec parses RFC 3339 in C while decoding; parse_iso8601 tries the same parser first
    return dt.datetime | None if _is_iso8601_only(target, spec) and spec.path is not None else None


def _source_of(spec: FieldMapping) -> Source:
    def split(p: str) -> RecordPath:
        return tuple(p.split("."))

    if spec.path is not None:
        return Source((split(spec.path),))
    if spec.paths is not None:
        return Source(tuple(split(p) for p in spec.paths))
    if spec.join is not None:
        return Source(tuple(split(p) for p in spec.join), joined=True)
    return Source((), constant=spec.value)


def _check_fits_target(target: Target, spec: FieldMapping, report: _Located) -> None:
    """Options that make no sense for this target's kind."""
    if spec.time_format is not None and target.kind != "time":
        report(("time_format",), f"{target.name!r} is not a time field")
    if spec.split is not None and target.kind != "list":
        report(("split",), f"split makes a list, and {target.name!r} holds one value")
    if target.kind == "time" and spec.lower:
        report(("lower",), "lower does not apply to a time")
    if target.kind != "list":
        for key, mapped in _map_entries(spec):
            if isinstance(mapped, list):
                report(key, f"{target.name!r} holds one value, not a list")
    vocabulary = VOCABULARIES.get(target.name)
    if vocabulary is not None:
        for key, mapped in _map_entries(spec):
            if isinstance(mapped, str) and mapped not in vocabulary:
                report(key, f"unknown {target.name} {mapped!r} (valid: {', '.join(vocabulary)})")
    shaped = SHAPES.get(target.name)
    if shaped is not None:  # a mapped value is the event's value as it stands: it must have the shape
        for key, mapped in _map_entries(spec):
            if isinstance(mapped, str) and not shaped[0](mapped):
                report(key, f"{target.name} holds {shaped[1]}, not {mapped!r}")


def _map_entries(spec: FieldMapping):
    for key, mapped in (spec.map or {}).items():
        yield ("map", key), mapped
    if spec.default is not None:
        yield ("default",), spec.default


def _check_constant(convert: Callable[[Any], Any], constant: Any, report: _Located) -> None:
    try:
        convert(constant)
    except ValueError as exc:
        report(("value",), str(exc))


def make_apply(target: Target, convert: Callable[[Any], Any], required: bool, where: str) -> Apply:
    assign = _assigner(target)
    name = target.name

    def apply(raw: Any, facts: dict) -> None:
        value = None
        if raw is not None and raw != "":
            try:
                value = convert(raw)
            except ValueError as exc:
                raise DecodeError(f"{name}: {exc} ({where})") from None
        if value is not None:
            assign(facts, value)
        elif required:
            raise DecodeError(f"missing required field {name!r} ({where}): expected a value, found none")

    return apply


def with_shortcut(target: Target, spec: FieldMapping, general: Apply) -> Apply:
    """`general`, behind a shortcut for the commonest shapes of value.

    Every record pays for each Python call of every field, so the usual cases (a value
    the map lists, a parsed time with an offset, plain text) take one call. A shortcut
    only handles values for which `general` gives the same result, and hands anything
    else to `general`.
    """
    if target.label is not None or target.kind not in ("str", "ip", "time"):
        return general
    attr, transforms = target.attr, spec.transforms()
    if transforms == ["map"] and target.kind != "time":
        return _mapped_shortcut(_exact_text_map(spec), attr, general)
    if _is_iso8601_only(target, spec):
        return _time_shortcut(attr, general)
    if not transforms and target.name in SHAPES:
        return _shaped_shortcut(attr, SHAPES[target.name][0], general)
    if not transforms and target.kind != "time" and target.name not in VOCABULARIES:
        return _text_shortcut(attr, general)
    return general


def _shaped_shortcut(attr: str, valid: Callable[[str], bool], general: Apply) -> Apply:
    def apply(raw: Any, facts: dict) -> None:
        if type(raw) is str and raw and valid(raw):
            facts[attr] = raw
        else:
            general(raw, facts)  # empty, not text, or not of its shape: the general path says why

    return apply


def _exact_text_map(spec: FieldMapping) -> dict[str, str]:
    """The map's plain keys (not empty, not wildcards) with text values: what a shortcut
    or a column may look up directly, leaving every other value to the general path."""
    return {k: v for k, v in steps.exact_entries(spec.map or {}).items() if k and isinstance(v, str)}


def _mapped_shortcut(exact: dict[str, str], attr: str, general: Apply) -> Apply:
    get = exact.get

    def apply(raw: Any, facts: dict) -> None:
        mapped = get(raw) if type(raw) is str else None
        if mapped is None:
            general(raw, facts)
        else:
            facts[attr] = mapped

    return apply


# aware times this far inside the bounds are inside them whatever their offset (< 1 day)
EARLIEST_LOCAL, LATEST_LOCAL = EARLIEST + dt.timedelta(days=1), LATEST - dt.timedelta(days=1)


def _time_shortcut(attr: str, general: Apply) -> Apply:
    datetime_type = dt.datetime

    def apply(raw: Any, facts: dict) -> None:
        if type(raw) is datetime_type and raw.tzinfo is not None and EARLIEST_LOCAL < raw < LATEST_LOCAL:
            facts[attr] = raw.astimezone(UTC)
        else:
            general(raw, facts)  # a naive time, not a time, or one the general path must bound

    return apply


def _text_shortcut(attr: str, general: Apply) -> Apply:
    def apply(raw: Any, facts: dict) -> None:
        if type(raw) is str and raw:
            facts[attr] = raw
        else:
            general(raw, facts)

    return apply


def _assigner(target: Target) -> Callable[[dict, Any], None]:
    if target.label is not None:
        return _label_assigner(target.label)
    if target.kind == "map":
        return _assign_labels
    attr = target.attr

    def assign(facts: dict, value: Any) -> None:
        facts[attr] = value

    return assign


def _label_assigner(key: str) -> Callable[[dict, Any], None]:
    def assign(facts: dict, value: Any) -> None:
        labels = facts.get("labels")
        if labels is None:
            facts["labels"] = {key: value}  # a new dict per event: events never share one
        else:
            labels[key] = value

    return assign


def _assign_labels(facts: dict, value: dict) -> None:
    labels = facts.get("labels")
    facts["labels"] = {**labels, **value} if labels else value


# --- the conversion chain of one field -----------------------------------------------


def _compile_convert(target: Target, spec: FieldMapping, known_categories: frozenset[str], report: _Located):
    """The field's steps, in the documented order (settings.FieldMapping), as one function."""
    convert: list[Callable[[Any], Any]] = []
    if spec.extract is not None:
        convert.append(_extract_step(spec.extract, report))
    if spec.lower:
        convert.append(steps.lower)
    if spec.split is not None:
        convert.append(steps.split_step(spec.split))
    if spec.map is not None:
        default = steps.map_value(spec.default) if spec.default is not None else steps.NOT_MAPPED
        convert.append(steps.map_step(steps.compile_lookup(steps.map_table(spec.map), default)))
    convert.append(_final_step(target, spec, report))
    vocabulary = VOCABULARIES.get(target.name)
    if vocabulary is not None and spec.map is None:
        convert.append(steps.vocabulary_step(frozenset(vocabulary)))
    if target.name in NON_NEGATIVE:
        convert.append(steps.non_negative)
    if target.name in SHAPES:
        convert.append(shape_step(target.name))
    if target.name == CATEGORIES_FIELD:
        convert.append(steps.categories_step(known_categories))
    return steps.chain(convert)


def _extract_step(pattern: str, report: _Located) -> Callable[[Any], Any]:
    try:
        return steps.extract_step(compile_regex(pattern))  # RE2: linear time, whatever the value
    except RegexError as exc:
        report(("extract",), str(exc))
        return steps.unchanged


def _final_step(target: Target, spec: FieldMapping, report: _Located) -> Callable[[Any], Any]:
    if target.kind != "time":
        return COERCERS[target.kind]
    time_format = spec.time_format or "iso8601"
    if "%" not in time_format and time_format not in NAMED_TIME_FORMATS:
        report(
            ("time_format",),
            f"expected a strptime format or one of {', '.join(NAMED_TIME_FORMATS)}, got {time_format!r}",
        )
    return make_time_parser(time_format, spec.timezone.zone)


# --- categories and the whole mapping ------------------------------------------------


def compile_categories(
    rule: CategoryRule,
    origin: Origin,
    problems: Problems,
    known_categories: frozenset[str] = DEFAULT_CATEGORIES,
) -> tuple[Source, Apply] | None:
    """The categories rule: a value (resource type, table) -> PI categories."""
    report = _Located(origin, problems)
    entries = [(("map", k), _as_list(v)) for k, v in rule.map.items()] + [(("default",), rule.default)]
    for key, names in entries:
        for name in names:
            if name not in known_categories:
                report(key, f"unknown data category {name!r} (valid: {', '.join(sorted(known_categories))})")
    if report.count:
        return None
    table = {key: tuple(_as_list(v)) for key, v in rule.map.items()}
    lookup = steps.compile_lookup(table, tuple(rule.default))
    exact = steps.exact_entries(table)
    source = Source(tuple(tuple(p.split(".")) for p in (rule.paths or [rule.path])))
    return source, _categories_apply(exact, lookup, rule.lower, source.describe())


def categories_column(rule: CategoryRule) -> Column | None:
    """The chunk-at-once form of a categories rule of one path without `lower`."""
    if rule.path is None or rule.lower:
        return None
    table: dict = steps.exact_entries({k: tuple(_as_list(v)) for k, v in rule.map.items()})
    table[None] = table[""] = ()  # an absent value means no categories
    return Column("exact", table)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _categories_apply(exact: dict, lookup: Callable[[Any], tuple[str, ...]], lower: bool, where: str) -> Apply:
    def apply(raw: Any, facts: dict) -> None:
        if raw is None or raw == "":
            return
        if type(raw) is str and "categories" not in facts:  # the common case, kept short
            key = raw.lower() if lower else raw
            names = exact.get(key) or lookup(key)
            if names:
                facts["categories"] = names
            return
        _merge_categories(raw, facts, lookup, lower, where)

    return apply


def _merge_categories(raw: Any, facts: dict, lookup: Callable[[Any], tuple[str, ...]], lower: bool,
                      where: str) -> None:
    """Categories of each value of a list, or merged with categories mapped as a field."""
    found: list[str] = list(facts.get("categories") or ())
    try:
        for key in raw if isinstance(raw, (list, tuple)) else (raw,):
            found.extend(n for n in lookup(key.lower() if lower and type(key) is str else key) if n not in found)
    except ValueError as exc:
        raise DecodeError(f"categories: {exc} ({where})") from None
    if found:
        facts["categories"] = tuple(found)


@dataclass(frozen=True, slots=True)
class FieldEntry:
    """One `fields:` entry with where it was written (formats may extend others)."""

    name: str
    spec: FieldMapping
    origin: Origin


def compile_mapping(
    fields: list[FieldEntry],
    categories: tuple[CategoryRule, Origin] | None,
    fields_origin: Origin,
    problems: Problems,
    known_categories: frozenset[str] = DEFAULT_CATEGORIES,
    declared: frozenset[str] = frozenset(),
) -> Mapping | None:
    """Compile every entry, reporting every problem; None when there was any.

    `declared` names targets whose settings were broken (already reported), so that they
    do not also count as missing.
    """
    before = len(problems.items)
    compiled = [compile_field(e.name, e.spec, e.origin, problems, known_categories) for e in fields]
    mapped = {e.name for e in fields} | declared
    for name in REQUIRED_FIELDS:
        if name not in mapped:
            problems.add(
                fields_origin.doc, fields_origin.path, f"{name!r} must be mapped: every event needs it", at_key=True
            )
    category_rule = None
    if categories is not None:
        category_rule = compile_categories(categories[0], categories[1], problems, known_categories)
    if len(problems.items) > before:
        return None
    column = categories_column(categories[0]) if categories is not None else None
    return Mapping(tuple(c for c in compiled if c is not None), category_rule, column)


class GenericMapper:
    """Builds event facts from a decoded dict record; the reference semantics."""

    def __init__(self, mapping: Mapping, nested: bool):
        leaf = nested_reader if nested else flat_reader
        self._steps = tuple((compile_reader(source, leaf), apply) for source, apply in mapping.rules())

    def facts(self, record: dict) -> dict:
        facts: dict = {}
        for read, apply in self._steps:
            apply(read(record), facts)
        return facts
