"""The decoder for records of the Elasticsearch source: ECS documents -> AccessEvents.

It stands where a source's ``Normaliser`` stands, with the same interface
(``process(batch, source_name=None) -> (events, quarantined, skipped)``), and differs
from it in one way that matters: the event keeps the ``event.id`` (and log path,
offset and dataset) it was given where it was first read. A file format's normaliser
derives the id from the file and offset; here the "file" is a search, and a new id
would make every shipped event a different event.

The events were normalised and enriched by the daemon that shipped them: their
``neo.data.subject_ids`` are already pseudonyms, and the enrich facts are as of that
daemon's directory.
"""

from __future__ import annotations

import re

import msgspec

from auditd.decode.quarantine import Quarantined
from auditd.decode.values import event_problem
from auditd.errors import DecodeError
from auditd.event import ACTIONS, ATTR_TO_FIELD, OUTCOMES, REQUIRED_FIELDS, AccessEvent, from_ecs, get_path
from auditd.sources.base import Batch

FORMAT_NAME = "ecs"  # the name the service registers this decoder under

_decode_json = msgspec.json.Decoder().decode
_ATTRIBUTES = AccessEvent.__struct_fields__
_VOCABULARIES = {"event.action": ACTIONS, "event.outcome": OUTCOMES}
_POSITION = re.compile(r"`\$\[(\d+)\]")  # the first index of msgspec's path: the attribute


def decode_document(record: bytes) -> AccessEvent:
    """One ECS document (JSON bytes) as an AccessEvent; DecodeError says why not."""
    try:
        doc = _decode_json(record)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise DecodeError("invalid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise DecodeError("expected a JSON object")
    missing = [name for name in (*REQUIRED_FIELDS, "event.id") if get_path(doc, name) in (None, "")]
    if missing:
        raise DecodeError(f"missing {', '.join(missing)}")
    for name, allowed in _VOCABULARIES.items():
        value = get_path(doc, name)
        if value is not None and value not in allowed:
            found = repr(value) if isinstance(value, str) else f"a {type(value).__name__}"
            raise DecodeError(f"{name}: expected one of {', '.join(allowed)}, found {found[:80]}")
    try:
        event = from_ecs(doc)
        # from_ecs trusts its input; a document from another writer may not match the
        # types (a number where a string belongs): check them once here
        event = msgspec.convert(msgspec.structs.astuple(event), AccessEvent, strict=False)
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        raise DecodeError(f"not an access event: {_field_named(str(exc))}") from None
    problem = event_problem(event)  # what a file's decoder would have quarantined
    if problem is not None:
        raise DecodeError(problem)
    return event


def _field_named(message: str) -> str:
    """msgspec names a place in the array form by position (`$[3]`): name the ECS field."""
    def name(match: re.Match) -> str:
        position = int(match.group(1))
        if position >= len(_ATTRIBUTES):
            return match.group(0)
        return "`" + ATTR_TO_FIELD.get(_ATTRIBUTES[position], _ATTRIBUTES[position])

    return _POSITION.sub(name, message, count=1)


class EcsDocumentDecoder:
    """Registered for sources of kind ``elasticsearch`` in place of a Normaliser."""

    def __init__(self, source_name: str | None = None):
        self.source_name = source_name

    def process(self, batch: Batch, source_name: str | None = None, *, start: int = 0,
                stop: int | None = None) -> tuple[list[AccessEvent], list[Quarantined], int]:
        """(events, quarantined documents, skipped) of records[start:stop]; a blank record
        is skipped. The same interface as the file Normaliser, chunks included."""
        name = source_name or self.source_name or batch.source
        events: list[AccessEvent] = []
        quarantined: list[Quarantined] = []
        skipped = 0
        for record, offset in zip(batch.records[start:stop], batch.offsets[start:stop]):
            if not record.strip():
                skipped += 1
                continue
            try:
                events.append(decode_document(record))
            except DecodeError as exc:
                quarantined.append(Quarantined.of(name, batch.path, offset, str(exc), record))
            except Exception as exc:  # noqa: BLE001 - a bug must cost one document, not the source
                reason = f"internal error: {type(exc).__name__}: {exc}"
                quarantined.append(Quarantined.of(name, batch.path, offset, reason, record))
        return events, quarantined, skipped
