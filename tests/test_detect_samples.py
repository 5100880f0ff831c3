"""Samples: the shipped rules' samples all pass, a rule without a positive sample
fails, and `test-rules` reports as text and JSON with the right exit code."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.detect.ruleset import RuleSet, load_rules
from auditd.detect.testing import run_rule_tests, run_samples
from auditd.errors import EX_CONFIG

SHIPPED = Path(__file__).resolve().parents[1] / "rules"
CATEGORIES = {"identity": False, "contact": False, "media": False, "property": True, "location": True,
              "device": False, "biometric": True, "order": False}
TODAY = dt.date(2026, 11, 2)


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    problems = Problems()
    ruleset = load_rules([SHIPPED], problems, categories=CATEGORIES)
    assert not problems, "\n".join(str(p) for p in problems.items)
    return ruleset


def test_shipped_rules_are_realistic_in_number(shipped: RuleSet) -> None:
    assert 10 <= len(shipped) <= 60  # access log and CloudTrail, per-event and behaviour rules


@pytest.mark.parametrize("rule_id", sorted(
    r.id for r in load_rules([SHIPPED], Problems(), categories=CATEGORIES).rules))
def test_shipped_rule_samples_pass(shipped: RuleSet, rule_id: str) -> None:
    results = [r for r in run_samples(shipped) if r.rule_id == rule_id]
    assert results and all(r.ok for r in results), [f"{r.sample}: {r.where}: {r.message}" for r in results]
    assert any(r.sample.startswith("match[") for r in results)


def test_shipped_rules_have_maturity_and_no_raw_identifiers_in_titles(shipped: RuleSet) -> None:
    for rule in shipped.rules:
        assert rule.spec.maturity in ("stable", "incubating", "sandbox", "deprecated")
        assert "neo.resource.id" not in (rule.spec.title or "")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


NO_POSITIVE = """\
- rule: untested
  desc: has only a negative sample
  condition: event.action = export
  severity: low
  tags: [sandbox]
  samples:
    no_match:
      - {event.action: read}
"""


def test_rule_without_positive_sample_fails(tmp_path: Path) -> None:
    problems = Problems()
    ruleset = load_rules([write(tmp_path, NO_POSITIVE)], problems)
    assert not problems
    results = run_samples(ruleset)
    missing = [r for r in results if r.sample == "-"]
    assert len(missing) == 1 and not missing[0].ok
    assert missing[0].message == "the rule has no sample that must match"
    assert str(missing[0].where).endswith("rules.yaml:1:3")


WRONG_SAMPLES = """\
- rule: bulk
  desc: many records
  condition: event.action = export and neo.data.record_count >= 100 and event.outcome = success
  severity: low
  tags: [stable]
  title: "{user.id} exported {neo.data.record_count}"
  exceptions:
    - {name: batch, fields: [user.id], values: [E-BATCH], reason: r, owner: o, expires: 2030-01-01}
  samples:
    match:
      - {event.action: export, neo.data.record_count: 99}
      - {event.action: export, neo.data.record_count: 100, user.id: E-BATCH}
    no_match:
      - {event.action: export, neo.data.record_count: 100, user.id: E1}
"""


def test_failing_samples_explain_themselves(tmp_path: Path) -> None:
    problems = Problems()
    ruleset = load_rules([write(tmp_path, WRONG_SAMPLES)], problems)
    assert not problems
    failed = {r.sample: r for r in run_samples(ruleset) if not r.ok}
    assert set(failed) == {"match[0]", "match[1]", "no_match[0]"}
    assert failed["match[0]"].message == "expected an alert, got none: 'neo.data.record_count >= 100' is false"
    assert str(failed["match[0]"].where).endswith("rules.yaml:11:9")
    assert failed["match[1]"].message.endswith("exception 'batch' applies (until 2030-01-01)")
    assert failed["no_match[0]"].message == "expected no alert, got: E1 exported 100"


def test_report_text_and_exit_codes(tmp_path: Path) -> None:
    report = run_rule_tests([SHIPPED], categories=CATEGORIES, today=TODAY)
    assert report.exit_code == 0, report.text
    assert report.text.splitlines()[-1].endswith("failed, 0 warning(s)")
    assert " 0 failed" in report.text
    failing = run_rule_tests([write(tmp_path, WRONG_SAMPLES)], today=TODAY)
    assert failing.exit_code == 1
    assert "FAIL bulk match[0]: " in failing.text and "PASS" not in failing.text
    assert "PASS" in run_rule_tests([SHIPPED], categories=CATEGORIES, today=TODAY, verbose=True).text


def test_report_json(tmp_path: Path) -> None:
    report = run_rule_tests([write(tmp_path, WRONG_SAMPLES)], today=dt.date(2029, 12, 25), as_json=True)
    data = json.loads(report.text)
    assert (data["rules"], data["samples"], data["failed"], data["passed"]) == (1, 3, 3, 0)
    assert data["results"][0]["rule_id"] == "bulk" and data["results"][0]["where"].endswith(":11:9")
    assert "expires on 2030-01-01" in data["warnings"][0]["message"]


def test_config_errors_exit_78(tmp_path: Path) -> None:
    broken = write(tmp_path, NO_POSITIVE.replace("event.action = export", "event.acton = export"))
    report = run_rule_tests([broken], today=TODAY)
    assert report.exit_code == EX_CONFIG
    assert "unknown field 'event.acton'" in report.text and report.text.endswith("rules not loaded")
    data = json.loads(run_rule_tests([broken], today=TODAY, as_json=True).text)
    assert data["errors"][0]["where"].endswith("rules.yaml:3:14")


FAR_TIMES = """\
- rule: far_seq
  desc: a sample sequence that runs past datetime's end
  kind: threshold
  params: {gte: 3, timespan: 10m}
  condition: event.action = read
  severity: low
  tags: [sandbox]
  samples:
    match:
      - sequence:
          - {repeat: 3, every: 1000d, event: {'@timestamp': '9998-12-31T23:00:00Z', user.id: E1, event.action: read}}
- rule: far_off
  desc: a sample at the end of year 9999
  kind: off_hours
  params: {hours: '08:00-20:00 mon-fri'}
  condition: event.action = read
  severity: low
  tags: [sandbox]
  samples:
    match:
      - {'@timestamp': '9999-12-31T23:59:59+00:00', user.id: E1, event.action: read}
"""


def test_sample_times_past_what_an_event_may_have_are_located_errors(tmp_path: Path) -> None:
    """A hostile trial: check and run died with OverflowError (exit 1) on the sequence,
    and test-rules on the off_hours sample."""
    problems = Problems()
    load_rules([write(tmp_path, FAR_TIMES)], problems)
    shown = [str(p) for p in problems.items]
    assert any("rules.yaml:11:46: [0].samples.match[0].sequence[0].event: the sequence runs past 9998" in p
               for p in shown), shown
    assert any("[1].samples.match[0].@timestamp: '@timestamp' is an ISO 8601 time from 1970 to 9998, got "
               "'9999-12-31T23:59:59+00:00'" in p for p in shown), shown
