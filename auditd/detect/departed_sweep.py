"""The departed-accounts sweep: accounts still live past the grace after a departure.

The privacy policy promises that HR cancels a leaver's employee id, and the account
with it, within 3 working days. Nothing in the access log says so when it fails — an
unused account writes no lines — so a scheduled job asks, for every employee whose
departure is past:

- is the account still enabled now (the account-status feed's latest observation,
  else the HR directory's `account_enabled` / `account_disabled_at`)?  →
  ``account_still_enabled``
- was it disabled, but only after the deadline?  →  ``account_disabled_late``
- did it log in successfully after the deadline although the feed calls it disabled
  (a stale feed, or a re-enabled account)?  →  ``account_used_after_deadline``

The deadline is the end of the `grace_working_days`-th mainland-China working day after
the last day employed (departure on 2026-09-30 → deadline 2026-10-10, a make-up
Saturday after National Day). An alert's id depends only on the rule, the employee and
the departure, so a sweep repeated every hour, or after a restart, adds nothing twice:
the correlator ignores alert ids it has stored. The sweep only returns alerts; the job
(`auditd/jobs/departed_sweep.py`) applies them through the correlator's seam.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from auditd.config.typed import DEFAULT_ZONE
from auditd.detect.alert import Alert, alert_id
from auditd.directory.model import Directory, Employee
from auditd.entitlement.accounts import AccountFeed
from auditd.event import stored_view
from auditd.store.encoding import segment_decoder
from auditd.store.times import to_db
from auditd.workdays import WorkingCalendar

log = logging.getLogger("neo_auditd.departed")

RULE_ID = "departed_account_live_past_grace"
RULE_KIND = "departed"  # graded like departed-staff activity (T5 by default)
TAGS = ("stable", "pi", "insider", "departed", "account")
LOGIN_LOOKBACK = dt.timedelta(days=14)
STILL_ENABLED, DISABLED_LATE, USED_AFTER_DEADLINE = (
    "account_still_enabled", "account_disabled_late", "account_used_after_deadline")


@dataclass(frozen=True, slots=True)
class Login:
    """A successful login seen in the stored events."""

    at: dt.datetime
    event_id: str


@dataclass(frozen=True, slots=True)
class SweepSettings:
    grace_working_days: int = 3
    rule_id: str = RULE_ID
    severity: str = "high"


def sweep_departed_accounts(directory: Directory, calendar: WorkingCalendar, now: dt.datetime, *,
                            feed: AccountFeed | None = None, logins: Mapping[str, Sequence[Login]] | None = None,
                            settings: SweepSettings = SweepSettings(), zone: dt.tzinfo = DEFAULT_ZONE) -> list[Alert]:
    """One alert per departed employee whose account was live past the deadline, in
    employee-id order. `logins`: successful logins per user id (see `logins_since`)."""
    alerts = []
    for employee in sorted(directory.employees.values(), key=lambda e: e.id):
        if employee.departure is None or employee.departure > now:
            continue
        alert = _check(employee, calendar, now, feed, (logins or {}).get(employee.id, ()), settings, zone)
        if alert is not None:
            alerts.append(alert)
    return alerts


@dataclass(frozen=True, slots=True)
class _Deadline:
    last_day: dt.date  # the last day employed, local
    day: dt.date  # the last working day of the grace
    breach_at: dt.datetime  # the instant after which a live account breaks the promise


def deadline_of(employee: Employee, calendar: WorkingCalendar, grace: int,
                zone: dt.tzinfo = DEFAULT_ZONE) -> _Deadline:
    assert employee.departure is not None
    # 18:00 on the 30th and "the 30th" (whose end is midnight of the 1st) share a last day
    last_day = (employee.departure - dt.timedelta(microseconds=1)).astimezone(zone).date()
    day = calendar.add_working_days(last_day, grace)
    next_midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    return _Deadline(last_day, day, next_midnight.astimezone(dt.timezone.utc))


def _check(employee: Employee, calendar: WorkingCalendar, now: dt.datetime, feed: AccountFeed | None,
           logins: Sequence[Login], settings: SweepSettings, zone: dt.tzinfo) -> Alert | None:
    deadline = deadline_of(employee, calendar, settings.grace_working_days, zone)
    if now < deadline.breach_at:
        return None
    late_logins = [login for login in logins if login.at >= deadline.breach_at]
    found = _finding(employee, deadline, now, feed, late_logins, zone)
    if found is None:
        return None
    code, detail = found
    gone = calendar.working_days_between(deadline.last_day, now.astimezone(zone).date())
    return _alert(employee, deadline, code, detail, gone, late_logins, settings, zone)


def _finding(employee: Employee, deadline: _Deadline, now: dt.datetime, feed: AccountFeed | None,
             late_logins: list[Login], zone: dt.tzinfo) -> tuple[str, str] | None:
    """(code, detail) for a breach, or None when the account went in time."""
    observed = feed.state_at(employee.id, now) if feed is not None else None
    if observed is not None:
        source = f"the account feed ({observed.source})"
        if observed.enabled:
            return STILL_ENABLED, f"still enabled at {_local(observed.as_of, zone)} per {source}"
        # a feed is a series of snapshots: lateness needs a sighting of the live account
        live = feed.last_enabled_between(employee.id, deadline.breach_at, now)  # type: ignore[union-attr]
        if live is not None:
            return DISABLED_LATE, (f"still enabled at {_local(live.as_of, zone)} per the account feed "
                                   f"({live.source}), disabled by {_local(observed.as_of, zone)}")
    else:
        source = "the HR directory"
        if employee.as_of(now).account_enabled:
            return STILL_ENABLED, f"still enabled per {source}"
        disabled_at = employee.account_disabled_at
        if disabled_at is not None and disabled_at >= deadline.breach_at:
            return DISABLED_LATE, f"disabled only at {_local(disabled_at, zone)} per {source}"
    if late_logins:
        return USED_AFTER_DEADLINE, (f"{len(late_logins)} successful login(s) after the deadline, the first at "
                                     f"{_local(late_logins[0].at, zone)}, although {source} calls it disabled")
    return None


def _alert(employee: Employee, deadline: _Deadline, code: str, detail: str, gone: int, logins: list[Login],
           settings: SweepSettings, zone: dt.tzinfo) -> Alert:
    assert employee.departure is not None
    uid, grace = employee.id, settings.grace_working_days
    left = _local(employee.departure, zone)
    return Alert(
        # the employee and this departure, nothing about the sweep: a repeat is the same alert
        alert_id=alert_id(settings.rule_id, f"account:{uid}", employee.departure.isoformat()),
        rule_id=settings.rule_id, rule_kind=RULE_KIND, severity=settings.severity,
        title=f"Account of departed employee {uid} live past {grace} working days ({code})",
        timestamp=deadline.breach_at,
        event_ids=tuple(login.event_id for login in logins[:20]),
        actor=uid,
        reason=(f"{code}: {uid} left at {left}; the account had to go by the end of {deadline.day} "
                f"({grace} working days); {detail}; {gone} working day(s) since leaving"),
        tags=TAGS,
        output_fields={"user.id": uid, "user.name": employee.name, "neo.actor.departed_working_days": gone},
    )


def _local(when: dt.datetime, zone: dt.tzinfo) -> str:
    return when.astimezone(zone).isoformat(timespec="minutes")


# -- logins seen in the store ------------------------------------------------------------------

_LoginDoc = stored_view("_LoginDoc", ("timestamp", "action", "outcome", "user_id", "event_id"))
_decode_segment = segment_decoder(_LoginDoc)


@dataclass(frozen=True, slots=True)
class LoginScan:
    logins: dict[str, list["Login"]]  # per user id, in time order
    last_seq: int  # the last event segment read (`after_seq` of the next scan)
    segments: int  # how many were read


def logins_since(conn, user_ids: Iterable[str], since: dt.datetime, *, after_seq: int = 0) -> LoginScan:
    """Successful logins of these users at or after `since`, from the store's event
    segments (an sqlite3 connection), in time order; with `after_seq`, only from the
    segments written after that one (what an earlier scan did not read)."""
    wanted = frozenset(user_ids)
    out: dict[str, list[Login]] = {}
    last, segments = after_seq, 0
    rows = conn.execute("SELECT seq, doc FROM event_segments WHERE last_ts >= ? AND seq > ? ORDER BY seq",
                        (to_db(since), after_seq))
    for seq, doc in rows:
        last, segments = seq, segments + 1
        for ev in _decode_segment(doc):
            if (ev.action == "login" and ev.outcome == "success" and ev.user_id in wanted
                    and ev.timestamp >= since):
                out.setdefault(ev.user_id, []).append(Login(ev.timestamp, ev.event_id))
    for logins in out.values():
        logins.sort(key=lambda login: login.at)
    return LoginScan(out, last, segments)


def departed_ids(directory: Directory, now: dt.datetime) -> list[str]:
    """Employees whose departure is past: whose logins the sweep needs."""
    return sorted(e.id for e in directory.employees.values() if e.departure is not None and e.departure <= now)
