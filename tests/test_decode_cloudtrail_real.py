"""The shipped cloudtrail format on a real CloudTrail capture (OTRF: S3 data theft
through an EC2 proxy), one record per line as shippers deliver it."""

from __future__ import annotations

import collections
import datetime as dt
import json
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.decode import Normaliser, load_format
from auditd.sources.base import Batch, Checkpoint

pytestmark = pytest.mark.realdata

CAPTURE_DIR = Path(__file__).resolve().parents[2] / "shared/data/otrf_aws_s3_exfil"


def cloudtrail_records(text: str) -> list[dict]:
    """The capture's records, whether it holds a CloudTrail file ({"Records": [...]}),
    a JSON array, or one object per line."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return whole["Records"] if isinstance(whole, dict) else whole


@pytest.fixture(scope="module")
def records() -> list[dict]:
    captures = sorted(CAPTURE_DIR.glob("*.json")) if CAPTURE_DIR.is_dir() else []
    if not captures:
        pytest.skip(
            f"the OTRF CloudTrail capture is not in {CAPTURE_DIR} (../shared/data sits beside the checkout in CI)"
        )
    return cloudtrail_records(captures[0].read_text(encoding="utf-8"))


def normalise(records: list[dict]):
    lines = [json.dumps(r, separators=(",", ":")).encode() for r in records]  # one record per line
    offsets, offset = [], 0
    for line in lines:
        offsets.append(offset)
        offset += len(line) + 1
    problems = Problems()
    fmt = load_format("cloudtrail", problems)
    assert not problems.items
    batch = Batch(
        "aws",
        "cloudtrail.jsonl",
        "c10udtra11" * 4,
        lines,
        offsets,
        Checkpoint("aws", "c10udtra11" * 4, "cloudtrail.jsonl", offset),
    )
    return Normaliser(fmt).process(batch, "aws")


def test_every_record_is_an_event(records):
    events, quarantined, skipped = normalise(records)
    assert [q.reason for q in quarantined] == [] and skipped == 0
    assert len(events) == len(records) > 100


def test_actions_users_and_times(records):
    events, _, _ = normalise(records)
    names = collections.Counter(r["eventName"] for r in records)
    actions = collections.Counter(e.action for e in events)
    assert actions["download"] == names["GetObject"] > 0
    assert actions["list"] == sum(n for name, n in names.items() if name.startswith("List"))
    assert actions["login"] == names["AssumeRole"]
    assert (
        actions["read"]
        == sum(n for name, n in names.items() if name.startswith(("Describe", "Get"))) - names["GetObject"]
    )
    for record, event in zip(records, events):
        when = record.get("eventTime") or record["@timestamp"]
        assert event.timestamp == dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        identity = record["userIdentity"]
        assert event.user_id == (identity.get("arn") or identity.get("principalId") or identity.get("invokedBy"))
        assert event.labels["user_type"] == identity["type"]
        assert event.outcome == "success" if "errorCode" not in record else event.outcome in ("denied", "failure")


def test_s3_objects_are_the_resources_and_service_calls_have_no_ip(records):
    events, _, _ = normalise(records)
    downloads = [e for e in events if e.action == "download"]
    assert downloads and all(e.resource_type == "s3" and "/" in e.resource_id for e in downloads)
    assert all(e.source_ip == "1.2.3.4" for e in downloads)
    from_aws = [e for e in events if e.labels["user_type"] == "AWSService"]
    assert from_aws and all(e.source_ip is None for e in from_aws)
