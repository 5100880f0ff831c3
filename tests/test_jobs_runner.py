"""Periodic jobs: next due times derived from the store, runs recorded, intervals
that a reload changes applied."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from auditd.jobs import OWN_PROCESS, REGISTRY, SOON, JobContext, JobRecord, JobRunner, JobSpec, job_specs, next_due, read_records
from auditd.settings import PipelineSettings, Settings, with_overrides
from auditd.store.sqlite import Store
from auditd.config.typed import Duration

NOW = dt.datetime(2026, 11, 9, 2, 0, tzinfo=dt.timezone.utc)
WEEK = dt.timedelta(days=7)


def spec(every: dt.timedelta = WEEK, run=lambda ctx: None, job_id: str = "review") -> JobSpec:
    return JobSpec(job_id, every, run, first_after=dt.timedelta(minutes=5))


def test_a_job_never_run_waits_its_first_delay():
    assert next_due(None, spec(), NOW) == NOW + dt.timedelta(minutes=5)


def test_a_weekly_job_is_due_a_week_after_its_last_start_whatever_the_restarts():
    last = JobRecord("review", NOW - dt.timedelta(days=2), NOW - dt.timedelta(days=2) + dt.timedelta(seconds=3),
                     True, None, 4)
    assert next_due(last, spec(), NOW) == NOW - dt.timedelta(days=2) + WEEK
    overdue = JobRecord("review", NOW - dt.timedelta(days=9), NOW - dt.timedelta(days=9), True, None, 4)
    assert next_due(overdue, spec(), NOW) == NOW + SOON  # a daemon down past the due time runs it soon


def test_a_run_cut_short_by_a_crash_runs_again_soon():
    cut = JobRecord("review", NOW - dt.timedelta(hours=1), NOW - dt.timedelta(days=8), True, None, 5)
    assert next_due(cut, spec(), NOW) == NOW + SOON


def context(tmp_path: Path, clock=lambda: NOW) -> JobContext:
    Store(tmp_path / "neo.db").open().close()
    return JobContext(store_path=tmp_path / "neo.db", runtime=lambda: None, directory=lambda: None, now=clock)


def test_runs_are_recorded_and_a_failure_does_not_escape(tmp_path):
    ctx = context(tmp_path)
    runner = JobRunner(BackgroundScheduler(timezone=dt.timezone.utc), ctx)

    def boom(_ctx):
        raise OSError("disk on fire")

    runner.start([spec(), spec(run=boom, job_id="broken")])
    assert runner.run_now("review") is True
    assert runner.run_now("broken") is False
    with sqlite3.connect(ctx.store_path) as conn:
        records = read_records(conn)
    assert records["review"].last_ok is True and records["review"].runs == 1
    assert records["broken"].last_ok is False and "disk on fire" in records["broken"].last_error


def test_start_schedules_from_the_store_and_a_reload_applies_a_new_interval(tmp_path):
    ctx = context(tmp_path)
    with sqlite3.connect(ctx.store_path) as conn:
        conn.execute("INSERT INTO jobs VALUES ('review', ?, ?, 1, NULL, 3)",
                     ("2026-11-07T02:00:00.000000+00:00", "2026-11-07T02:00:05.000000+00:00"))
    scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
    scheduler.start(paused=True)
    try:
        runner = JobRunner(scheduler, ctx)
        runner.start([spec()])
        assert runner.next_run_times()["review"] == NOW - dt.timedelta(days=2) + WEEK
        assert runner.reschedule([spec()]) == []  # same interval: left alone
        assert runner.reschedule([spec(every=dt.timedelta(days=1))]) == ["review"]
        assert runner.next_run_times()["review"] == NOW + SOON  # two days since: a daily one is overdue
    finally:
        scheduler.shutdown(wait=False)


def test_the_scheduler_really_runs_a_due_job(tmp_path):
    ran = threading.Event()
    ctx = context(tmp_path, clock=lambda: dt.datetime.now(dt.timezone.utc))
    scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
    runner = JobRunner(scheduler, ctx)
    quick = JobSpec("quick", dt.timedelta(hours=1), lambda _ctx: ran.set(), first_after=dt.timedelta(seconds=0.2))
    runner.start([quick])
    scheduler.start()
    try:
        assert ran.wait(30)
    finally:
        scheduler.shutdown(wait=True)
    with sqlite3.connect(ctx.store_path) as conn:
        assert read_records(conn)["quick"].runs == 1


def test_every_registered_job_takes_its_interval_from_the_settings(tmp_path):
    settings = Settings(state_dir=tmp_path, sources=[], pseudonym=None)  # type: ignore[arg-type]
    specs = {s.id: s for s in job_specs(settings, REGISTRY)}
    assert set(specs) == set(REGISTRY) == {"retention", "departed-sweep", "grant-review", "detector-tick",
                                           "respond-due", "deliver"}
    # the daemon's scheduler runs all but the deliver job, which runs in the deliver process
    assert {s.id for s in job_specs(settings)} == set(REGISTRY) - {"deliver"} == set(REGISTRY) - OWN_PROCESS
    assert [s.id for s in job_specs(settings, ["deliver"])] == ["deliver"]
    assert specs["deliver"].every == settings.deliver.check_every.timedelta
    assert specs["respond-due"].every == dt.timedelta(seconds=30)
    assert specs["grant-review"].every == dt.timedelta(days=7)
    faster = with_overrides(settings, pipeline=PipelineSettings(tick_every=Duration(5)))
    assert {s.id: s for s in job_specs(faster)}["detector-tick"].every == dt.timedelta(seconds=5)


def test_a_job_that_meets_a_full_disk_waits_and_says_why_without_a_stack_trace(tmp_path, caplog):
    ctx = context(tmp_path)
    runner = JobRunner(BackgroundScheduler(timezone=dt.timezone.utc), ctx)

    def full(_ctx):
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = 13
        raise exc

    runner.start([spec(run=full, job_id="full")])
    assert runner.run_now("full") is False
    assert "job waits: storage cannot be written" in caplog.text
    assert "job failed" not in caplog.text
