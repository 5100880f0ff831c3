"""JSON lines a chunk at a time: one decode call for the chunk, then each event field
computed for every record at once by C built-ins (map, attrgetter, dict.get), and the
events built by one map over AccessEvent.

Record by record, each event costs a dozen Python calls (the decode, the copy of the
struct's values, each field's `apply`, the keyword call of AccessEvent); a chunk of 256
costs the same dozen calls per *field*, whatever the number of records. The result is
what the record-by-record path gives; the tests compare them.

A chunk goes this way only when every record of it is an ordinary one: it decodes
under the strict types, every value is in its field's exact table, every time carries
its UTC offset. Otherwise (a blank line, a bad record, a new operation name, a naive
time) `events` returns None and the chunk takes the record-by-record path, which
quarantines, skips or maps each record as the format says. Nothing is decided here
that the record path would decide differently.

The records are joined as one JSON array with a separator between neighbours: a
number drawn at random when the format is compiled. A line that is not one complete
JSON value (`{"a": "` on one line and `"}` on the next, or two objects on one line)
would shift records against their offsets; the separator, which no log writer can
know, must then appear exactly between every two records, or the chunk goes the
record path.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Any, Callable, Iterable

import msgspec
from msgspec import NODEFAULT

from auditd.decode.mapping import Column, Mapping
from auditd.decode.typed_json import TypedShape
from auditd.decode.values import EARLIEST, LATEST, SHAPES
from auditd.event import EVENT_DEFAULTS, AccessEvent

# (records, offsets, event id prefix, log path, dataset) -> events, or None: not this way
EventsFunction = Callable[[list[bytes], list[int], str, "str | None", str], "list[AccessEvent] | None"]

_UTC = dt.timezone.utc
_ABSENT = frozenset((None,))
CLOSED_RETRY_CHUNKS = 64  # chunks without the closed decode after one with unread keys
_UNMAPPED = object()  # what an exact table gives for a value it lacks
_ATTRIBUTES = [f.name for f in msgspec.structs.fields(AccessEvent)]  # AccessEvent's positional order
# Set by the normaliser for every event; the mapping cannot set them (mapping.OWNED_ELSEWHERE).
_PROVENANCE = ("event_id", "log_path", "log_offset", "dataset")


@dataclass(frozen=True, slots=True)
class _FieldPlan:
    """How one event attribute is computed for a chunk."""

    attr: str
    how: str  # a mapping.Column's: copy, time, exact
    names: tuple[str, ...]  # the struct attributes along the record path
    table: dict | None  # exact: value -> event value
    default: Any  # the value where a parent object is absent
    valid: Callable[[str], bool] | None = None  # a copy of one shape (values.SHAPES)


def build_columnar_events(shape: TypedShape, mapping: Mapping, max_bytes: int) -> EventsFunction | None:
    """The chunk-at-once function of a mapping; None when some field has no column form."""
    plans: list[_FieldPlan] = []
    for index, compiled in enumerate(mapping.fields):
        column: Column | None = compiled.column
        if column is None or (column.how == "copy") != (index in shape.copied):
            return None  # a copy the struct does not hold typed, or a rule of its own
        path = compiled.source.paths[0]
        if column.how == "time" and shape.leaf_type(path) != (dt.datetime | None):
            return None  # the key is read by another field too: the struct holds its text
        attr = compiled.target.attr
        # where a parent object is absent: the event's default for a copy, else "absent"
        default = EVENT_DEFAULTS[attr] if column.how == "copy" else None
        shaped = SHAPES.get(compiled.target.name)
        plans.append(_FieldPlan(attr, column.how, shape.field_names(path), column.table, default,
                                shaped[0] if shaped else None))
    if mapping.categories is not None:
        column = mapping.categories_column
        if column is None:
            return None
        path = mapping.categories[0].paths[0]
        plans.append(_FieldPlan("categories", "exact", shape.field_names(path), column.table, None))
    if len({p.attr for p in plans}) != len(plans):
        return None  # two rules write one attribute: the record path's order decides
    return _ChunkDecoder(shape.struct, shape.closed_struct, plans, max_bytes).events


class _ChunkDecoder:
    def __init__(self, struct: type, closed_struct: type, plans: list[_FieldPlan], max_bytes: int):
        self._struct = struct
        self._decode = msgspec.json.Decoder(list[struct | int]).decode
        self._decode_closed = msgspec.json.Decoder(list[closed_struct | int]).decode
        self._closed_struct = closed_struct
        self._skip_closed = 0  # chunks left before the closed decode is tried again
        self._separator_value = secrets.randbits(62)
        self._separator = b",%d," % self._separator_value
        self._max_bytes = max_bytes
        self._plans = plans
        # positional arguments of AccessEvent up to the last one a chunk sets; the rest
        # (labels, the enrich stage's facts) keep their defaults
        last = max(_ATTRIBUTES.index(a) for a in [*(p.attr for p in plans), *_PROVENANCE])
        self._arguments = _ATTRIBUTES[: last + 1]
        self._defaults = {a: EVENT_DEFAULTS[a] for a in self._arguments}  # NODEFAULT: labels, a dict each

    def events(self, records: list[bytes], offsets: list[int], id_prefix: str, log_path: str | None,
               dataset: str) -> list[AccessEvent] | None:
        typed = self._typed(records)
        if typed is None:
            return None
        parents: dict[tuple[str, ...], list] = {}
        columns: dict[str, Iterable] = {}
        for plan in self._plans:
            values = _values(typed, plan, parents)
            if plan.how == "copy":
                if plan.valid is not None:
                    values = list(values)
                    if not all(map(plan.valid, set(values) - _ABSENT)):
                        return None  # the record path quarantines what is not of its shape
                columns[plan.attr] = values
            elif plan.how == "time":
                column = _utc_times(values)
                if column is None:
                    return None
                columns[plan.attr] = column
            else:
                column = _looked_up(values, plan.table)
                if column is None:
                    return None
                columns[plan.attr] = column
        columns["event_id"] = map(id_prefix.__add__, map(str, offsets))
        columns["log_path"] = repeat(log_path)
        columns["log_offset"] = offsets
        columns["dataset"] = repeat(dataset)
        defaults = self._defaults
        arguments = [columns[a] if a in columns else repeat(defaults[a]) if defaults[a] is not NODEFAULT
                     else iter(dict, None) for a in self._arguments]
        return list(map(AccessEvent, *arguments))

    def _typed(self, records: list[bytes]) -> list | None:
        """The chunk's records as structs, in order; None unless every one decodes alone."""
        n = len(records)
        if not n or max(map(len, records)) > self._max_bytes:
            return None
        joined = b"".join((b"[", self._separator.join(records), b"]"))
        out = self._decoded(joined)
        if out is None:
            return None
        if len(out) != 2 * n - 1 or out[1::2].count(self._separator_value) != n - 1:
            return None  # a record spilled over its line
        typed = out[::2]
        if len(set(map(type, typed))) != 1 or type(typed[0]) not in (self._struct, self._closed_struct):
            return None  # a bare number where a record should be
        return typed

    def _decoded(self, joined: bytes) -> list | None:
        """The joined chunk decoded, if every byte of it is valid UTF-8.

        msgspec checks the UTF-8 of every string it decodes, but skips the values of
        keys the struct lacks. Text with non-ASCII bytes is therefore first decoded
        with the closed structs: if no record has a key the mapping does not read,
        msgspec has checked every byte. Otherwise, one pass of Python's UTF-8 decoder
        checks them all (and the closed decode rests for a while: these logs carry
        keys the mapping leaves alone).
        """
        closed_failed = False
        if not joined.isascii():
            if self._skip_closed:
                self._skip_closed -= 1
            else:
                try:
                    return self._decode_closed(joined)
                except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
                    closed_failed = True
            try:
                joined.decode("utf-8")  # one broken byte anywhere: the record path finds it
            except UnicodeDecodeError:
                return None
        try:
            out = self._decode(joined)
        except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
            return None  # a bad record, not unread keys: the closed decode stays on
        if closed_failed:  # the open structs took what the closed ones refused: unread keys
            self._skip_closed = CLOSED_RETRY_CHUNKS
        return out


def _values(typed: list, plan: _FieldPlan, parents: dict[tuple[str, ...], list]) -> Iterable:
    """The values at a plan's path, one per record: the plan's default where a parent
    object is absent (the struct gives the default where only the key is)."""
    names = plan.names
    if len(names) == 1:
        return map(attrgetter(names[0]), typed)
    parent = _parent_column(typed, names[:-1], parents)
    return map(getattr, parent, repeat(names[-1]), repeat(plan.default))


def _parent_column(typed: list, names: tuple[str, ...], parents: dict[tuple[str, ...], list]) -> list:
    column = parents.get(names)
    if column is None:
        if len(names) == 1:
            column = list(map(attrgetter(names[0]), typed))
        else:
            above = _parent_column(typed, names[:-1], parents)
            column = list(map(getattr, above, repeat(names[-1]), repeat(None)))
        parents[names] = column
    return column


def _utc_times(values: Iterable) -> list | None:
    times = list(values)
    if None in map(getattr, times, repeat("tzinfo"), repeat(None)):
        return None  # absent, or without an offset: the format's zone applies, record by record
    try:
        column = list(map(dt.datetime.astimezone, times, repeat(_UTC)))
    except (OverflowError, ValueError):
        return None  # beyond datetime's range in UTC: the record path quarantines it
    if column and not (EARLIEST <= min(column) and max(column) < LATEST):
        return None  # a time no access log holds: the record path says which and why
    return column


def _looked_up(values: Iterable, table: dict) -> list | None:
    try:
        column = list(map(table.get, values, repeat(_UNMAPPED)))
    except TypeError:  # a list or an object where text was expected
        return None
    return None if _UNMAPPED in column else column

