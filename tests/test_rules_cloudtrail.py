"""The shipped CloudTrail rules on real and labelled CloudTrail: Panther's labelled tests
(benchmarks/panther_cloudtrail.py) and the OTRF capture of an S3 theft, where the only
rule that used to fire was the office-network rule that fires on everyone alike."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.decode import Normaliser, load_format
from auditd.detect import load_rules
from auditd.sources.base import Batch, Checkpoint

pytestmark = pytest.mark.realdata

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not here (../shared/data sits beside the checkout in CI)")
    return path


def test_panther_labelled_cloudtrail_tests_agree_where_a_rule_covers_them():
    _need(DATA / "panther_labeled_tests" / "aws_cloudtrail_rules.tests.jsonl")
    spec = importlib.util.spec_from_file_location("panther_cloudtrail", REPO / "benchmarks" / "panther_cloudtrail.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    result = module.score(DATA / "panther_labeled_tests")
    total = result["total"]
    # 2 FP: a SAML sign-in and a new user's first sign-in (the record alone cannot tell);
    # 1 FN: a record whose keys Panther lower-cased, which the format does not read
    assert total.get("TP", 0) >= 23 and total.get("FP", 0) <= 2 and total.get("FN", 0) <= 1, result
    assert total.get("TN", 0) >= 22, result


def test_the_otrf_s3_theft_capture_raises_the_discovery_rule_on_the_stolen_session():
    folder = _need(DATA / "otrf_aws_s3_exfil")
    captures = sorted(folder.glob("*.json"))
    if not captures:
        pytest.skip(f"no capture in {folder}")
    text = captures[0].read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
        records = whole["Records"] if isinstance(whole, dict) else whole
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    records.sort(key=lambda r: r.get("eventTime", ""))
    lines = [json.dumps(r, separators=(",", ":")).encode() for r in records]
    offsets, offset = [], 0
    for line in lines:
        offsets.append(offset)
        offset += len(line) + 1
    problems = Problems()
    fmt = load_format("cloudtrail", problems)
    rules = load_rules([REPO / "rules"], problems)
    assert not problems, [str(p) for p in problems.items]
    batch = Batch("aws", "ct.jsonl", "c" * 32, lines, offsets, Checkpoint("aws", "c" * 32, "ct.jsonl", offset))
    events, quarantined, _ = Normaliser(fmt).process(batch, "aws")
    assert not quarantined
    alerts = [a for a in rules.evaluate_all(events) if a.rule_id.startswith("aws_")]
    assert {a.rule_id for a in alerts} == {"aws_discovery_burst"}
    assert all("labels.access_key_id ASIA" in a.reason for a in alerts)
