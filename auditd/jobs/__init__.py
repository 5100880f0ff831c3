"""Periodic work: one module per job, all on the service's one APScheduler scheduler.

    runner = JobRunner(scheduler, context)
    runner.start(job_specs(runtime.settings))     # at start
    runner.reschedule(job_specs(new.settings))    # after a reload that changed an interval

Each job's runs are recorded in the store (``jobs``: when it last started, finished,
and how), and its next due time is derived from that record, not from the process's
start: a daemon restarted every day still runs its weekly review, a run that a crash
cut short runs again soon after the restart, and one that finished is not run again
before its interval has passed. A job that fails is logged and recorded; the next one
is due as usual.

The jobs: ``retention`` (purge events and quarantine past their retention),
``departed-sweep`` (accounts of leavers live past the grace), ``grant-review`` (grants
not exercised), ``detector-tick`` (stateful rules' time hooks, on the pipeline's
thread), ``respond-due`` (playbook steps: plan, fire, escalate) and ``deliver`` (the
outbox worker: send, retry, record receipts, escalate failures). ``deliver`` runs on a
scheduler of its own in the deliver process (``deliver_process.py``, started and
supervised by the daemon through ``deliver_supervisor.py``), never on the daemon's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from apscheduler.triggers.interval import IntervalTrigger

from auditd.jobs import deliver, departed_sweep, detector_tick, grant_review, respond_due, retention
from auditd.jobs.context import JobContext
from auditd.store.pressure import StorageUnavailable, hold_reason
from auditd.store.sqlite import immediate
from auditd.store.times import from_db, to_db

log = logging.getLogger("neo_auditd.jobs")

SOON = dt.timedelta(seconds=10)  # an overdue or interrupted job runs this long after the start


class _StillRunningToDebug(logging.Filter):
    """A job still running at its next tick skips it (max_instances=1, coalesce): that is
    how a long run (the outbox draining 100,000 messages) works, not a warning a second."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "maximum number of running instances" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_SCHEDULER_LOGGER = logging.getLogger("apscheduler.scheduler")


@dataclass(frozen=True, slots=True)
class JobSpec:
    id: str
    every: dt.timedelta
    run: Callable[[JobContext], None]
    first_after: dt.timedelta = dt.timedelta(minutes=1)  # on a store where it never ran


# job id -> (module's run, how to read its interval from the settings, delay of a first run)
REGISTRY: Mapping[str, tuple[Callable[[JobContext], None], Callable[[Any], Any], dt.timedelta]] = MappingProxyType({
    "retention": (retention.run, lambda s: s.ops.retention.check_every, dt.timedelta(minutes=1)),
    "departed-sweep": (departed_sweep.run, lambda s: s.entitlement.departed.check_every, dt.timedelta(minutes=2)),
    "grant-review": (grant_review.run, lambda s: s.entitlement.review.every, dt.timedelta(minutes=5)),
    "detector-tick": (detector_tick.run, lambda s: s.pipeline.tick_every, dt.timedelta(seconds=5)),
    "respond-due": (respond_due.run, lambda s: s.respond.check_every, dt.timedelta(seconds=5)),
    "deliver": (deliver.run, lambda s: s.deliver.check_every, dt.timedelta(seconds=5)),
})


# jobs that run in a process of their own, not on the daemon's scheduler: the deliver
# process (jobs/deliver_process.py), so that sending never takes the interpreter lock
# from the pipeline
OWN_PROCESS = frozenset({"deliver"})


def job_specs(settings: Any, ids: Iterable[str] | None = None) -> list[JobSpec]:
    """The jobs and their intervals under these settings: those named by `ids`, by
    default the ones on the daemon's scheduler (all but OWN_PROCESS)."""
    wanted = frozenset(REGISTRY) - OWN_PROCESS if ids is None else frozenset(ids)
    return [JobSpec(job_id, every(settings).timedelta, run, first_after)
            for job_id, (run, every, first_after) in REGISTRY.items() if job_id in wanted]


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    last_started: dt.datetime | None
    last_finished: dt.datetime | None
    last_ok: bool | None
    last_error: str | None
    runs: int


def read_records(conn: sqlite3.Connection) -> dict[str, JobRecord]:
    rows = conn.execute("SELECT job_id, last_started, last_finished, last_ok, last_error, runs FROM jobs")
    return {job_id: JobRecord(job_id, from_db(started) if started else None, from_db(finished) if finished else None,
                              None if ok is None else bool(ok), error, runs)
            for job_id, started, finished, ok, error, runs in rows}


def next_due(record: JobRecord | None, spec: JobSpec, now: dt.datetime) -> dt.datetime:
    """When the job is due, from what the store says about its last run."""
    if record is None or record.last_started is None:
        return now + spec.first_after
    if record.last_finished is None or record.last_finished < record.last_started:
        return now + SOON  # the last run never finished (a crash, a kill): run it again
    return max(record.last_started + spec.every, now + SOON)


class JobRunner:
    """Runs the jobs on the scheduler and records their runs in the store."""

    def __init__(self, scheduler: Any, context: JobContext):
        if not any(isinstance(f, _StillRunningToDebug) for f in _SCHEDULER_LOGGER.filters):
            _SCHEDULER_LOGGER.addFilter(_StillRunningToDebug())
        self.scheduler = scheduler
        self.context = context
        self._specs: dict[str, JobSpec] = {}

    def start(self, specs: Iterable[JobSpec]) -> None:
        records = self._records()
        now = self.context.now()
        for spec in specs:
            self._specs[spec.id] = spec
            self._add(spec, next_due(records.get(spec.id), spec, now))

    def reschedule(self, specs: Iterable[JobSpec]) -> list[str]:
        """Apply changed intervals (a reload); returns the ids rescheduled."""
        records = self._records()
        now = self.context.now()
        changed = []
        for spec in specs:
            old = self._specs.get(spec.id)
            self._specs[spec.id] = spec
            if old is not None and old.every == spec.every:
                continue
            due = next_due(records.get(spec.id), spec, now)
            if old is not None:
                self.scheduler.remove_job(spec.id)
            self._add(spec, due)
            changed.append(spec.id)
        if changed:
            log.info("jobs rescheduled", extra={"jobs": changed})
        return changed

    def _add(self, spec: JobSpec, due: dt.datetime) -> None:
        # the first run at the time the store says, then every interval; however late the
        # scheduler gets to it (a busy machine), a due run is made, never dropped
        self.scheduler.add_job(self._run, IntervalTrigger(seconds=spec.every.total_seconds()), args=(spec.id,),
                               id=spec.id, name=spec.id, next_run_time=due, coalesce=True, max_instances=1,
                               misfire_grace_time=None)

    def run_soon(self, job_id: str) -> None:
        """Make the job due now (the deliver process at its start: sending resumes at once)."""
        self.scheduler.modify_job(job_id, next_run_time=self.context.now())

    def next_run_times(self) -> dict[str, dt.datetime | None]:
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()}

    def run_now(self, job_id: str) -> bool:
        """Run one job on the calling thread (tests, `replay`); True if it succeeded."""
        return self._run(job_id)

    def _run(self, job_id: str) -> bool:
        spec = self._specs[job_id]
        self._record(job_id, started=self.context.now())
        ok, error = True, None
        try:
            spec.run(self.context)
        except Exception as exc:  # a failed run must not stop the scheduler; the next one tries again
            ok, error = False, f"{type(exc).__name__}: {exc}"
            reason = hold_reason(exc) or (exc.reason if isinstance(exc, StorageUnavailable) else None)
            if reason is not None:  # a full disk is the daemon's to report (holding back), not a bug here
                log.warning("job waits: storage cannot be written", extra={"job": job_id, "reason": reason})
            else:
                log.exception("job failed", extra={"job": job_id})
        self._record(job_id, finished=self.context.now(), ok=ok, error=error)
        return ok

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(Path(self.context.store_path), isolation_level=None, timeout=30)

    def _records(self) -> dict[str, JobRecord]:
        with contextlib.closing(self._connect()) as conn:
            return read_records(conn)

    def _record(self, job_id: str, *, started: dt.datetime | None = None, finished: dt.datetime | None = None,
                ok: bool | None = None, error: str | None = None) -> None:
        try:
            with contextlib.closing(self._connect()) as conn, immediate(conn):
                if started is not None:
                    conn.execute("INSERT INTO jobs (job_id, last_started, runs) VALUES (?, ?, 1)"
                                 " ON CONFLICT (job_id) DO UPDATE SET last_started = excluded.last_started,"
                                 " runs = runs + 1", (job_id, to_db(started)))
                else:
                    conn.execute("UPDATE jobs SET last_finished = ?, last_ok = ?, last_error = ? WHERE job_id = ?",
                                 (to_db(finished), int(bool(ok)), error, job_id))
        except sqlite3.Error as exc:  # the store is full or damaged: the job still ran; say so
            log.error("cannot record a job run", extra={"job": job_id, "error": str(exc)})


__all__ = ["OWN_PROCESS", "REGISTRY", "JobContext", "JobRecord", "JobRunner", "JobSpec", "job_specs", "next_due", "read_records"]
