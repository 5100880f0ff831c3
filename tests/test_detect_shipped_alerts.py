"""What the shipped rules say to a responder: titles in words, severities that are the
tier their incident gets, and nothing for entitled data-subject-request work."""

from __future__ import annotations

import datetime as dt
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditd.config.located import Problems
from auditd.correlate import CorrelateSettings, Correlator
from auditd.correlate.settings import TIERS, tier_rank
from auditd.detect.render import compile_title
from auditd.detect.ruleset import RuleSet, load_rules
from auditd.event import AccessEvent
from auditd.store.migrations import migrate

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "rules"
CATEGORIES = {"identity": False, "contact": False, "media": False, "property": True, "location": True,
              "device": False, "biometric": True, "order": False}
T0 = dt.datetime(2026, 11, 5, 1, 31, 33, tzinfo=dt.timezone.utc)


def ev(**kw: Any) -> AccessEvent:
    kw.setdefault("timestamp", T0)
    kw.setdefault("action", "read")
    kw.setdefault("event_id", "e-1")
    kw.setdefault("user_id", "E10057")
    kw.setdefault("user_roles", ("analyst",))
    kw.setdefault("actor_known", True)
    return AccessEvent(**kw)


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    problems = Problems()
    ruleset = load_rules([SHIPPED, REPO / "examples" / "rules.d"], problems, categories=CATEGORIES)
    assert not problems, "\n".join(str(p) for p in problems.items)
    return ruleset


def titles(ruleset: RuleSet, event: AccessEvent) -> dict[str, str]:
    return {a.rule_id: a.title for a in ruleset.evaluate(event)}


# --- titles -----------------------------------------------------------------------------


def test_title_filters_say_values_in_words():
    render, problems = compile_title("{user.id} {event.action|past} {neo.data.record_count|records} "
                                     "({neo.data.record_count|count}): {neo.entitlement.reason|why}")
    assert problems == []
    event = ev(action="export", record_count=57312,
               entitlement_reason="category_not_granted: no grant of role analyst covers property data")
    assert render(event) == "E10057 exported 57,312 customers' records (57,312): category property"
    one = ev(action="read", record_count=1, entitlement_reason="purpose_missing: the access gave neither")
    assert render(one) == "E10057 read 1 customer's record (1): no ticket or purpose"
    login = ev(action="login", entitlement_reason=None)
    assert render(login) == "E10057 logged in (1): -"  # a login carries no records: the words close up


@pytest.mark.parametrize("reason, words", [
    ("out_of_scope: own_store: the record's store is S021 (R-QJ), the actor's S011 (R-KM)",
     "scope own_store, a record of S021 (R-QJ)"),
    ("out_of_scope: assigned: order p:1a is assigned to E1, not to E2", "scope assigned"),
    ("action_not_granted: role analyst may export, list, search order data, not delete",
     "action delete on order data"),
    ("share_fields_beyond_allowance: P-LOGI may receive name, phone, address; the share also sent birthday, gender",
     "fields beyond the partner's allowance: birthday, gender"),
    ("destination_not_allowed: destination country SG is outside the allowed (CN)",
     "destination country SG is outside the allowed (CN)"),
    ("unmasked_without_grant: read of identity data returned phone unmasked", "unmasked without an unmask grant"),
])
def test_why_turns_each_reason_into_a_few_words(reason, words):
    render, _ = compile_title("{neo.entitlement.reason|why}")
    assert render(ev(entitlement_reason=reason)) == words


def test_an_unknown_filter_is_a_load_error():
    render, problems = compile_title("{neo.data.record_count|shout}")
    assert render is None and problems == ["title: unknown filter 'shout' (valid: count, past, records, why)"]


def test_a_bulk_export_outside_the_grant_says_what_happened_and_why(shipped):
    event = ev(action="export", record_count=57312, categories=("property",), sensitive=True,
               resource_type="points", destination_host="bi.neo.internal", entitlement_granted=False,
               entitlement_reason="category_not_granted: no grant of role analyst covers property data")
    said = titles(shipped, event)
    assert said["sensitive_data_outside_grants"] == (
        "E10057 (analyst) exported 57,312 customers' records (property, sensitive) outside their grant: "
        "category property")
    assert said["export_reaching_criminal_band"].startswith("E10057 (analyst) exported 57,312 customers' records")
    for title in said.values():
        assert "{" not in title and "None" not in title and "  " not in title


def test_titles_carry_no_raw_customer_identifier(shipped):
    event = ev(action="read", record_count=1, categories=("biometric",), sensitive=True, resource_type="face",
               resource_id="F00012345", subject_ids=("C00012345",), purpose="C00012345 asked",
               ticket="T-C00012345", actor_off_shift=True)
    said = titles(shipped, event)
    assert said and not any("C00012345" in t or "F00012345" in t for t in said.values())


# --- severity is the tier ----------------------------------------------------------------


def shipped_rule_items() -> list[dict]:
    items = []
    for path in sorted(SHIPPED.glob("*.yaml")):
        items += [i for i in yaml.safe_load(path.read_text(encoding="utf-8")) if "rule" in i]
    return items


def test_every_shipped_rules_severity_agrees_with_its_kinds_tier():
    """A rule whose kind opens a T5 incident may not say 'medium', and no severity may
    promise a tier its incident does not get (DESIGN.md's tier table)."""
    tiers = CorrelateSettings().tiers
    for rule in shipped_rule_items():
        severity_tier = tiers.by_severity.get(rule["severity"], tiers.default)
        kind_tier = tiers.by_rule_kind.get(rule.get("kind", "match"))
        if kind_tier is not None:
            assert tier_rank(severity_tier) <= tier_rank(kind_tier), (rule["rule"], rule["severity"])
        assert severity_tier in TIERS


def test_an_alerts_incident_gets_the_tier_its_severity_names(shipped):
    """Every shipped rule, on its first positive sample, opens an incident of the tier
    its severity stands for (a criminal band may grade higher, never lower)."""
    tiers = CorrelateSettings().tiers
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    correlator = Correlator(CorrelateSettings(), lambda: T0)
    for n, rule in enumerate(shipped.rules):
        samples = [s for s in rule.spec.samples if s.expect_match]
        if not rule.spec.enabled or not samples:
            continue
        fresh = shipped.with_fresh_state(rule)  # a stateful rule's sample is a sequence, on empty state
        alert = next((a for e in samples[0].events if (a := shipped.check(fresh, e)) is not None), None)
        assert alert is not None, rule.spec.id
        alert = type(alert)(**{**{f: getattr(alert, f) for f in alert.__struct_fields__},
                               "actor": f"E{n}", "alert_id": f"a{n}"})
        conn.execute("BEGIN")
        (change,) = correlator.apply(conn, [alert])
        conn.execute("COMMIT")
        expected = tiers.by_severity.get(rule.spec.severity, tiers.default)
        assert tier_rank(change.tier) <= tier_rank(expected), (rule.spec.id, change.tier)
        if change.band is None:
            assert change.tier == expected, (rule.spec.id, rule.spec.severity, change.tier)


# --- entitled work ----------------------------------------------------------------------


DPO = dict(user_id="E10058", user_roles=("dpo",), masked=False)


def test_the_dpos_data_subject_request_work_raises_nothing(shipped):
    on_request = [
        ev(action="read", resource_type="face", categories=("biometric",), sensitive=True, record_count=1,
           purpose="data-subject-access", ticket="DSR-2026-00042", entitlement_granted=True, **DPO),
        ev(action="delete", resource_type="customer", categories=("identity",), record_count=1,
           purpose="data-subject-erasure", ticket="DSR-2026-00042", entitlement_granted=True, **DPO),
        ev(action="export", resource_type="customer", categories=("identity", "property"), sensitive=True,
           record_count=1, purpose="data-subject-access", ticket="DSR-2026-00042", entitlement_granted=True,
           destination_host="dsr-portal.neo.internal", destination_country="CN", **DPO),
        ev(action="read", resource_type="payment", categories=("property",), sensitive=True, record_count=1,
           purpose="data-subject-access", ticket="DSR-2026-00042", entitlement_granted=True, **DPO),
    ]
    for event in on_request:
        assert titles(shipped, event) == {}, event


def test_the_same_access_without_a_request_or_outside_her_grant_alerts(shipped):
    face = dict(action="read", resource_type="face", categories=("biometric",), sensitive=True, record_count=1,
                **DPO)
    no_request = ev(purpose="internal-review", ticket="INC-2026-00007", entitlement_granted=True, **face)
    assert set(titles(shipped, no_request)) == {"biometric_data_access"}
    outside = ev(action="share", resource_type="customer", categories=("identity",), record_count=1,
                 purpose="data-subject-request", ticket="DSR-2026-00042", destination_partner="P-LOGI",
                 entitlement_granted=False,
                 entitlement_reason="action_not_granted: role dpo may delete, export, list, print, read, search, "
                                    "unmask identity data, not share", **DPO)
    assert "least_privilege_violation" in titles(shipped, outside)
    erase = ev(action="delete", resource_type="customer", categories=("identity",), record_count=1,
               purpose="cleanup", entitlement_granted=True, **DPO)
    assert set(titles(shipped, erase)) == {"delete_of_customer_records"}


def test_an_off_shift_access_alerts_and_overtime_does_not(shipped):
    night = ev(action="read", resource_type="customer", categories=("identity",), record_count=1,
               actor_off_shift=True, user_roles=("store_clerk",), user_id="E10011")
    assert titles(shipped, night) == {
        "access_outside_shift": "E10011 (store_clerk) read 1 customer's record (identity) outside their shift",
        # the episode rule (rules/behaviour.yaml): one alert per night, with the count since
        "off_hours_access_episode": "E10011 accessed customer data outside their shift"}
    assert titles(shipped, ev(action="read", categories=("identity",), actor_off_shift=False)) == {}


def test_a_rule_file_can_use_filters(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent("""
        - rule: r
          desc: d
          condition: event.action = export
          severity: high
          tags: [stable]
          title: "{user.id} {event.action|past} {neo.data.record_count|records}"
          samples:
            match: [{event.action: export, user.id: E1, neo.data.record_count: 2}]
    """), encoding="utf-8")
    problems = Problems()
    ruleset = load_rules([path], problems)
    assert not problems
    assert [a.title for a in ruleset.evaluate(ev(action="export", user_id="E1", record_count=1200))] == [
        "E1 exported 1,200 customers' records"]
