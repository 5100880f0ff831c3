"""The store's one time representation, and its codec.

Every time in every table is UTC ISO 8601 text of one fixed width,
``YYYY-MM-DDTHH:MM:SS.ffffff+00:00`` (32 characters): text order is time order, so
range queries and indexes work on the text as stored, and a person reading the file
with the sqlite3 shell sees a time, not a number. Naive datetimes are a bug upstream
and are refused, never guessed.
"""

from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc
WIDTH = 32  # len("2026-11-02T01:15:03.123000+00:00")


def to_db(value: dt.datetime) -> str:
    """A fixed-width UTC ISO string for the store."""
    if value.tzinfo is not UTC:  # the common case needs no conversion
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: every time must carry its zone")
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def from_db(text: str) -> dt.datetime:
    """The aware datetime a stored time stands for."""
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:  # only a hand-edited row can be naive; the store writes UTC
        return value.replace(tzinfo=UTC)
    return value


def now_db() -> str:
    return to_db(dt.datetime.now(UTC))


def normalise(text: str | None) -> str | None:
    """A stored time in the one representation, whatever ISO form it was written in
    (older versions wrote ``isoformat()``, which drops zero microseconds)."""
    if text is None:
        return None
    try:
        return to_db(from_db(text))
    except ValueError:
        return text  # unreadable: kept as it is rather than guessed at
