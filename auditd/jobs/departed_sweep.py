"""Job: accounts of leavers still live past the grace (the sweep is in
``auditd/detect/departed_sweep.py``); its alerts enter incidents through the
correlator's seam, on a connection of the job's own.

Logins after a leaver's deadline are read from the stored events, which means decoding
every segment of the look-back (14 days) on the scheduler's thread, where it takes the
interpreter from the pipeline: minutes an hour on a busy system. So each run reads only
the segments written since the previous run, as long as the leavers it looks for (and
their deadlines) are the same; a new leaver, a changed departure or a restart reads the
whole look-back again, once. Logins an earlier run read have raised their alert then
(an alert per departure, whatever run raises it)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditd.config.typed import DEFAULT_ZONE
from auditd.detect.departed_sweep import (
    LOGIN_LOOKBACK, SweepSettings, deadline_of, logins_since, sweep_departed_accounts,
)
from auditd.directory.model import Directory
from auditd.entitlement.accounts import AccountFeedError, load_account_feed
from auditd.entitlement.settings import DepartedSettings
from auditd.jobs.context import JobContext
from auditd.store.sqlite import immediate
from auditd.workdays import WorkingCalendar

log = logging.getLogger("neo_auditd.departed")


@dataclass(frozen=True, slots=True)
class _Read:
    """What the last run of this process read of a store."""

    looked_for: frozenset[tuple[str, dt.datetime]]  # (leaver, deadline) pairs
    last_seq: int


_read: dict[str, _Read] = {}  # per store path


def run(context: JobContext) -> None:
    runtime = context.runtime()
    directory = context.directory()
    if directory is None:
        return
    run_departed_sweep(context.store_path, directory=directory, calendar=runtime.calendar,
                       correlator=runtime.correlator, settings=runtime.settings.entitlement.departed,
                       zone=runtime.settings.zone, now=context.now())


def run_departed_sweep(db_path: Path | str, *, directory: Directory, calendar: WorkingCalendar, correlator: Any,
                       settings: DepartedSettings | None = None, zone: dt.tzinfo = DEFAULT_ZONE,
                       now: dt.datetime | None = None) -> list[Any]:
    """The scheduled job: sweep, then `correlator.apply(conn, alerts)` in one transaction
    on a connection of its own (the scheduler's thread must not share the pipeline's).
    Returns the incident changes; a repeated run returns none for the same breaches."""
    now = now or dt.datetime.now(dt.timezone.utc)
    settings = settings or DepartedSettings()
    feed = None
    if settings.account_feed is not None:
        try:
            feed = load_account_feed(settings.account_feed, zone=zone)
        except AccountFeedError as exc:  # the directory and the logins still tell a good deal
            log.error("account feed unreadable; sweeping with the directory and logins only",
                      extra={"error": str(exc)})
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None, timeout=30)) as conn:
        logins, read = None, None
        if settings.use_logins:
            breaches = {e.id: deadline_of(e, calendar, settings.grace_working_days, zone).breach_at
                        for e in directory.employees.values() if e.departure is not None and e.departure <= now}
            due = [uid for uid, at in breaches.items() if at <= now]
            if due:
                # logins matter only once the grace is over, and the departed rule has already
                # alerted on each as it happened: a bounded look back keeps an hourly job cheap
                since = max(min(breaches[uid] for uid in due), now - LOGIN_LOOKBACK)
                looked_for = frozenset((uid, breaches[uid]) for uid in due)
                before = _read.get(str(db_path))
                after = before.last_seq if before is not None and before.looked_for == looked_for else 0
                scan = logins_since(conn, due, since, after_seq=after)
                logins, read = scan.logins, _Read(looked_for, scan.last_seq)
                log.debug("logins read", extra={"segments": scan.segments, "after_seq": after})
        sweep = SweepSettings(grace_working_days=settings.grace_working_days)
        alerts = sweep_departed_accounts(directory, calendar, now, feed=feed, logins=logins, settings=sweep, zone=zone)
        changes = []
        if alerts:
            with immediate(conn):
                changes = correlator.apply(conn, alerts)
        if read is not None:
            _read[str(db_path)] = read  # only once what it found has been recorded
    if changes:
        log.warning("departed accounts live past the grace", extra={"alerts": len(alerts), "incidents": len(changes)})
    return changes
