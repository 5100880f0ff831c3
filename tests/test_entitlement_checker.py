"""The least-privilege check: one row per reason, judged through the real enrich stage
(directory join as of the event's time, then the checker, then pseudonyms)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from auditd.config.located import Problems
from auditd.directory import load_directory
from auditd.enrich import Enricher, Pseudonymiser
from auditd.entitlement import (
    AssignmentLookupError,
    DestinationPolicy,
    EntitlementChecker,
    MappingAssignments,
    reason_code,
)
from auditd.event import AccessEvent
from auditd.workdays import WorkingCalendar
from directory_helpers import directory_from

SH = ZoneInfo("Asia/Shanghai")
KEY = bytes(range(32))
DIRECTORY = """\
regions: [{id: R-KM}, {id: R-QJ}]
stores: [{id: S011, region: R-KM}, {id: S012, region: R-KM}, {id: S021, region: R-QJ}]
roles:
  - id: store_clerk
    grants:
      - {categories: [identity, contact, order], actions: [read, search, list, update], scope: own_store}
  - id: store_manager
    grants:
      - {categories: [identity, contact, order], actions: [read, search, list, update, print], scope: own_store}
      - {categories: [property], actions: [read], scope: own_store, purpose_required: true}
      - {categories: [identity, contact], actions: [unmask], scope: own_store, purpose_required: true, unmask: true}
      - {categories: [identity, order], actions: [export], scope: own_store, purpose_required: true}
  - id: dispatcher
    grants:
      - {categories: [identity, contact, order], actions: [read, list], scope: own_region}
      - {categories: [identity, contact, order], actions: [share], scope: own_region, purpose_required: true,
         unmask: true}
  - id: cs_agent
    grants:
      - {categories: [identity, contact, order], actions: [read], scope: assigned, purpose_required: true}
  - id: analyst
    grants:
      - {categories: [order], actions: [export, list], scope: all}
partners:
  - {id: P-LOGI, allowed_fields: [name, phone, address], countries: [CN], networks: [198.51.100.0/24]}
employees:
  - {id: E1, name: 店员, roles: [store_clerk], store: S011}
  - id: E2
    name: 周杰
    store: S011
    roles:
      - {role: store_clerk, until: 2026-11-01}
      - {role: store_manager, from: 2026-11-02}
  - {id: E3, name: 赵敏, roles: [store_manager], store: S011, status: departed, departure: "2026-11-02T18:00:00"}
  - {id: E4, name: 调度, roles: [dispatcher], region: R-KM}
  - {id: E5, name: 客服, roles: [cs_agent], region: R-KM}
  - {id: E6, name: 分析, roles: [analyst], region: R-KM}
  - {id: E7, name: 停职, roles: [store_clerk], store: S011, status: suspended}
  - {id: E8, name: 新人, roles: [store_clerk], store: S011, hire_date: 2026-12-01}
"""
ASSIGNED = {"O1001": "E5", "T-2026-000001": "E5", "O2002": "E9"}
RAW_IDS = ("C00012345", "O1001", "O2002", "O3003", "T-2026-000001", "T-2026-000404")


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return directory_from(tmp_path_factory, DIRECTORY)


LOOKUP = MappingAssignments(ASSIGNED)
POLICY = DestinationPolicy(("CN",), ("10.0.0.0/8",))


def make_enricher(directory, assignments=LOOKUP, destinations=POLICY) -> Enricher:
    pseudonymiser = Pseudonymiser(KEY)
    checker = EntitlementChecker(assignments=assignments, destinations=destinations, pseudonymise=pseudonymiser)
    return Enricher(directory, pseudonymiser, entitlement=checker,
                    working_days_between=WorkingCalendar().working_days_between)


def ev(user: str, action: str = "read", local: str = "2026-11-02T10:00", **kw) -> AccessEvent:
    when = dt.datetime.fromisoformat(local).replace(tzinfo=SH).astimezone(dt.timezone.utc)
    kw.setdefault("categories", ("identity",))
    return AccessEvent(timestamp=when, action=action, user_id=user, **kw)


def judged(directory, event: AccessEvent, **kw) -> AccessEvent:
    make_enricher(directory, **kw).enrich([event])
    return event


CUSTOMER_S011 = dict(resource_type="customer", resource_id="C00012345", resource_store="S011",
                     subject_ids=("C00012345",))
CUSTOMER_S021 = dict(CUSTOMER_S011, resource_store="S021")
CUSTOMER_S012 = dict(CUSTOMER_S011, resource_store="S012")
PAYMENT_S011 = dict(resource_type="payment", resource_id="PAY1", resource_store="S011", categories=("property",))
SHARE = dict(resource_type="customer", resource_store="S012", masked=False, purpose="delivery",
             destination_partner="P-LOGI", destination_country="CN", destination_ip="198.51.100.7")
EXPORT = dict(resource_type="order", categories=("order",), record_count=300)

# (name, event, granted, reason code or None, words the detail must hold)
CASES = [
    ("own store read", ev("E1", **CUSTOMER_S011), True, None, ()),
    ("category not granted", ev("E1", **PAYMENT_S011), False, "category_not_granted",
     ("role store_clerk", "property")),
    ("action not granted", ev("E1", "export", **CUSTOMER_S011), False, "action_not_granted",
     ("list, read, search, update identity data, not export",)),
    ("another store's customer", ev("E1", **CUSTOMER_S021), False, "out_of_scope",
     ("own_store", "S021 (R-QJ)", "S011 (R-KM)")),
    ("a record without a store", ev("E1", resource_type="customer", categories=("identity",)), False,
     "out_of_scope", ("the record's store is unknown",)),
    ("another region's customer", ev("E4", **CUSTOMER_S021), False, "out_of_scope",
     ("own_region", "R-QJ", "the actor's R-KM")),
    ("own region, other store", ev("E4", **CUSTOMER_S012), True, None, ()),
    ("assigned order", ev("E5", resource_type="order", resource_id="O1001", categories=("order",),
                          ticket="T-2026-000404"), True, None, ()),
    ("assigned ticket", ev("E5", ticket="T-2026-000001", **CUSTOMER_S021), True, None, ()),
    ("order assigned to someone else", ev("E5", resource_type="order", resource_id="O2002", categories=("order",),
                                          purpose="complaint"),
     False, "out_of_scope", ("assigned: order p:", "is assigned to E9, not to E5")),
    ("order assigned to nobody", ev("E5", resource_type="order", resource_id="O3003", categories=("order",),
                                    ticket="T-2026-000404"),
     False, "out_of_scope", ("is assigned to nobody",)),
    ("nothing to look up", ev("E5", categories=("identity",), purpose="complaint"), False, "out_of_scope",
     ("names no order, ticket or customer",)),
    ("assigned order without ticket or purpose", ev("E5", resource_type="order", resource_id="O1001",
                                                     categories=("order",)),
     False, "purpose_missing", ("role cs_agent may read order data only with a ticket or purpose",)),
    ("property without purpose", ev("E2", **PAYMENT_S011), False, "purpose_missing", ("role store_manager",)),
    ("property with purpose", ev("E2", purpose="refund", **PAYMENT_S011), True, None, ()),
    ("unmasked view", ev("E1", masked=False, fields=("name", "phone"), **CUSTOMER_S011), False,
     "unmasked_without_grant", ("returned name, phone unmasked",)),
    ("unmask action without grant", ev("E1", "unmask", masked=False, fields=("phone",), **CUSTOMER_S011), False,
     "unmasked_without_grant", ("may not unmask identity data",)),
    ("unmask with grant and purpose", ev("E2", "unmask", masked=False, ticket="T-2026-000404", **CUSTOMER_S011),
     True, None, ()),
    ("unmask with grant, no purpose", ev("E2", "unmask", masked=False, **CUSTOMER_S011), False, "purpose_missing",
     ()),
    ("share within allowance", ev("E4", "share", fields=("name", "phone", "address"), **SHARE), True, None, ()),
    ("share beyond allowance", ev("E4", "share", fields=("name", "phone", "address", "birthday", "gender"), **SHARE),
     False, "share_fields_beyond_allowance", ("P-LOGI may receive name, phone, address", "also sent birthday, gender")),
    ("share to an unknown partner", ev("E4", "share", fields=("name",), **dict(SHARE, destination_partner="P-X")),
     False, "destination_not_allowed", ("partner P-X is not in the directory",)),
    ("share naming no partner", ev("E4", "share", fields=("name",), **dict(SHARE, destination_partner=None)),
     False, "destination_not_allowed", ("names no partner",)),
    ("share outside the partner's networks", ev("E4", "share", fields=("name",),
                                                **dict(SHARE, destination_ip="203.0.113.9")),
     False, "destination_not_allowed", ("203.0.113.9 is outside the allowed networks for partner P-LOGI",)),
    ("export inside", ev("E6", "export", destination_ip="10.10.50.20", destination_country="CN", **EXPORT),
     True, None, ()),
    ("export abroad", ev("E6", "export", destination_host="bi-backup.example.sg", destination_ip="203.0.113.50",
                         destination_country="SG", **EXPORT),
     False, "destination_not_allowed", ("country SG is outside the allowed (CN)",)),
    ("export to an outside network", ev("E6", "export", destination_ip="203.0.113.50", **EXPORT), False,
     "destination_not_allowed", ("203.0.113.50 is outside the allowed networks",)),
    ("export to the workstation", ev("E6", "export", **EXPORT), True, None, ()),
    ("two categories, one not granted", ev("E1", categories=("order", "property"), resource_store="S011"), False,
     "category_not_granted", ("property",)),
    ("unknown employee", ev("E999", **CUSTOMER_S011), False, "unknown_actor", ("E999 is not in the HR directory",)),
    ("suspended", ev("E7", **CUSTOMER_S011), False, "actor_inactive", ("suspended",)),
    ("not yet hired", ev("E8", **CUSTOMER_S011), False, "actor_inactive", ("not hired until 2026-12-01",)),
    ("login while employed", ev("E1", "login", categories=()), True, None, ()),
    ("a denial is judged too", ev("E1", outcome="denied", **PAYMENT_S011), False, "category_not_granted", ()),
]


@pytest.mark.parametrize("name, event, granted, code, words", CASES, ids=[c[0] for c in CASES])
def test_reasons(directory, name, event, granted, code, words):
    e = judged(directory, event)
    assert e.entitlement_granted is granted, e.entitlement_reason
    assert reason_code(e.entitlement_reason) == code
    for word in words:
        assert word in e.entitlement_reason
    for raw in RAW_IDS:  # pseudonyms only
        assert raw not in (e.entitlement_reason or "")


def test_the_assignment_detail_names_the_pseudonym(directory):
    e = judged(directory, ev("E5", resource_type="order", resource_id="O2002", categories=("order",), purpose="x"))
    assert Pseudonymiser(KEY)("O2002") in e.entitlement_reason


def test_a_role_changed_yesterday(directory):
    yesterday = judged(directory, ev("E2", local="2026-11-01T10:00", purpose="refund", **PAYMENT_S011))
    today = judged(directory, ev("E2", local="2026-11-02T10:00", purpose="refund", **PAYMENT_S011))
    assert (yesterday.entitlement_granted, reason_code(yesterday.entitlement_reason)) == (False, "category_not_granted")
    assert "role store_clerk" in yesterday.entitlement_reason
    assert (today.entitlement_granted, today.entitlement_reason) == (True, None)


def test_departure_at_18_00_splits_one_batch(directory):
    batch = [ev("E3", local=t, **CUSTOMER_S011) for t in ("2026-11-02T17:59", "2026-11-02T18:01",
                                                          "2026-11-05T09:00")]
    make_enricher(directory).enrich(batch)
    before, after, later = batch
    assert (before.entitlement_granted, before.entitlement_reason) == (True, None)
    assert after.entitlement_granted is False
    assert after.entitlement_reason == "departed: E3 left at 2026-11-02T18:00+08:00, 0 working day(s) before this access"
    assert later.entitlement_reason.endswith("3 working day(s) before this access")


def test_a_departed_login_is_judged(directory):
    e = judged(directory, ev("E3", "login", local="2026-11-03T09:00", categories=()))
    assert (e.entitlement_granted, reason_code(e.entitlement_reason)) == (False, "departed")


class Failing:
    def assignee(self, key: str) -> str | None:
        raise AssignmentLookupError("assignment service unreachable: timed out")


def test_a_failed_lookup_leaves_the_access_unjudged(directory):
    e = judged(directory, ev("E5", resource_type="order", resource_id="O1001", categories=("order",), ticket="T"),
               assignments=Failing())
    assert e.entitlement_granted is None
    assert e.entitlement_reason == "scope_unverified: assigned scope: assignment service unreachable: timed out"
    other = judged(directory, ev("E1", **CUSTOMER_S011), assignments=Failing())  # no lookup needed
    assert other.entitlement_granted is True


def test_without_a_lookup_the_assigned_scope_allows_nothing(directory):
    e = judged(directory, ev("E5", resource_type="order", resource_id="O1001", categories=("order",), ticket="T"),
               assignments=None)
    assert reason_code(e.entitlement_reason) == "out_of_scope"
    assert "no assignment lookup is configured" in e.entitlement_reason


def test_without_a_directory_nothing_is_judged():
    checker = EntitlementChecker()
    e = ev("E1", **CUSTOMER_S011)
    checker.check([e])
    assert (e.entitlement_granted, e.entitlement_reason) == (None, None)


def test_a_reloaded_directory_reaches_the_checker(directory, tmp_path):
    enricher = make_enricher(directory)
    first = ev("E1", **PAYMENT_S011)
    enricher.enrich([first])
    path = tmp_path / "directory.yaml"
    path.write_text(DIRECTORY.replace("actions: [read, search, list, update], scope: own_store}",
                                      "actions: [read, search, list, update], scope: own_store}\n"
                                      "      - {categories: [property], actions: [read], scope: own_store}", 1),
                    encoding="utf-8")
    enricher.set_directory(load_directory(path, Problems()))
    again = ev("E1", **PAYMENT_S011)
    enricher.enrich([again])
    assert (first.entitlement_granted, again.entitlement_granted) == (False, True)


def test_plans_are_shared_by_role_set(directory):
    enricher = make_enricher(directory)
    batch = [ev("E1", **CUSTOMER_S011) for _ in range(50)] + [ev("E7", **CUSTOMER_S011)]
    enricher.enrich(batch)
    checker = enricher.entitlement
    assert len(checker._plans) == 1 and checker.checked == 51 and checker.denied == 1


def test_a_bad_partner_network_is_a_located_problem(tmp_path):
    path = tmp_path / "directory.yaml"
    path.write_text("partners:\n  - {id: P-X, allowed_fields: [name], networks: [198.51.100.0/33]}\n",
                    encoding="utf-8")
    problems = Problems()
    assert load_directory(path, problems) is None
    assert [str(p) for p in problems.items][0].startswith(f"{path}:2:50: partners[0].networks[0]: bad network")
