"""Formats: found by name or path, layered over what they extend, and compiled.

A format is named in a source's config as one of: a format under ``formats:`` in the
daemon's config, a shipped format (YAML package data in ``auditd/formats/``:
``neo-crm``, ``pgaudit``, ``cloudtrail``), or the path of a format file. An operator
tunes a shipped format without editing it by writing one that ``extends`` it: each key
given replaces the extended one, and ``fields`` replace it target by target (null drops
a target). A format under ``formats:`` may extend the shipped format of the same name.
Every error keeps the file, line and column of the layer that wrote it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from functools import partial
from typing import Any, Callable
from typing import Mapping as MappingType

from auditd.config.located import Doc, PathKey, Problems, load_yaml_file, parse_yaml
from auditd.config.typed import MISSING, convert, did_you_mean
from auditd.decode.kinds import KINDS, JsonLinesParser, RecordParser
from auditd.decode.mapping import (
    FieldEntry,
    GenericMapper,
    Mapping,
    Origin,
    compile_mapping,
)
from auditd.decode.settings import (
    DEFAULT_CATEGORIES,
    DEFAULT_MAX_RECORD_BYTES,
    CategoryRule,
    FormatSettings,
)
from auditd.decode.columnar import EventsFunction, build_columnar_events
from auditd.decode.typed_json import build_typed_facts, typed_shape
from auditd.errors import DecodeError
from auditd.event import OTHER_ACTION
from auditd.sources.base import Framer
from auditd.sources.framing import FRAMERS

SHIPPED_PACKAGE = "auditd.formats"
FactsFunction = Callable[[bytes], "dict | None"]  # raw record -> AccessEvent kwargs, None: skipped


@dataclass(frozen=True, eq=False)
class Format:
    """A compiled format: turns one raw record into the facts of one AccessEvent."""

    name: str
    kind: str
    framing: str  # how the source must split the file into records ("lines", "csv", "json")
    make_framer: Callable[[], Framer]  # a framer for one source, with the format's options (quote...)
    maps_other: bool  # event.action may be `other`: an operation the map does not know
    dataset: str
    description: str
    facts: FactsFunction  # raises DecodeError; None for a valid record that is not an access
    generic_facts: FactsFunction  # the reference path; `facts` falls back to it
    typed: bool  # whether `facts` tries typed structs first (JSON lines)
    # a whole chunk of records at once, or None for a chunk to take `facts` record by record
    events: EventsFunction | None = None


@dataclass(frozen=True)
class _Layer:
    """One format in an `extends` chain, and where it was written."""

    name: str
    settings: FormatSettings
    origin: Origin  # (its file, ()) or (the daemon's config, ("formats", name))
    identity: str  # to detect a format that extends itself


def shipped_format_names() -> list[str]:
    folder = resources.files(SHIPPED_PACKAGE)
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_format(
    name_or_path: str | Path,
    problems: Problems,
    *,
    custom: MappingType[str, Any] | None = None,
    referrer: Doc | None = None,
    key_path: PathKey = (),
    categories: frozenset[str] | None = None,
) -> Format | None:
    """The format a source names; None, with every problem in `problems`, if it is broken.

    `custom` holds the formats under ``formats:`` of the daemon's config (`referrer`);
    `key_path` is where the name was written, for "unknown format" problems;
    `categories` are the configured data-category names, checked in category maps.
    """
    layers = _layers(str(name_or_path), problems, custom or {}, referrer, key_path, seen=())
    if layers is None:
        return None
    return _compile_layers(layers, problems, categories if categories is not None else DEFAULT_CATEGORIES)


def _compile_layers(layers: list[_Layer], problems: Problems, known_categories: frozenset[str]) -> Format | None:
    before = len(problems.items)
    top = layers[-1]
    parser = _build_parser(layers, problems)
    fields, declared = _merged_fields(layers)
    categories = _merged_categories(layers, problems)
    mapping = compile_mapping(fields, categories, _origin(top, "fields"), problems, known_categories, declared)
    if len(problems.items) > before or parser is None or mapping is None:
        return None
    max_bytes = _value(layers, "max_record_bytes", DEFAULT_MAX_RECORD_BYTES)
    generic, typed, events = _facts_functions(parser, mapping, max_bytes)
    return Format(
        name=top.name,
        kind=_value(layers, "kind", ""),
        framing=parser.framing,
        make_framer=partial(FRAMERS[parser.framing], **getattr(parser, "framing_options", dict)()),
        maps_other=_maps_other(fields),
        dataset=_value(layers, "dataset", top.name),
        description=_value(layers, "description", ""),
        facts=typed or generic,
        generic_facts=generic,
        typed=typed is not None,
        events=events,
    )


def _origin(layer: _Layer, key: str) -> Origin:
    return Origin(layer.origin.doc, layer.origin.path + (key,))


def _last(layers: list[_Layer], key: str) -> _Layer | None:
    """The last layer that gives `key`: it overrides the ones it extends."""
    return next((layer for layer in reversed(layers) if getattr(layer.settings, key) is not None), None)


def _value(layers: list[_Layer], key: str, default: Any) -> Any:
    layer = _last(layers, key)
    return default if layer is None else getattr(layer.settings, key)


def _merged_categories(layers: list[_Layer], problems: Problems) -> tuple[CategoryRule, Origin] | None:
    """The categories rule, later layers replacing the keys they give (a format that
    extends cloudtrail gives only its `map`, and keeps the bucket path)."""
    merged: dict[str, Any] = {}
    origin = None
    for layer in layers:
        rule = layer.settings.categories
        if rule is None:
            continue
        if not _complete(rule):
            return None  # reported when it was converted
        origin = _origin(layer, "categories")
        written = _written(origin.doc, origin.path) or {f.name: True for f in dataclasses.fields(CategoryRule)}
        for alternative, other in (("path", "paths"), ("paths", "path")):
            if alternative in written:
                merged.pop(other, None)  # giving one of them replaces the other
        merged.update({f.name: getattr(rule, f.name) for f in dataclasses.fields(CategoryRule) if f.name in written})
    if origin is None:
        return None
    rule = CategoryRule(**merged)
    if (rule.path is None) == (rule.paths is None):
        problems.add(origin.doc, origin.path, "give exactly one of path, paths (here, or in the format it extends)")
        return None
    return rule, origin


def _maps_other(fields: list[FieldEntry]) -> bool:
    """Whether event.action can come out as `other` (the map's default, or a value)."""
    spec = next((e.spec for e in fields if e.name == "event.action"), None)
    if spec is None:
        return False
    values = [spec.value, spec.default, *(spec.map or {}).values()]
    return OTHER_ACTION in values


def _merged_fields(layers: list[_Layer]) -> tuple[list[FieldEntry], frozenset[str]]:
    """Field entries, later layers replacing earlier ones target by target; and every
    target declared, including ones whose settings were broken (and already reported)."""
    merged: dict[str, FieldEntry | None] = {}
    declared: set[str] = set()
    for layer in layers:
        for name, spec in layer.settings.fields.items():
            # a broken entry (left out, or with MISSING parts) was reported when converted
            merged[name] = FieldEntry(name, spec, _origin(layer, "fields") + name) if spec and _complete(spec) else None
        written = _written(layer.origin.doc, layer.origin.path + ("fields",))
        declared |= {name for name, raw in written.items() if raw is not None}
        declared -= {name for name, raw in written.items() if raw is None}
    return [e for e in merged.values() if e is not None], frozenset(declared)


def _complete(value: Any) -> bool:
    """Whether converted settings hold no MISSING part (a problem already reported)."""
    if value is MISSING:
        return False
    if isinstance(value, (list, tuple)):
        return all(_complete(v) for v in value)
    if isinstance(value, dict):
        return all(_complete(v) for v in value.values())
    if dataclasses.is_dataclass(value):
        return all(_complete(getattr(value, f.name)) for f in dataclasses.fields(value))
    return True


def _written(doc: Doc | None, path: PathKey) -> dict:
    """The mapping as written at path of doc (converted settings leave broken entries out)."""
    node: Any = doc.data if doc is not None else None
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _build_parser(layers: list[_Layer], problems: Problems) -> RecordParser | None:
    kind_layer = _last(layers, "kind")
    if kind_layer is None:
        top = layers[-1]
        problems.add(top.origin.doc, top.origin.path, f"missing required key 'kind' (valid kinds: {', '.join(KINDS)})")
        return None
    parser_class = KINDS.get(kind_layer.settings.kind)
    if parser_class is None:
        problems.add(
            kind_layer.origin.doc,
            kind_layer.origin.path + ("kind",),
            f"unknown kind {kind_layer.settings.kind!r} (valid kinds: {', '.join(KINDS)})",
        )
        return None
    options_layer = _last(layers, "options") or kind_layer
    origin = _origin(options_layer, "options")
    options = convert(parser_class.options_class, options_layer.settings.options, origin.doc, origin.path, problems)
    if not _complete(options):
        return None
    return parser_class.build(options, origin, problems)


def _facts_functions(
    parser: RecordParser, mapping: Mapping, max_bytes: int
) -> tuple[FactsFunction, FactsFunction | None, EventsFunction | None]:
    """(generic, typed or None, chunk-at-once or None); the record functions with the
    checks every record gets first."""
    map_record = GenericMapper(mapping, parser.nested).facts
    parse = parser.parse

    def parse_and_map(record: bytes) -> dict | None:
        parsed = parse(record)
        return None if parsed is None else map_record(parsed)

    generic = _guarded(parse_and_map, max_bytes)
    shape = typed_shape(mapping) if isinstance(parser, JsonLinesParser) else None
    if shape is None:
        return generic, None, None
    typed = build_typed_facts(shape, mapping, generic, max_bytes)
    return generic, typed, build_columnar_events(shape, mapping, max_bytes)


def _guarded(facts_of: FactsFunction, max_bytes: int) -> FactsFunction:
    def facts(record: bytes) -> dict | None:
        if len(record) > max_bytes:
            # a runaway record would cost memory all the way down the pipeline
            raise DecodeError(f"record is {len(record)} bytes, more than max_record_bytes ({max_bytes})")
        if not record or record.isspace():
            return None  # a blank line holds no access; it is counted as skipped
        return facts_of(record)

    return facts


# --- finding formats ------------------------------------------------------------------


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.endswith((".yaml", ".yml"))


def _layers(
    spec: str,
    problems: Problems,
    custom: MappingType[str, Any],
    referrer: Doc | None,
    key_path: PathKey,
    seen: tuple[str, ...],
) -> list[_Layer] | None:
    """The `extends` chain ending with the format `spec`, base first."""
    layer = _find(spec, problems, custom, referrer, key_path, seen)
    if layer is None:
        return None
    if layer.identity in seen:
        problems.add(referrer, key_path, f"format {spec!r} extends itself ({' -> '.join(seen + (layer.identity,))})")
        return None
    if layer.settings.extends is None:
        return [layer]
    base = _layers(
        layer.settings.extends,
        problems,
        custom,
        layer.origin.doc,
        layer.origin.path + ("extends",),
        seen + (layer.identity,),
    )
    return None if base is None else base + [layer]


def _find(
    spec: str,
    problems: Problems,
    custom: MappingType[str, Any],
    referrer: Doc | None,
    key_path: PathKey,
    seen: tuple[str, ...],
) -> _Layer | None:
    """A format under `formats:`, else a shipped one, else a file; None if a problem was recorded."""
    if spec in custom and f"formats.{spec}" not in seen:  # so that it can extend the shipped one
        settings = custom[spec]
        if settings is MISSING:
            return None  # its problems were reported when the config was loaded
        return _Layer(spec, settings, Origin(referrer, ("formats", spec)), f"formats.{spec}")
    if _looks_like_path(spec):
        path = Path(spec)
        if not path.is_absolute() and referrer is not None:
            path = referrer.folder / path
        doc = load_yaml_file(path, problems, key_path=key_path, referrer=referrer)
        return _file_layer(path.stem, doc, str(path.resolve()), problems)
    names = shipped_format_names()
    if spec not in names:
        known = sorted(set(names) | set(custom))
        problems.add(
            referrer,
            key_path,
            f"unknown format {spec!r}{did_you_mean(spec, known)} (known formats: {', '.join(known)}; or give the "
            "path of a .yaml file)",
        )
        return None
    entry = resources.files(SHIPPED_PACKAGE) / f"{spec}.yaml"
    doc = parse_yaml(entry.read_text(encoding="utf-8"), str(entry), problems)
    return _file_layer(spec, doc, f"shipped:{spec}", problems)


def _file_layer(name: str, doc: Doc | None, identity: str, problems: Problems) -> _Layer | None:
    if doc is None:
        return None
    settings = convert(FormatSettings, doc.data, doc, (), problems)
    return None if settings is MISSING else _Layer(name, settings, Origin(doc, ()), identity)
