"""A faster way through JSON lines: decode into msgspec Structs derived from the mapping.

The compiled mapping stays the single source of truth: the struct types are generated
from the paths it reads. A field that the mapping copies unchanged (``copied``) gets a
strict type under which a decoded value already *is* the event's value (non-empty
text, a non-negative count, a list of non-empty text), and a struct field named after
its event attribute, so msgspec checks it in C and a whole object's values reach the
event's keyword arguments through one ``asdict`` (or ``astuple``/``zip``). A time
read by one ISO 8601 rule is decoded as a datetime by msgspec's own parser (the one
the generic path tries first). Every other path is typed ``Any`` and goes through the
field's compiled ``apply``, the same closure the generic path uses.

A record that the strict types refuse (a number where text is expected, an empty
string, null, a non-object, bad JSON) is handed to the generic path, which defines the
semantics and the quarantine reason. The tests check that both paths give equal events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import Annotated, Any, Callable

import msgspec
from msgspec.structs import asdict, astuple

from auditd.decode.mapping import (
    NON_NEGATIVE,
    Apply,
    Mapping,
    Reader,
    RecordPath,
    Target,
    compile_reader,
)
from auditd.decode.values import MAX_COUNT, SHAPES
from auditd.event import EVENT_DEFAULTS

NonEmptyText = Annotated[str, msgspec.Meta(min_length=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
_ANY_LEAF: tuple[Any, Any] = (Any, None)


def strict_leaf(target: Target) -> tuple[Any, Any] | None:
    """The type and default under which a decoded value is the event's value, if any."""
    default = EVENT_DEFAULTS.get(target.attr, msgspec.NODEFAULT)
    kind = target.kind
    if kind in ("str", "ip") and default is None:
        return NonEmptyText | None, None
    if kind == "bool" and (default is None or type(default) is bool):
        return (bool | None if default is None else bool), default
    if kind == "int" and type(default) is int:
        return (NonNegative if target.name in NON_NEGATIVE else int), default
    if kind == "list" and default == ():
        return tuple[NonEmptyText, ...], ()
    return None


@dataclass(eq=False)
class _Node:
    """One key of the JSON object tree the mapping reads."""

    safe_name: str  # JSON keys such as '@timestamp' are not identifiers
    children: dict[str, "_Node"] = field(default_factory=dict)
    leaf: tuple[Any, Any] | None = None  # (type, default) when the mapping reads the value
    attr: str | None = None  # the event attribute a copied value goes to

    @property
    def field_name(self) -> str:
        # a copied value's struct field is named after its event attribute, so that
        # msgspec's asdict gives event keyword arguments directly
        return self.attr or self.safe_name

    def child(self, key: str) -> "_Node":
        if key not in self.children:
            self.children[key] = _Node(f"f{len(self.children)}")
        return self.children[key]


@dataclass(frozen=True)
class _CopyPlan:
    """How a struct's copied values reach the facts."""

    attrs: tuple[str, ...]  # event attributes of the struct's first fields
    nested: tuple[tuple[int, "_CopyPlan"], ...]  # (field position, plan) of sub-structs with copies
    whole: bool  # every field is copied: asdict(struct) is the facts


def _insert(root: _Node, path: RecordPath) -> _Node | None:
    """The leaf node of path; None when a path is both a value and an object."""
    node = root
    for part in path[:-1]:
        node = node.child(part)
        if node.leaf is not None:
            return None
    node = node.child(path[-1])
    if node.children:
        return None
    if node.leaf is None:
        node.leaf = _ANY_LEAF
    return node


def _build_tree(mapping: Mapping) -> tuple[_Node, frozenset[int]] | None:
    """The tree of keys read, and the indexes of the fields the structs copy."""
    readers: dict[RecordPath, list[int]] = {}  # path -> indexes of the fields reading it
    for index, compiled in enumerate(mapping.fields):
        for path in compiled.source.paths:
            readers.setdefault(path, []).append(index)
    for path in mapping.categories[0].paths if mapping.categories else ():
        readers.setdefault(path, []).append(-1)
    root = _Node("root")
    copied: set[int] = set()
    for path, indexes in readers.items():
        node = _insert(root, path)
        if node is None:
            return None
        fields = [mapping.fields[i] if i >= 0 else None for i in indexes]
        for index, compiled in zip(indexes, fields):
            strict = strict_leaf(compiled.target) if compiled is not None and compiled.copied else None
            if strict is not None:
                # a strict type only narrows what other readers of the key see: text stays text
                node.leaf, node.attr = strict, compiled.target.attr
                copied.add(index)
                break
        else:
            if len(fields) == 1 and fields[0] is not None and fields[0].raw_type is not None:
                node.leaf = (fields[0].raw_type, None)  # it changes the value's type: one reader only
    return root, frozenset(copied)


def _make_struct(node: _Node, name: str, *, closed: bool = False) -> tuple[type, _CopyPlan]:
    """The struct of a node's keys; `closed` ones refuse a key the mapping does not read."""
    children = sorted(node.children.values(), key=lambda c: c.attr is None)  # copied first, stable
    fields: list[tuple[str, Any, Any]] = []
    nested: list[tuple[int, _CopyPlan]] = []
    for position, child in enumerate(children):
        if child.children:
            sub_type, sub_plan = _make_struct(child, f"{name}_{child.safe_name}", closed=closed)
            fields.append((child.field_name, sub_type | None, None))
            if sub_plan.attrs or sub_plan.nested:
                nested.append((position, sub_plan))
        else:
            leaf_type, default = child.leaf
            fields.append((child.field_name, leaf_type, default))
    rename = {child.field_name: key for key, child in node.children.items()}
    # gc=False: these structs hold no cycles, and untracked objects decode faster
    struct = msgspec.defstruct(name, fields, kw_only=True, gc=False, rename=rename, forbid_unknown_fields=closed)
    attrs = tuple(c.attr for c in children if c.attr is not None)
    return struct, _CopyPlan(attrs, tuple(nested), whole=len(attrs) == len(children))


def _struct_reader(names: tuple[str, ...]) -> Reader:
    """Read the value at struct attributes `names` (None where a sub-object is absent)."""
    if len(names) == 1:
        return attrgetter(names[0])
    first, rest = names[0], names[1:]

    def read(record: Any) -> Any:
        node = getattr(record, first)
        for name in rest:
            if node is None:
                return None
            node = getattr(node, name)
        return node

    return read


def _fill(plan: _CopyPlan, struct: Any, facts: dict) -> None:
    """Copy a sub-struct's copied values into facts (and its sub-structs', recursively)."""
    if plan.whole:
        facts.update(asdict(struct))
        return
    values = astuple(struct)
    if plan.attrs:
        facts.update(zip(plan.attrs, values))
    for position, sub_plan in plan.nested:
        sub = values[position]
        if sub is not None:
            _fill(sub_plan, sub, facts)


@dataclass(frozen=True, eq=False)
class TypedShape:
    """The struct type a mapping's records decode into, and how its fields are named."""

    root: _Node
    copied: frozenset[int]  # indexes of the mapping's fields whose values the struct holds as is
    struct: type
    plan: _CopyPlan
    # the same shape refusing keys the mapping does not read: a record it decodes had
    # every string decoded, and so its UTF-8 checked, by msgspec (an unread value is not)
    closed_struct: type

    def field_names(self, path: RecordPath) -> tuple[str, ...]:
        """The struct attribute names along a record path."""
        names, node = [], self.root
        for part in path:
            node = node.children[part]
            names.append(node.field_name)
        return tuple(names)

    def leaf_type(self, path: RecordPath) -> Any:
        node = self.root
        for part in path:
            node = node.children[part]
        return node.leaf[0] if node.leaf is not None else None


def typed_shape(mapping: Mapping) -> TypedShape | None:
    """The typed structs of a mapping; None if it reads a key both as a value and as an
    object (then the generic path is used)."""
    built = _build_tree(mapping)
    if built is None:
        return None
    root, copied = built
    struct, plan = _make_struct(root, "TypedRecord")
    closed_struct, _ = _make_struct(root, "ClosedRecord", closed=True)
    return TypedShape(root, copied, struct, plan, closed_struct)


def build_typed_facts(
    shape: TypedShape, mapping: Mapping, generic_facts: Callable[[bytes], dict], max_bytes: int
) -> Callable[[bytes], dict]:
    """A function record -> event facts through the typed structs."""
    copied = shape.copied
    decode = msgspec.json.Decoder(shape.struct).decode
    leaf = lambda path: _struct_reader(shape.field_names(path))  # noqa: E731 - a reader factory
    rules: list[tuple[Reader, Apply]] = [
        (compile_reader(f.source, leaf), f.apply) for i, f in enumerate(mapping.fields) if i not in copied
    ]
    if mapping.categories is not None:
        rules.append((compile_reader(mapping.categories[0], leaf), mapping.categories[1]))
    shaped = tuple((f.target.attr, SHAPES[f.target.name][0]) for i, f in enumerate(mapping.fields)
                   if i in copied and f.target.name in SHAPES)
    return _typed_facts_function(decode, shape.plan, tuple(rules), generic_facts, max_bytes, shaped)


def _typed_facts_function(decode, plan: _CopyPlan, rules, generic_facts, max_bytes: int,
                          shaped: tuple[tuple[str, Callable[[str], bool]], ...] = ()) -> Callable[[bytes], dict]:
    top_attrs, top_whole = plan.attrs, plan.whole
    # sub-objects whose values are all copied ({"emp": {"id": .., "name": ..}}) are
    # merged here with one asdict; others go through _fill (one call more per object)
    whole_subs = tuple(position for position, sub in plan.nested if sub.whole)
    other_subs = tuple((position, sub) for position, sub in plan.nested if not sub.whole)

    def facts_of(record: bytes) -> dict | None:
        if len(record) > max_bytes or not record or record.isspace():
            return generic_facts(record)  # it says why, or skips a blank line
        try:
            typed = decode(record)
        except (msgspec.MsgspecError, ValueError, RecursionError):
            return generic_facts(record)  # the reference path decides, and says why
        if top_whole:
            facts = asdict(typed)
        else:
            values = astuple(typed)
            facts = dict(zip(top_attrs, values))
            for position in whole_subs:
                sub = values[position]
                if sub is not None:
                    facts.update(asdict(sub))
            for position, sub_plan in other_subs:
                sub = values[position]
                if sub is not None:
                    _fill(sub_plan, sub, facts)
        for read, apply in rules:
            apply(read(typed), facts)
        for attr, valid in shaped:
            value = facts.get(attr)
            if value is not None and not valid(value):
                return generic_facts(record)  # copied as read, not of its shape: the reference path says why
        return facts

    return facts_of
