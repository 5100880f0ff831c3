"""Shared set-up for the respond tests: a store on disk, a correlator and a responder on
an injected clock, and alerts that open incidents of a chosen kind."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path

from auditd.config.located import Problems
from auditd.correlate import CorrelateSettings, Correlator
from auditd.detect.alert import Alert
from auditd.enrich.pseudonym import Pseudonymiser
from auditd.respond import build_responder
from auditd.respond.settings import RespondSettings
from auditd.store.migrations import migrate
from auditd.store.sqlite import immediate
from auditd.workdays import WorkingCalendar
from zoneinfo import ZoneInfo

UTC = dt.timezone.utc
ZONE = ZoneInfo("Asia/Shanghai")
KEY = b"k" * 32


@dataclass
class Clock:
    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now = self.now + dt.timedelta(**delta)
        return self.now


def open_store(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn, path, backup=False)
    return conn


def alert(n: int, at: dt.datetime, *, actor: str = "E10055", kind: str = "entitlement", severity: str = "high",
          subjects: tuple[str, ...] = (), categories: tuple[str, ...] = ("identity",), sensitive: bool = False,
          record_count: int = 1, rule_id: str = "least-privilege") -> Alert:
    return Alert(alert_id=f"alert-{n}", rule_id=rule_id, rule_kind=kind, severity=severity,
                 title=f"{rule_id} by {actor}", timestamp=at, event_ids=(f"event-{n}",), actor=actor,
                 subject_ids=subjects, categories=categories, sensitive=sensitive, record_count=record_count)


@dataclass
class World:
    """One store, one correlator, one responder, all on one clock."""

    tmp: Path
    clock: Clock
    settings: RespondSettings = field(default_factory=RespondSettings)
    pseudonymiser: Pseudonymiser = field(default_factory=lambda: Pseudonymiser(KEY))
    directory: object = None  # anything with .employees: {id: obj with .email, .phone}

    def __post_init__(self) -> None:
        self.conn = open_store(self.tmp / "neo.db")
        self.correlator = Correlator(CorrelateSettings(), self.clock)
        self.rebuild()

    def rebuild(self, **changes) -> None:
        if changes:
            self.settings = replace(self.settings, **changes)
        problems = Problems()
        self.responder = build_responder(
            replace(self.settings, output_dir=self.tmp / "respond"), problems, calendar=WorkingCalendar(), zone=ZONE,
            state_dir=self.tmp, correlator=self.correlator, pseudonymise=self.pseudonymiser,
            directory=lambda: self.directory)
        problems.raise_if_any()

    def apply(self, alerts=(), actions=()):
        with immediate(self.conn):
            return self.correlator.apply(self.conn, alerts, actions)

    def run(self):
        return self.responder.run(self.conn, self.clock())

    def step(self, incident: str, step_id: str):
        from auditd.respond import steps

        return steps.get(self.conn, incident, step_id)
