"""How stored events are encoded, and decoders that read every encoding a store may hold.

Events are msgpack arrays of AccessEvent's attributes in order (see AccessEvent). Stores
written before that hold msgpack maps (attribute name -> value), and may go on getting
them for a while: an older daemon still running beside a newer command, or a version
downgraded and upgraded again. Rows are therefore never rewritten; each one is read
in the encoding it was written in, told apart by its first bytes (array or map). Old
rows age out with retention.

    decode = segment_decoder(stored_view("_Login", ("timestamp", "action", "user_id")))
    for event in decode(doc): ...          # the view's attributes, whatever wrote the row
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from auditd.event import AccessEvent, struct_field

EVENT_ENCODING_KEY = "event_encoding"  # in the store's meta table
EVENT_ENCODING = "array-1"  # what this version writes; it reads this and the maps before it

encode = msgspec.msgpack.Encoder().encode

_MapFormEvent = msgspec.defstruct("_MapFormEvent", [struct_field(f) for f in msgspec.structs.fields(AccessEvent)])
_decode_map_segment = msgspec.msgpack.Decoder(list[_MapFormEvent]).decode
_decode_map_event = msgspec.msgpack.Decoder(_MapFormEvent).decode
_decode_array_event = msgspec.msgpack.Decoder(AccessEvent).decode

# msgpack type bytes: fixmap, map 16, map 32
_MAP_FIRST_BYTES = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
# the size of an array header, by its first byte: fixarray, array 16, array 32
_ARRAY_HEADER = {**dict.fromkeys(range(0x90, 0xA0), 1), 0xDC: 3, 0xDD: 5}


def segment_decoder(view: type = AccessEvent) -> Callable[[bytes], list[Any]]:
    """A function: a stored segment -> its events, as `view`s (AccessEvent or a
    `stored_view`). Map-form segments give full AccessEvents, which have every
    attribute a view has."""
    decode_arrays = msgspec.msgpack.Decoder(list[view]).decode

    def decode(doc: bytes) -> list[Any]:
        if _segment_of_maps(doc):
            return [_from_map(e) for e in _decode_map_segment(doc)]
        return decode_arrays(doc)

    return decode


def decode_event(doc: bytes) -> AccessEvent:
    """One stored event (an evidence row), in either encoding."""
    if doc[:1] and doc[0] in _MAP_FIRST_BYTES:
        return _from_map(_decode_map_event(doc))
    return _decode_array_event(doc)


def _segment_of_maps(doc: bytes) -> bool:
    header = _ARRAY_HEADER.get(doc[0]) if doc else None
    # an empty segment, or one that is not an array, goes to the array decoder (which says why)
    return header is not None and len(doc) > header and doc[header] in _MAP_FIRST_BYTES


def _from_map(event: Any) -> AccessEvent:
    return AccessEvent(*msgspec.structs.astuple(event))
