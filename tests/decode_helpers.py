"""Helpers shared by the decode tests: load a shipped format, run records through the
normaliser as one batch, and build JSON records."""

from __future__ import annotations

import json

from auditd.config.located import Problems
from auditd.decode import Format, Normaliser, load_format
from auditd.event import AccessEvent
from auditd.sources.base import Batch, Checkpoint

FINGERPRINT = "0123456789abcdef0123456789abcdef"


def shipped(name: str) -> Format:
    problems = Problems()
    fmt = load_format(name, problems)
    assert not problems.items, problems.items
    return fmt


def run(fmt: Format, *records: bytes):
    """(events, quarantined, skipped) of one batch of records."""
    offsets, offset = [], 0
    for record in records:
        offsets.append(offset)
        offset += len(record) + 1
    batch = Batch(
        "src",
        "/var/log/app.log",
        FINGERPRINT,
        list(records),
        offsets,
        Checkpoint("src", FINGERPRINT, "/var/log/app.log", offset),
    )
    return Normaliser(fmt).process(batch, "src")


def one_event(fmt: Format, record: bytes) -> AccessEvent:
    events, quarantined, skipped = run(fmt, record)
    assert quarantined == [] and skipped == 0, [q.reason for q in quarantined]
    return events[0]


def reason(fmt: Format, record: bytes) -> str:
    events, quarantined, _ = run(fmt, record)
    assert events == [] and len(quarantined) == 1
    return quarantined[0].reason


def jl(**record) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode()


def cloudtrail(**fields) -> bytes:
    base = {
        "eventTime": "2020-09-14T01:02:34Z",
        "eventSource": "s3.amazonaws.com",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "1.2.3.4",
        "userIdentity": {"type": "IAMUser", "userName": "pedro", "arn": "arn:aws:iam::123456789123:user/pedro"},
    }
    return jl(**{**base, **fields})
