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


# --- CloudTrail as AWS delivers it, and the Panther corpus ------------------------------------
import gzip  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from auditd.enrich.pseudonym import create_key_file  # noqa: E402
from auditd.sources.framing import JsonDocumentFramer  # noqa: E402

PANTHER = CAPTURE_DIR.parent / "panther_labeled_tests" / "aws_cloudtrail_rules.tests.jsonl"


def replay_cli(tmp_path: Path, *files: Path, fmt: str = "cloudtrail-files") -> dict:
    if not (tmp_path / "pseudonym.key").exists():
        create_key_file(tmp_path / "pseudonym.key")
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: state\nsources:\n  - name: aws\n    paths: [ct/*.json.gz]\n    format: {fmt}\n"
                      "pseudonym:\n  key_file: pseudonym.key\nrules:\n  include_shipped: false\n")
    out = subprocess.run([sys.executable, "-m", "auditd.cli", "replay", "-c", str(config), "--json",
                          *map(str, files)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_capture_as_aws_delivers_it_wrapped_and_gzipped_is_every_record_once(records, tmp_path):
    delivered = tmp_path / "123456789123_CloudTrail_us-east-1_20200914T0120Z_x.json.gz"
    delivered.write_bytes(gzip.compress(json.dumps({"Records": records}, separators=(",", ":")).encode()))
    pretty = tmp_path / "array.json"  # a JSON array, pretty-printed, as an export tool writes it
    pretty.write_text(json.dumps(records, indent=2))
    summary = replay_cli(tmp_path, delivered, pretty)
    assert (summary["events"], summary["quarantined"]) == (2 * len(records), 0)
    again = replay_cli(tmp_path, delivered, pretty)
    assert again["records"] == 0  # never read twice


def test_the_capture_one_record_per_line_reads_the_same_whole(records):
    text = "\n".join(json.dumps(r) for r in records).encode()
    found, offsets, rejected = JsonDocumentFramer().split_document(text)
    assert rejected == [] and [json.loads(r) for r in found] == records
    problems = Problems()
    fmt = load_format("cloudtrail-files", problems)
    batch = Batch("aws", "x.json", "c10udtra11" * 4, found, offsets, Checkpoint("aws", "c10udtra11" * 4, "x", 0))
    events, quarantined, skipped = Normaliser(fmt).process(batch)
    assert (len(events), quarantined, skipped) == (len(records), [], 0)


def panther_logs() -> list[dict]:
    if not PANTHER.is_file():
        pytest.skip(f"the Panther labelled tests are not in {PANTHER} (../shared/data sits beside the checkout in CI)")
    return [json.loads(line)["log"] for line in PANTHER.read_text(encoding="utf-8").splitlines() if line.strip()]


def well_formed(log: dict) -> bool:
    """CloudTrail as AWS writes it: an eventName, and an eventTime in ISO 8601 (or the time
    a shipper put beside it). Panther's own fixtures hold some that are not: keys
    lowercased by its data lake, records cut down to a few keys, 'redacted' times."""
    when = log.get("eventTime") or log.get("@timestamp") or log.get("p_event_time")
    try:
        dt.datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    except ValueError:
        return False
    return bool(log.get("eventName"))


def test_every_well_formed_panther_record_is_an_event_and_unknown_apis_are_other():
    # main quarantined 81 of these 461 records: 57 for an API the map did not list
    logs = panther_logs()
    events, quarantined, _ = normalise(logs)
    kept = [log for log in logs if well_formed(log)]
    assert len(events) == len(kept) == 437 and len(quarantined) == len(logs) - len(kept) == 24
    assert all("expected" in q.reason and ("found none" in q.reason or "got" in q.reason) for q in quarantined)
    other = [e for e in events if e.action == "other"]
    assert len(other) == 56 and all(e.labels["event_name"] for e in other)
    assert {e.labels["event_name"] for e in other} >= {"AuthorizeSecurityGroupIngress", "SendCommand"}
