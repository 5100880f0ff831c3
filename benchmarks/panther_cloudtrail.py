#!/usr/bin/env python3
"""Score the shipped CloudTrail rules against Panther's labelled CloudTrail tests.

    python benchmarks/panther_cloudtrail.py [--data ../shared/data/panther_labeled_tests] [--json]

Panther's tests are single CloudTrail records, each with the outcome Panther's rule
expects. Only the Panther rules whose behaviour a shipped rule also covers are scored
(MAPPING below); every other test is counted as not covered. A shipped match rule is
scored on its alert. A shipped threshold or sequence rule fires on a burst, never on
one record, so it is scored on its per-event selection (the rule's condition: would
this record count towards the burst?), as Panther's threshold rules are on theirs.

Prints per Panther rule the confusion counts (true/false positives and negatives) and
their totals; exits 0 (it measures, it does not judge).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from auditd.config.located import Problems
from auditd.decode import Normaliser, load_format
from auditd.detect import load_rules
from auditd.sources.base import Batch, Checkpoint

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "panther_labeled_tests"

# Panther rule -> the shipped rule that covers the same behaviour
MAPPING = {
    "AWS.CloudTrail.Stopped": "aws_audit_logging_disabled",
    "AWS.ConfigService.DisabledDeleted": "aws_audit_logging_disabled",
    "AWS.CloudTrail.DNSLogsDeleted": "aws_audit_logging_disabled",
    "AWS.Bedrock.DeleteModelInvocationLoggingConfiguration": "aws_audit_logging_disabled",
    "AWS.IAM.PolicyModified": "aws_iam_policy_changed",
    "AWS.Console.RootLogin": "aws_root_console_login",
    "AWS.Console.LoginWithoutMFA": "aws_console_login_without_mfa",
    "AWS.CloudTrail.Account.Discovery": "aws_discovery_burst",
    "AWS.IAM.Group.Read.Only.Events": "aws_discovery_burst",
    "AWS.CloudTrail.Password.Policy.Discovery": "aws_discovery_burst",
    "AWS.CloudTrail.SES.ListIdentities": "aws_discovery_burst",
    "AWS.CloudTrail.SES.CheckSendQuota": "aws_discovery_burst",
    "AWS.CloudTrail.SES.CheckIdentityVerifications": "aws_discovery_burst",
    "AWS.IAMUser.ReconAccessDenied": "aws_denied_discovery_burst",
    "AWS.EC2.ManyPasswordReadAttempts": "aws_secret_material_read_repeatedly",
}


def decode(fmt, record: dict):
    line = json.dumps(record, separators=(",", ":")).encode()
    batch = Batch("panther", "panther.jsonl", "p" * 32, [line], [0], Checkpoint("panther", "p" * 32, "panther.jsonl",
                                                                                 len(line) + 1))
    events, quarantined, _ = Normaliser(fmt).process(batch, "panther")
    return events[0] if events else None


def score(data: Path, format_name: str = "cloudtrail") -> dict:
    problems = Problems()
    fmt = load_format(format_name, problems)
    ruleset = load_rules([REPO / "rules"], problems)
    if problems:
        raise SystemExit("\n".join(str(p) for p in problems.items))
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    uncovered = 0
    for line in (data / "aws_cloudtrail_rules.tests.jsonl").read_text(encoding="utf-8").splitlines():
        test = json.loads(line)
        ours = MAPPING.get(test["rule_id"])
        if ours is None:
            uncovered += 1
            continue
        rule = ruleset.rule(ours)
        event = decode(fmt, test["log"])
        if event is None:
            got = False
        elif rule.detector is None:
            got = ruleset.check(ruleset.with_fresh_state(rule), event) is not None
        else:
            got = rule.predicate(event)
        expected = bool(test["expected_result"])
        cell = ("TP" if got else "FN") if expected else ("FP" if got else "TN")
        counts[f"{test['rule_id']} -> {ours}"][cell] += 1
    total = collections.Counter()
    for c in counts.values():
        total.update(c)
    return {"rules": {k: dict(v) for k, v in sorted(counts.items())}, "total": dict(total),
            "tests_not_covered": uncovered}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--format", default="cloudtrail", help="format name or file (default: the shipped one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.data / "aws_cloudtrail_rules.tests.jsonl").is_file():
        print(f"no Panther tests in {args.data}", file=sys.stderr)
        return 1
    result = score(args.data, args.format)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'Panther rule -> shipped rule':<90} TP  FP  FN  TN")
    for name, c in result["rules"].items():
        print(f"{name:<90} {c.get('TP', 0):>2}  {c.get('FP', 0):>2}  {c.get('FN', 0):>2}  {c.get('TN', 0):>2}")
    t = result["total"]
    print(f"{'total':<90} {t.get('TP', 0):>2}  {t.get('FP', 0):>2}  {t.get('FN', 0):>2}  {t.get('TN', 0):>2}")
    print(f"tests of Panther rules no shipped rule covers: {result['tests_not_covered']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
