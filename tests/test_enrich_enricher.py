"""The enrich stage: actor facts as of the event's time, sensitivity, pseudonyms."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from auditd.config.located import Problems
from auditd.directory import load_directory
from auditd.enrich import Enricher, Pseudonymiser
from auditd.event import AccessEvent
from directory_helpers import directory_from

SH = ZoneInfo("Asia/Shanghai")
DIRECTORY = """\
regions: [{id: R-KM}, {id: R-QJ}]
stores: [{id: S011, region: R-KM, hours: "08:30-21:30"}, {id: S021, region: R-QJ}]
shifts: {early: "08:30-17:00 mon-sat", night: "22:00-06:00 mon-fri"}
roles:
  - {id: store_clerk, grants: [{categories: [identity], actions: [read]}]}
  - {id: store_manager, grants: [{categories: [identity, property], actions: [read]}]}
  - {id: cs_agent, grants: [{categories: [identity], actions: [read], scope: all, purpose_required: true}]}
employees:
  - id: E1
    name: 周杰
    store: S011
    shift: early
    roles:
      - {role: store_clerk, until: 2026-11-01}
      - {role: store_manager, from: 2026-11-02}
  - {id: E2, name: 赵敏, roles: [store_manager], store: S011, shift: early, status: departed,
     departure: "2026-11-02T18:00:00"}
  - {id: E3, name: 夜班, roles: [cs_agent], region: R-KM, shift: night}
  - {id: E4, name: 店员, roles: [store_clerk], store: S011}
  - {id: E5, name: 总部, roles: [cs_agent], region: R-KM}
"""
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return directory_from(tmp_path_factory, DIRECTORY)


def ev(user: str | None, local: str, **kw) -> AccessEvent:
    when = dt.datetime.fromisoformat(local).replace(tzinfo=SH).astimezone(dt.timezone.utc)
    return AccessEvent(timestamp=when, action=kw.pop("action", "read"), user_id=user, **kw)


def enriched(directory, *events: AccessEvent, **kw) -> list[AccessEvent]:
    batch = list(events)
    Enricher(directory, Pseudonymiser(KEY), **kw).enrich(batch)
    return batch


def test_a_known_actor_gets_the_directory_facts_of_that_moment(directory):
    [e] = enriched(directory, ev("E1", "2026-11-02T10:00", user_name="zhou.jie", user_roles=("admin",)))
    assert (e.actor_known, e.actor_status, e.actor_store, e.actor_region) == (True, "active", "S011", "R-KM")
    assert e.actor_departed is False and e.actor_off_shift is False
    assert e.user_name == "周杰"  # HR's name wins; the log's only when HR has none
    assert e.user_roles == ("store_manager",)  # the role changed overnight
    assert enriched(directory, ev("E1", "2026-11-01T10:00"))[0].user_roles == ("store_clerk",)


def test_an_unknown_actor_is_flagged_and_keeps_what_the_log_said(directory):
    [e, anonymous] = enriched(directory, ev("E999", "2026-11-02T10:00", user_name="ghost", user_roles=("x",)),
                              ev(None, "2026-11-02T10:00"))
    assert e.actor_known is False and e.actor_status is None and e.actor_off_shift is None
    assert e.user_name == "ghost" and e.user_roles == ("x",)
    assert anonymous.actor_known is False


def test_departure_at_18_00_splits_the_day(directory):
    events = enriched(directory, ev("E2", "2026-11-02T09:00"), ev("E2", "2026-11-02T17:59"),
                      ev("E2", "2026-11-02T18:01"), ev("E2", "2026-11-03T10:00"))
    assert [e.actor_departed for e in events] == [False, False, True, True]
    assert [e.actor_status for e in events] == ["active", "active", "departed", "departed"]
    assert events[2].user_roles == ()


def test_off_shift_in_shanghai_time(directory):
    events = enriched(
        directory,
        ev("E1", "2026-11-02T08:29"), ev("E1", "2026-11-02T08:30"), ev("E1", "2026-11-02T16:59"),
        ev("E1", "2026-11-02T17:00"), ev("E1", "2026-11-02T03:00"), ev("E1", "2026-11-08T10:00"),  # Sunday
        ev("E3", "2026-11-03T02:00"),  # Monday's night shift
        ev("E3", "2026-11-07T02:00"),  # Friday's night shift, on Saturday morning
        ev("E3", "2026-11-08T02:00"),  # no Saturday night shift
        ev("E4", "2026-11-02T21:00"),  # no own shift: the store's hours
        ev("E5", "2026-11-02T03:00"),  # no shift and no store: unknown
    )
    assert [e.actor_off_shift for e in events] == [True, False, False, True, True, True, False, False, True,
                                                  False, None]


def test_a_shift_grace_keeps_overtime_and_early_starts_on_shift(directory):
    events = enriched(
        directory,
        ev("E1", "2026-11-02T07:31"), ev("E1", "2026-11-02T07:29"),  # early start: 59 and 61 minutes
        ev("E1", "2026-11-02T17:59"), ev("E1", "2026-11-02T18:01"),  # overtime: 59 and 61 minutes
        ev("E1", "2026-11-02T03:00"),  # still the middle of the night
        ev("E3", "2026-11-07T06:30"),  # Friday's night shift ran over into Saturday morning
        ev("E3", "2026-11-06T21:30"),  # an early start, the evening before the shift's day
        ev("E3", "2026-11-08T02:00"),  # no Saturday night shift
        shift_grace_s=3600,
    )
    assert [e.actor_off_shift for e in events] == [False, True, False, True, True, False, False, True]
    # without a grace the shift is exact (the enricher's default; the config's is 1h)
    assert enriched(directory, ev("E1", "2026-11-02T17:01"))[0].actor_off_shift is True


def test_the_config_sets_the_grace_and_refuses_a_silly_one(tmp_path):
    from auditd.settings import load_settings

    def settings(grace: str):
        path = tmp_path / "c.yaml"
        path.write_text("state_dir: s\nsources: []\npseudonym: {key_file: k}\n"
                        f"directory: {{path: d.yaml, shift_grace: {grace}}}\n", encoding="utf-8")
        problems = Problems()
        loaded, _ = load_settings(path, problems)
        return loaded, [str(p) for p in problems.items]

    loaded, problems = settings("90m")
    assert problems == [] and loaded.directory.shift_grace.seconds == 5400
    _, problems = settings("2d")
    assert len(problems) == 1 and "directory.shift_grace: must be between 0 and 12h" in problems[0]


def test_events_out_of_order_and_across_days_are_right(directory):
    times = ["2026-11-03T10:00", "2026-11-02T03:00", "2026-11-05T10:00", "2026-11-02T10:00", "2026-11-03T03:00"]
    enricher = Enricher(directory, Pseudonymiser(KEY), cached_days=1)
    batch = [ev("E1", t) for t in times]
    enricher.enrich(batch)
    assert [e.actor_off_shift for e in batch] == [False, True, False, False, True]


def test_sensitive_follows_the_configured_categories(directory):
    events = enriched(directory, ev("E1", "2026-11-02T10:00", categories=("identity",)),
                      ev("E1", "2026-11-02T10:00", categories=("order", "property")),
                      ev("E1", "2026-11-02T10:00", categories=("identity",), sensitive=True))
    assert [e.sensitive for e in events] == [False, True, True]
    [custom] = enriched(directory, ev("E1", "2026-11-02T10:00", categories=("identity",)),
                        sensitive_categories={"identity"})
    assert custom.sensitive


def test_customer_ids_are_pseudonymised_and_order_ids_kept(directory):
    p = Pseudonymiser(KEY)
    events = enriched(
        directory,
        ev("E1", "2026-11-02T10:00", resource_type="customer", resource_id="C00012345",
           subject_ids=("C00012345", "C00000007")),
        ev("E1", "2026-11-02T10:00", resource_type="order", resource_id="O0000000042", subject_ids=("C00012345",)),
        ev("E1", "2026-11-02T10:00", resource_type="address", resource_id="A00012345"),
    )
    customer, order, address = events
    assert customer.subject_ids == (p("C00012345"), p("C00000007"))
    assert customer.resource_id == p("C00012345") == order.subject_ids[0]  # one namespace: counts join up
    assert order.resource_id == "O0000000042"
    assert address.resource_id == p("A00012345")
    [strict] = enriched(directory, ev("E1", "2026-11-02T10:00", resource_type="order", resource_id="O1"),
                        pseudonymised_resource_types={"order"})
    assert strict.resource_id == p("O1")


def test_the_resource_region_comes_from_its_store(directory):
    events = enriched(directory, ev("E1", "2026-11-02T10:00", resource_store="S021"),
                      ev("E1", "2026-11-02T10:00", resource_store="S021", resource_region="R-X"),
                      ev("E1", "2026-11-02T10:00", resource_store="S999"))
    assert [e.resource_region for e in events] == ["R-QJ", "R-X", None]


def test_without_a_directory_only_pseudonyms_and_sensitivity(directory):
    [e] = enriched(None, ev("E1", "2026-11-02T10:00", subject_ids=("C1",), categories=("location",)))
    assert e.actor_known is None and e.actor_status is None
    assert e.subject_ids == (Pseudonymiser(KEY)("C1"),) and e.sensitive


def test_a_new_directory_drops_the_cached_facts(directory, tmp_path):
    enricher = Enricher(directory, Pseudonymiser(KEY))
    first = [ev("E1", "2026-11-02T10:00")]
    enricher.enrich(first)
    path = tmp_path / "directory.yaml"
    path.write_text(DIRECTORY.replace("name: 周杰", "name: 周杰（店长）"), encoding="utf-8")
    enricher.set_directory(load_directory(path, Problems()))
    again = [ev("E1", "2026-11-02T11:00")]
    enricher.enrich(again)
    assert (first[0].user_name, again[0].user_name) == ("周杰", "周杰（店长）")


def test_departed_working_days_come_from_the_given_calendar(directory):
    calls = []

    def working_days_between(start: dt.date, end: dt.date) -> int:
        calls.append((start, end))
        return (end - start).days

    events = enriched(directory, ev("E2", "2026-11-05T10:00"), ev("E2", "2026-11-05T11:00"),
                      ev("E1", "2026-11-05T10:00"), working_days_between=working_days_between)
    assert [e.actor_departed_working_days for e in events] == [3, 3, None]
    assert calls == [(dt.date(2026, 11, 2), dt.date(2026, 11, 5))]  # once per actor and day
