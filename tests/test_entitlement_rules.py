"""The `entitlement` and `departed` rule kinds, and the shipped rules/least-privilege.yaml."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.detect import KINDS, load_rules
from auditd.detect.testing import run_samples
from auditd.entitlement import REASON_CODES, reason_code
from auditd.event import AccessEvent, parse_time

RULES = Path(__file__).resolve().parents[1] / "rules" / "least-privilege.yaml"
CATEGORIES = {"identity": False, "contact": False, "media": False, "property": True, "location": True,
              "device": False, "biometric": True, "order": False}
WHEN = parse_time("2026-11-02T10:00:00+08:00")


@pytest.fixture(scope="module")
def ruleset():
    problems = Problems()
    rules = load_rules([RULES], problems, categories=CATEGORIES)
    assert not problems, "\n".join(str(p) for p in problems.items)
    return rules


def test_the_kinds_are_registered():
    assert {"entitlement", "departed"} <= set(KINDS)


def test_every_commitment_has_a_rule_and_every_sample_passes(ruleset):
    kinds = {r.id: r.spec.kind for r in ruleset.rules}
    assert kinds == {
        "least_privilege_violation": "entitlement",  # least privilege per category
        "sensitive_data_outside_grants": "entitlement",  # property, precise location, face
        "unmask_without_grant": "entitlement",  # unmasking
        "departed_employee_activity": "departed",  # departed staff
        "transfer_outside_allowed_destinations": "entitlement",  # cross-border transfer
        "partner_fields_beyond_allowance": "entitlement",  # partner minimisation
    }
    results = run_samples(ruleset)
    assert all(r.ok for r in results), [f"{r.rule_id} {r.sample}: {r.message}" for r in results if not r.ok]
    assert {r.rule_id for r in results if r.sample.startswith("match[")} == set(kinds)


def test_sample_reasons_are_real_codes_and_match_what_the_rule_takes(ruleset):
    for rule in ruleset.rules:
        taken = set(rule.spec.params.reasons) if rule.spec.kind == "entitlement" else {"departed"}
        for sample in rule.spec.samples:
            code = reason_code(sample.event.entitlement_reason)
            if code is None:
                continue
            assert code in REASON_CODES, (rule.id, code)
            if sample.expect_match:
                assert code in taken, (rule.id, code)


def test_violations_are_high_and_a_transfer_abroad_is_critical(ruleset):
    severities = {r.id: r.spec.severity for r in ruleset.rules}
    # a severity is the tier it stands for: high a violation (T5, as the correlator grades
    # entitlement and departed rules), critical a suspected leak (T4)
    assert severities["departed_employee_activity"] == "high"
    assert severities["least_privilege_violation"] == severities["sensitive_data_outside_grants"] == "high"
    assert severities["transfer_outside_allowed_destinations"] == "critical"


def event(**kw) -> AccessEvent:
    return AccessEvent(timestamp=WHEN, action=kw.pop("action", "read"), event_id="e1", user_id="E10002", **kw)


def test_an_entitlement_alert_carries_the_whole_reason(ruleset):
    text = "out_of_scope: own_store: the record's store is S021 (R-QJ), the actor's S011 (R-KM)"
    alerts = ruleset.evaluate(event(categories=("identity",), entitlement_granted=False, entitlement_reason=text))
    assert [(a.rule_id, a.rule_kind, a.reason) for a in alerts] == [("least_privilege_violation", "entitlement", text)]
    assert ruleset.evaluate(event(categories=("identity",), entitlement_granted=True)) == []
    sensitive = ruleset.evaluate(event(categories=("property",), sensitive=True, entitlement_granted=False,
                                       entitlement_reason="category_not_granted: no grant of role store_clerk "
                                                          "covers property data"))
    assert [a.rule_id for a in sensitive] == ["sensitive_data_outside_grants"] and sensitive[0].sensitive


def test_a_departed_alert_without_the_checker_still_says_why(ruleset):
    [alert] = ruleset.evaluate(event(action="login", actor_departed=True, actor_departed_working_days=4))
    assert (alert.rule_id, alert.severity) == ("departed_employee_activity", "high")
    assert alert.reason == "departed: E10002 had left, 4 working day(s) after leaving"
    assert alert.title == "E10002 (-) logged in 4 working day(s) after leaving the company, from -"


def test_a_departed_access_raises_one_alert_not_two(ruleset):
    alerts = ruleset.evaluate(event(categories=("identity",), actor_departed=True, entitlement_granted=False,
                                    entitlement_reason="departed: E10002 left at 2026-11-01T00:00+08:00"))
    assert [a.rule_id for a in alerts] == ["departed_employee_activity"]
    assert alerts[0].reason == "departed: E10002 left at 2026-11-01T00:00+08:00"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_unknown_reason_codes_are_located_errors(tmp_path):
    path = write(tmp_path, """\
        - rule: mine
          desc: d
          kind: entitlement
          params: {reasons: [out_of_scope, out_of_scop]}
          condition: neo.entitlement.granted = false
          severity: low
          tags: [sandbox]
        - rule: theirs
          desc: d
          kind: departed
          params: {after: 3}
          condition: neo.actor.departed = true
          severity: low
          tags: [sandbox]
        """)
    problems = Problems()
    load_rules([path], problems)
    messages = [str(p) for p in problems.items]
    assert any(m.startswith(f"{path}:4:") and "unknown reason code 'out_of_scop'" in m for m in messages), messages
    assert any("rule kind 'departed' takes no params" in m for m in messages), messages


def test_an_operator_rule_may_take_any_code(tmp_path):
    path = write(tmp_path, """\
        - rule: lookup_outage
          desc: the assignment lookup did not answer
          kind: entitlement
          params: {reasons: [scope_unverified]}
          condition: neo.entitlement.reason exists
          severity: low
          tags: [sandbox]
          samples:
            match:
              - {event.action: read, neo.entitlement.reason: "scope_unverified: assigned scope: timed out"}
            no_match:
              - {event.action: read, neo.entitlement.reason: "out_of_scope: own_store: …"}
        """)
    problems = Problems()
    rules = load_rules([path], problems)
    assert not problems and all(r.ok for r in run_samples(rules))
