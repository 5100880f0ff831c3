"""Alerts become incidents: one per actor and episode, kept in the daemon's SQLite file.

``Correlator.apply`` is the one seam through which incidents change: the pipeline's
batches, the scheduled jobs and people's actions (the command line) all call it. It
runs inside the caller's transaction and never begins or commits one itself: the
batch's events, alerts, incident changes, their change-log rows (``changelog.py``,
which the respond stage reads) and the source checkpoint commit together, so a crash
never applies half a batch, and nothing reacts to a change that did not commit.

Alerts are taken in arrival order and never re-sorted, and incident numbers follow the
arrival of each incident's opening alert. A replay of the same log into a fresh store
therefore gives the same incident ids, however its batches are cut.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import msgspec

from auditd.config.typed import DEFAULT_ZONE
from auditd.correlate import changelog
from auditd.correlate.actions import apply_action, validate
from auditd.correlate.grading import (
    SEVERITY_RANK, Facts, Grade, Grader, incident_title, unnamed_customers,
)
from auditd.correlate.model import (
    ACTIVE_STATUSES, CORRELATOR, Action, Clock, CorrelateError, IncidentChange, IncidentSummary, Merge,
    system_clock,
)
from auditd.correlate.queries import get_summary
from auditd.correlate.schema import savepoint
from auditd.store.times import from_db, to_db
from auditd.correlate.settings import CorrelateSettings, tier_rank
from auditd.correlate.timeline import INSERT_ENTRY, Head, next_entry
from auditd.detect.alert import Alert

__all__ = ["Correlator", "IncidentStore", "act"]

_CHUNK = 500  # ids per IN (...) query: well under SQLite's bound-variable limit
_ZERO = dt.timedelta(0)

_LOAD_COLUMNS = (
    "incident_id, group_key, actor, title, tier, auto_tier, status, severity, first_seen,"
    " last_seen, discovered_at, alert_count, affected_count, max_record_count, sensitive,"
    " band, rules, categories, timeline_seq, timeline_head, economic_loss, cii"
)
_INSERT_INCIDENT = (
    "INSERT INTO incidents (incident_id, group_key, actor, title, tier, auto_tier, status,"
    " severity, first_seen, last_seen, discovered_at, updated_at, alert_count, affected_count,"
    " max_record_count, sensitive, band, rules, categories, timeline_seq, timeline_head, fleet_key)"
    " VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# the columns apply() owns; status and assignee belong to people (actions.py)
_UPDATE_INCIDENT = (
    "UPDATE incidents SET title = ?, tier = ?, auto_tier = ?, severity = ?, first_seen = ?,"
    " last_seen = ?, updated_at = ?, alert_count = ?, affected_count = ?, max_record_count = ?,"
    " sensitive = ?, band = ?, rules = ?, categories = ?, timeline_seq = ?, timeline_head = ?"
    " WHERE incident_id = ?"
)
_INSERT_ALERT = (
    "INSERT OR IGNORE INTO alerts (alert_id, incident_id, rule_id, severity, timestamp, doc)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

_json_encoder = msgspec.json.Encoder()
_list_decoder = msgspec.json.Decoder(list[str])


def fleet_key(group: str, opening_alert_id: str) -> str:
    """The incident's key across the fleet: its episode's group and opening alert, so
    every daemon that sees the episode gives it the same key (the replica's doc id)."""
    digest = hashlib.blake2b(f"{group}\0{opening_alert_id}".encode("utf-8"), digest_size=10).hexdigest()
    return f"FI-{digest}"


def group_key(alert: Alert) -> str:
    """Episodes are per actor; alerts without one (e.g. per-IP rules) group by rule."""
    return alert.actor if alert.actor else f"rule:{alert.rule_id}"


@dataclass(slots=True, eq=False)
class Working:
    """An incident while a batch is applied: stored state plus what the batch adds."""

    incident_id: str | None  # None until numbered, for an incident opened by this batch
    group_key: str
    actor: str | None
    title: str
    tier: str
    auto_tier: str
    status: str
    severity: str
    first_seen: dt.datetime
    last_seen: dt.datetime
    discovered_at: str
    alert_count: int = 0
    affected_count: int = 0
    max_record_count: int = 0
    sensitive: bool = False
    band: str | None = None
    rules: set[str] = field(default_factory=set)
    categories: set[str] = field(default_factory=set)
    head: Head = field(default_factory=Head)
    economic_loss: float | None = None  # set by people (actions.py); grading reads it
    cii: bool = False
    opening: Alert | None = None  # set only for incidents this batch opens
    opening_index: int = -1  # arrival index of the opening alert in the batch
    # this batch's part
    alerts: list[Alert] = field(default_factory=list)
    subjects: set[str] = field(default_factory=set)
    batch_rules: set[tuple[str, str]] = field(default_factory=set)
    batch_categories: set[str] = field(default_factory=set)
    severe_sensitive: bool = False
    unnamed: dict[tuple[str, ...], int] = field(default_factory=dict)  # per event: customers counted, not named

    def add(self, alert: Alert, leak_rank: int) -> None:
        ts = alert.timestamp
        if ts < self.first_seen:  # alerts may arrive a little out of order
            self.first_seen = ts
        if ts > self.last_seen:
            self.last_seen = ts
        self.alert_count += 1
        self.alerts.append(alert)
        self.subjects.update(alert.subject_ids)
        unnamed = unnamed_customers(alert)
        if unnamed > self.unnamed.get(alert.event_ids, 0):  # several rules on one event count it once
            self.unnamed[alert.event_ids] = unnamed
        self.batch_rules.add((alert.rule_id, alert.rule_kind))
        self.batch_categories.update(alert.categories)
        if alert.record_count > self.max_record_count:
            self.max_record_count = alert.record_count
        rank = SEVERITY_RANK.get(alert.severity, -1)
        if alert.sensitive:
            self.sensitive = True
            if rank >= leak_rank:
                self.severe_sensitive = True
        if rank > SEVERITY_RANK.get(self.severity, -1):
            self.severity = alert.severity

    def merge_batch(self) -> None:
        """Fold the batch's rules and categories into the incident's (once, not per alert)."""
        self.rules.update(rule_id for rule_id, _ in self.batch_rules)
        self.categories.update(self.batch_categories)

    def distance(self, ts: dt.datetime) -> dt.timedelta:
        """How far ts lies outside [first_seen, last_seen]; zero inside."""
        return max(self.first_seen - ts, ts - self.last_seen, _ZERO)


class IncidentStore:
    """The SQL of apply(), in one place; the caller owns the transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def known_alert_ids(self, alert_ids: Sequence[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(alert_ids), _CHUNK):
            chunk = alert_ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT alert_id FROM alerts WHERE alert_id IN ({marks})"
            known.update(row[0] for row in self.conn.execute(sql, chunk))
        return known

    def active_incidents(self, group_keys: Sequence[str], since: dt.datetime) -> list[Working]:
        """Incidents of these actors still taking alerts, active at or after since."""
        found: list[Working] = []
        statuses = ",".join(f"'{s}'" for s in ACTIVE_STATUSES)
        for start in range(0, len(group_keys), _CHUNK):
            chunk = list(group_keys[start:start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            sql = (f"SELECT {_LOAD_COLUMNS} FROM incidents WHERE group_key IN ({marks})"
                   f" AND last_seen >= ? AND status IN ({statuses}) ORDER BY incident_id")
            found.extend(_working_from_row(row) for row in self.conn.execute(sql, [*chunk, to_db(since)]))
        return found

    def next_number(self, day: str) -> int:
        row = self.conn.execute(
            "INSERT INTO incident_counters (day, last) VALUES (?, 1)"
            " ON CONFLICT (day) DO UPDATE SET last = last + 1 RETURNING last", (day,)
        ).fetchone()
        return int(row[0])

    def add_subjects(self, incident_id: str, subjects: Iterable[str]) -> int:
        """Link pseudonyms to the incident; returns how many were new to it."""
        cur = self.conn.executemany(
            "INSERT OR IGNORE INTO incident_subjects (incident_id, subject_id) VALUES (?, ?)",
            ((incident_id, s) for s in subjects),
        )
        return cur.rowcount  # executemany sums the rows changed; ignored ones count 0

    def write(self, new: list[tuple[Any, ...]], updated: list[tuple[Any, ...]],
              alerts: list[tuple[Any, ...]], timeline: list[tuple[Any, ...]]) -> None:
        if new:
            self.conn.executemany(_INSERT_INCIDENT, new)
        if updated:
            self.conn.executemany(_UPDATE_INCIDENT, updated)
        if alerts:
            self.conn.executemany(_INSERT_ALERT, alerts)
        if timeline:
            self.conn.executemany(INSERT_ENTRY, timeline)


def _working_from_row(row: tuple[Any, ...]) -> Working:
    (incident_id, key, actor, title, tier, auto_tier, status, severity, first_seen, last_seen,
     discovered_at, alert_count, affected_count, max_record_count, sensitive, band, rules,
     categories, timeline_seq, timeline_head, economic_loss, cii) = row
    return Working(
        incident_id=incident_id, group_key=key, actor=actor, title=title, tier=tier,
        auto_tier=auto_tier, status=status, severity=severity, first_seen=from_db(first_seen),
        last_seen=from_db(last_seen), discovered_at=discovered_at, alert_count=alert_count,
        affected_count=affected_count, max_record_count=max_record_count,
        sensitive=bool(sensitive), band=band, rules=set(_list_decoder.decode(rules)),
        categories=set(_list_decoder.decode(categories)), head=Head(timeline_seq, timeline_head),
        economic_loss=economic_loss, cii=bool(cii),
    )


@dataclass(slots=True)
class _Rows:
    """What a batch writes, gathered so each statement runs once with executemany."""

    new: list[tuple[Any, ...]] = field(default_factory=list)
    updated: list[tuple[Any, ...]] = field(default_factory=list)
    alerts: list[tuple[Any, ...]] = field(default_factory=list)
    timeline: list[tuple[Any, ...]] = field(default_factory=list)


class Correlator:
    def __init__(self, settings: CorrelateSettings, clock: Clock = system_clock):
        self.settings = settings
        self.clock = clock
        self.grader = Grader(settings)
        self.gap = settings.episode_gap.timedelta

    def apply(self, conn: sqlite3.Connection, alerts: Iterable[Alert] = (),
              actions: Iterable[Action] = ()) -> list[IncidentChange]:
        """Fold alerts, then people's actions, into incidents, inside the caller's
        transaction; every change is appended to the change log there too."""
        if not conn.in_transaction:
            # outside a transaction every statement would commit alone: a crash
            # between them would leave a half-applied batch behind
            raise CorrelateError("Correlator.apply must run inside the caller's BEGIN ... COMMIT")
        actions = list(actions)
        for action in actions:
            validate(action)
        now = to_db(self.clock())
        changes = self._apply_alerts(conn, list(alerts), now)
        for action in actions:
            changes.extend(apply_action(conn, action, now, self.grader))
        changelog.append(conn, changes)
        return changes

    def _apply_alerts(self, conn: sqlite3.Connection, alerts: list[Alert], now: str) -> list[IncidentChange]:
        store = IncidentStore(conn)
        fresh = self._fresh(store, alerts)
        if not fresh:
            return []
        touched = self._assign(store, fresh, now)
        self._number(store, touched)
        rows = _Rows()
        changes = [self._finish(store, work, now, rows) for work in touched]
        store.write(rows.new, rows.updated, rows.alerts, rows.timeline)
        return changes

    def _fresh(self, store: IncidentStore, alerts: list[Alert]) -> list[Alert]:
        """Drop alerts already stored or repeated in the batch: replays are no-ops."""
        known = store.known_alert_ids([a.alert_id for a in alerts])
        fresh: list[Alert] = []
        for alert in alerts:
            if alert.alert_id in known:
                continue
            if alert.timestamp.tzinfo is None:
                raise CorrelateError(f"alert {alert.alert_id}: naive timestamp {alert.timestamp!r}")
            known.add(alert.alert_id)
            fresh.append(alert)
        return fresh

    def _assign(self, store: IncidentStore, alerts: list[Alert], now: str) -> list[Working]:
        """Put each alert, in arrival order, into its actor's episode or a new incident."""
        keys = [group_key(a) for a in alerts]
        since = min(a.timestamp for a in alerts) - self.gap
        candidates: dict[str, list[Working]] = {key: [] for key in keys}
        for stored in store.active_incidents(list(candidates), since):
            candidates[stored.group_key].append(stored)
        touched: dict[Working, None] = {}  # insertion-ordered set, by identity
        leak_rank = SEVERITY_RANK[self.settings.tiers.leak_severity]
        for index, alert in enumerate(alerts):
            pool = candidates[keys[index]]
            work = self._episode_of(pool, alert.timestamp)
            if work is None:
                work = _open(alert, index, now)
                pool.append(work)
            work.add(alert, leak_rank)
            touched[work] = None
        return list(touched)

    def _episode_of(self, pool: list[Working], ts: dt.datetime) -> Working | None:
        """The incident whose span, widened by the gap, holds ts; the nearest if several."""
        # ties go to the later span: an order that does not depend on how pool was loaded
        best: Working | None = None
        best_key: tuple[dt.timedelta, dt.datetime, dt.datetime] | None = None
        for work in pool:
            distance = work.distance(ts)
            if distance > self.gap:
                continue
            key = (-distance, work.last_seen, work.first_seen)
            if best_key is None or key > best_key:
                best, best_key = work, key
        return best

    @staticmethod
    def _number(store: IncidentStore, touched: list[Working]) -> None:
        # numbered in the arrival order of their opening alerts, so batch cuts don't matter
        opened = sorted((w for w in touched if w.opening is not None), key=lambda w: w.opening_index)
        for work in opened:
            assert work.opening is not None
            day = work.opening.timestamp.astimezone(DEFAULT_ZONE).strftime("%Y%m%d")
            work.incident_id = f"INC-{day}-{store.next_number(day):04d}"

    def _finish(self, store: IncidentStore, work: Working, now: str, rows: _Rows) -> IncidentChange:
        """Count the affected, grade, and gather the batch's rows for one incident."""
        incident_id = work.incident_id
        assert incident_id is not None
        opened = work.opening is not None
        work.merge_batch()
        # sorted: inserts in key order touch fewer b-tree pages
        affected_added = store.add_subjects(incident_id, sorted(work.subjects)) if work.subjects else 0
        affected_added += sum(work.unnamed.values())
        work.affected_count += affected_added
        facts = Facts(actor=work.actor, categories=frozenset(work.categories),
                      affected=work.affected_count, max_record_count=work.max_record_count,
                      rules=frozenset(work.batch_rules), severe_sensitive=work.severe_sensitive,
                      severity=work.severity)
        band = self.grader.band_reached(facts)
        band_reached = band is not None and work.band is None
        if band_reached:
            work.band = band
        grade = self.grader.grade(facts, band, loss=work.economic_loss, cii=work.cii)
        previous_tier = None if opened else work.tier
        tier_raised = self._regrade(work, grade, opened)
        self._entries(work, now, grade, rows, affected_added, band_reached, previous_tier, tier_raised)
        self._rows(work, now, rows)
        return IncidentChange(
            incident_id=incident_id, version=work.head.seq, at=from_db(now),
            opened=opened, actor=work.actor, title=work.title,
            status=work.status, tier=work.tier, previous_tier=previous_tier,
            tier_raised=tier_raised, band=work.band, band_reached=band_reached,
            alerts_added=len(work.alerts), alert_count=work.alert_count,
            affected_added=affected_added, affected_count=work.affected_count,
            discovered_at=from_db(work.discovered_at), economic_loss=work.economic_loss, cii=work.cii,
        )

    @staticmethod
    def _regrade(work: Working, grade: Grade, opened: bool) -> bool:
        """Upward only. A tier a person lowered stays until the grade passes the old one."""
        if opened:
            work.tier = work.auto_tier = grade.tier
            work.title = _title(grade, work)
            return False
        if tier_rank(grade.tier) >= tier_rank(work.auto_tier):
            return False
        work.auto_tier = grade.tier
        if tier_rank(grade.tier) >= tier_rank(work.tier):
            return False
        work.tier = grade.tier
        work.title = _title(grade, work)
        return True

    def _entries(self, work: Working, now: str, grade: Grade, rows: _Rows, affected_added: int,
                 band_reached: bool, previous_tier: str | None, tier_raised: bool) -> None:
        """One timeline entry per kind per batch, not one per alert; no customer ids."""
        incident_id = work.incident_id
        assert incident_id is not None

        def add(kind: str, data: dict[str, Any]) -> None:
            rows.timeline.append(next_entry(incident_id, work.head, now, kind, CORRELATOR, data))

        if work.opening is not None:
            add("opened", {"actor": work.actor, "title": work.title, "tier": work.tier,
                           "reason": grade.reason, "discovered_at": work.discovered_at,
                           "opening_alert": work.opening.alert_id})
        batch_times = [a.timestamp for a in work.alerts]
        add("alerts_added", {
            "alerts": len(work.alerts), "alert_count": work.alert_count,
            "affected_added": affected_added, "affected_count": work.affected_count,
            "rules": sorted({rule_id for rule_id, _ in work.batch_rules}),
            "categories": sorted(work.batch_categories),
            "sensitive": any(a.sensitive for a in work.alerts),
            "first_seen": to_db(min(batch_times)), "last_seen": to_db(max(batch_times)),
        })
        if band_reached:
            add("band_reached", {"band": work.band, "affected_count": work.affected_count,
                                 "max_record_count": work.max_record_count,
                                 "insider": work.actor is not None})
        if tier_raised:
            add("tier_changed", {"from": previous_tier, "to": work.tier, "reason": grade.reason})

    @staticmethod
    def _rows(work: Working, now: str, rows: _Rows) -> None:
        incident_id = work.incident_id
        rules = _json_encoder.encode(sorted(work.rules)).decode()
        categories = _json_encoder.encode(sorted(work.categories)).decode()
        first_seen, last_seen = to_db(work.first_seen), to_db(work.last_seen)
        if work.opening is not None:
            rows.new.append((
                incident_id, work.group_key, work.actor, work.title, work.tier, work.auto_tier,
                work.severity, first_seen, last_seen, work.discovered_at, now, work.alert_count,
                work.affected_count, work.max_record_count, work.sensitive, work.band, rules,
                categories, work.head.seq, work.head.hash, fleet_key(work.group_key, work.opening.alert_id),
            ))
        else:
            rows.updated.append((
                work.title, work.tier, work.auto_tier, work.severity, first_seen, last_seen, now,
                work.alert_count, work.affected_count, work.max_record_count, work.sensitive,
                work.band, rules, categories, work.head.seq, work.head.hash, incident_id,
            ))
        encode = _json_encoder.encode
        rows.alerts.extend(
            (a.alert_id, incident_id, a.rule_id, a.severity, to_db(a.timestamp), encode(a).decode())
            for a in work.alerts
        )


def _open(alert: Alert, index: int, now: str) -> Working:
    """A new incident for an alert outside every open episode of its actor."""
    return Working(
        incident_id=None, group_key=group_key(alert), actor=alert.actor, title=alert.title,
        tier="", auto_tier="", status="open",  # tiers graded once the batch's alerts are in
        severity=alert.severity,
        first_seen=alert.timestamp, last_seen=alert.timestamp, discovered_at=now,
        opening=alert, opening_index=index,
    )


def _title(grade: Grade, work: Working) -> str:
    if grade.headline is None:
        return work.title if work.opening is None else work.opening.title
    lead = work.opening or max(work.alerts, key=lambda a: SEVERITY_RANK.get(a.severity, -1))
    return incident_title(grade.headline, lead.title)



def act(conn: sqlite3.Connection, action: Action, *, settings: CorrelateSettings | None = None,
        clock: Clock = system_clock) -> IncidentSummary:
    """One person's action through the seam, atomically: in the caller's transaction
    when there is one, else in its own. Returns the incident as it now stands (for a
    merge, the one that absorbed the other)."""
    correlator = Correlator(settings or CorrelateSettings(), clock)
    with savepoint(conn, "correlate_action"):
        correlator.apply(conn, actions=[action])
    return get_summary(conn, action.into if isinstance(action, Merge) else action.incident_id)
