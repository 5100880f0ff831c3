"""Unused grants: per role and per employee, from the events in the store."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest

from auditd.enrich import Enricher, Pseudonymiser
from auditd.entitlement import EntitlementChecker, render_grant_review, review_grants
from auditd.event import AccessEvent
from auditd.store.sqlite import Store
from directory_helpers import directory_from

SH = ZoneInfo("Asia/Shanghai")
DIRECTORY = """\
regions: [{id: R-KM}]
stores: [{id: S011, region: R-KM}]
roles:
  - id: clerk
    grants:
      - {categories: [identity, order], actions: [read, list], scope: own_store}
      - {categories: [order], actions: [print], scope: own_store}
  - id: manager
    grants:
      - {categories: [identity, order], actions: [read], scope: own_store}
      - {categories: [property], actions: [read], scope: own_store, purpose_required: true}
      - {categories: [identity], actions: [export], scope: own_store, purpose_required: true}
employees:
  - {id: E1, name: 店员甲, roles: [clerk], store: S011}
  - {id: E2, name: 店员乙, roles: [clerk], store: S011}
  - {id: E3, name: 店长, roles: [manager, clerk], store: S011}
  - {id: E4, name: 已离职, roles: [clerk], store: S011, status: departed, departure: 2026-10-15}
"""
NOW = dt.datetime(2026, 11, 30, 12, tzinfo=SH)
SINCE = NOW - dt.timedelta(days=30)


def at(day: int, hour: int = 10) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, tzinfo=SH).astimezone(dt.timezone.utc)


def access(user: str, action: str, categories: tuple[str, ...], when: dt.datetime, **kw) -> AccessEvent:
    return AccessEvent(timestamp=when, action=action, user_id=user, categories=categories, resource_store="S011",
                       **kw)


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return directory_from(tmp_path_factory, DIRECTORY)


@pytest.fixture(scope="module")
def store(directory, tmp_path_factory):
    """Events enriched as the pipeline does (roles as of then, entitlement facts), in two
    batches, one straddling the start of the review period."""
    straddling = [
        access("E1", "list", ("order",), dt.datetime(2026, 10, 25, 10, tzinfo=SH)),  # before the period
        access("E1", "read", ("identity",), at(2)),
    ]
    inside = [
        *[access("E1", "read", ("order",), at(3, h)) for h in range(9, 14)],
        access("E2", "read", ("identity",), at(4)),
        access("E2", "read", ("property",), at(4)),  # not granted: exercises nothing
        access("E2", "print", ("order",), at(4), outcome="denied"),  # the application refused it
        access("E3", "read", ("property",), at(5), purpose="refund"),
        access("E3", "read", ("identity",), at(5)),  # clerk and manager both grant it: both credited
        access("E1", "login", (), at(5)),
    ]
    enricher = Enricher(directory, Pseudonymiser(bytes(32)), entitlement=EntitlementChecker())
    db = Store(tmp_path_factory.mktemp("state") / "neo.db").open()
    for batch in (straddling, inside):
        enricher.enrich(batch)
        with db.transaction() as conn:
            db.insert_events(conn, "crm", batch)
    yield db
    db.close()


def grant_of(review, role: str, index: int):
    return next(r for r in review.roles if r.role == role).grants[index]


def test_per_role(directory, store):
    review = review_grants(store, directory, SINCE, NOW)
    assert review.events == 11  # data accesses in the period: the login and the October list are not
    clerk = next(r for r in review.roles if r.role == "clerk")
    assert (clerk.holders, clerk.accesses) == (3, 8)  # E1, E2, E3 hold it; E4 has left
    assert grant_of(review, "clerk", 0).exercised == {"identity:read": 3, "order:read": 5}
    assert grant_of(review, "clerk", 0).unused == ["identity:list", "order:list"]
    assert grant_of(review, "clerk", 1).exercised == {} and grant_of(review, "clerk", 1).unused == ["order:print"]
    assert grant_of(review, "manager", 1).exercised == {"property:read": 1}
    assert grant_of(review, "manager", 2).unused == ["identity:export"]


def test_per_employee(directory, store):
    review = review_grants(store, directory, SINCE, NOW)
    people = {e.user_id: e for e in review.employees}
    assert set(people) == {"E1", "E2", "E3"}  # E4 has left: nothing to take away
    assert people["E1"].exercised == {"identity:read": 1, "order:read": 5}
    assert people["E2"].exercised == {"identity:read": 1}
    assert "order:print" in people["E2"].unused  # the denied print does not count
    assert people["E3"].roles == ["manager", "clerk"]
    assert people["E3"].exercised == {"identity:read": 1, "property:read": 1}
    assert people["E3"].unused == ["identity:export", "identity:list", "order:list", "order:print", "order:read"]


def test_a_period_with_nothing(directory, store):
    review = review_grants(store, directory, NOW, NOW + dt.timedelta(days=1))
    assert review.events == 0
    assert all(not g.exercised for r in review.roles for g in r.grants)


def test_render_table_and_json(directory, store):
    review = review_grants(store, directory, SINCE, NOW)
    text = render_grant_review(review)
    assert text.startswith("Grant review 2026-10-31 12:00 .. 2026-11-30 12:00 (Asia/Shanghai): 11 data accesses read")
    assert "#1 order × print" in text and "ALL (unused grant)" in text
    assert any(line.split()[:3] == ["E2", "店员乙", "clerk"] for line in text.splitlines())
    data = json.loads(render_grant_review(review, as_json=True))
    assert data["events"] == 11 and {r["role"] for r in data["roles"]} == {"clerk", "manager"}
    e1 = next(e for e in data["employees"] if e["user_id"] == "E1")
    assert e1["exercised"] == {"identity:read": 1, "order:read": 5}


def test_a_job_may_pass_its_own_read_only_connection(directory, store):
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)) as conn:
        review = review_grants(conn, directory, SINCE, NOW)
    assert review.events == 11


def test_the_scheduled_job_writes_both_reports(directory, store, tmp_path):
    from auditd.jobs.grant_review import grant_review_job

    review = grant_review_job(store.path, directory, NOW - SINCE, out_dir=tmp_path / "reviews", now=NOW)
    assert review.events == 11
    text = (tmp_path / "reviews" / "grant-review-20261130.txt").read_text(encoding="utf-8")
    data = json.loads((tmp_path / "reviews" / "grant-review-20261130.json").read_text(encoding="utf-8"))
    assert text.startswith("Grant review") and data["events"] == 11


def test_the_scheduled_review_runs_in_a_process_of_its_own_and_stops_with_the_daemon(directory, store, tmp_path):
    """The review decodes its whole period (90 days by default): on the scheduler's thread
    it took the interpreter from the pipeline for as long. The job now runs it in a
    spawned process, on the directory the daemon holds, with the same report."""
    from types import SimpleNamespace

    from auditd.jobs import grant_review
    from auditd.jobs.apart import StoppedWithTheDaemon
    from auditd.jobs.context import JobContext

    settings = SimpleNamespace(entitlement=SimpleNamespace(review=SimpleNamespace(
        period=SimpleNamespace(timedelta=NOW - SINCE))), zone=SH)
    context = JobContext(store_path=store.path, runtime=lambda: SimpleNamespace(settings=settings),
                         directory=lambda: directory, now=lambda: NOW)
    grant_review.run(context)
    written = json.loads((store.path.parent / "reviews" / "grant-review-20261130.json").read_text())
    here = grant_review.grant_review_job(store.path, directory, NOW - SINCE, out_dir=tmp_path / "here", now=NOW)
    assert written == json.loads(render_grant_review(here, as_json=True))  # what the process wrote
    assert written == json.loads((tmp_path / "here" / "grant-review-20261130.json").read_text())
    with pytest.raises(StoppedWithTheDaemon):
        grant_review.run(dataclasses.replace(context, should_stop=lambda: True))
    import multiprocessing

    assert multiprocessing.active_children() == []  # ended, not left behind
