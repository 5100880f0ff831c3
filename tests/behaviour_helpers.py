"""Helpers for the behaviour kinds' tests: a rule set over a store-backed state, events
at chosen times (the kinds' only clock), and the batch's commit."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from auditd.config.located import Problems
from auditd.detect import KindContext, load_rules
from auditd.detect.ruleset import RuleSet
from auditd.detect.state import StateStore
from auditd.event import AccessEvent
from auditd.store.migrations import migrate

ZONE = dt.timezone(dt.timedelta(hours=8))
T0 = dt.datetime(2026, 11, 2, 10, 0, tzinfo=ZONE)  # a Monday, 10:00 in Shanghai


def memory_conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    return conn


def rules_from(tmp_path: Path, text: str, conn: sqlite3.Connection, *, name: str = "behaviour.yaml",
               extra: dict[str, str] | None = None, calendar=None) -> tuple[RuleSet, StateStore]:
    """A rule set from rule texts in a fresh folder, its state bound to `conn`: a new
    call with the same connection is a restart (or a reload) of the daemon."""
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    for other, body in (extra or {}).items():
        (folder / other).write_text(body)
    state = StateStore()
    state.bind(conn)
    problems = Problems()
    rules = load_rules([folder], problems, context=KindContext(state=state, calendar=calendar))
    problems.raise_if_any()
    return rules, state


def commit(conn: sqlite3.Connection, state: StateStore) -> None:
    conn.execute("BEGIN IMMEDIATE")
    state.flush(conn)
    conn.execute("COMMIT")


def ev(at: dt.datetime | dt.timedelta, eid: str, *, user: str = "E1", action: str = "read", **kw) -> AccessEvent:
    when = T0 + at if isinstance(at, dt.timedelta) else at
    return AccessEvent(timestamp=when.astimezone(dt.timezone.utc), action=action, user_id=user, event_id=eid, **kw)


def minutes(n: float) -> dt.timedelta:
    return dt.timedelta(minutes=n)


def run(rules: RuleSet, events: list[AccessEvent]) -> list:
    return rules.evaluate_all(events)


def daemon_config(tmp_path: Path, rules: dict[str, str]) -> Path:
    """A daemon's folder: a pseudonym key, an empty logs/, the given rule files in rules.d/,
    and a config that tails logs/access.log quickly in small batches."""
    from auditd.enrich.pseudonym import create_key_file

    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "logs").mkdir()
    (tmp_path / "rules.d").mkdir()
    for name, text in rules.items():
        (tmp_path / "rules.d" / name).write_text(text)
    config = tmp_path / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n    poll_interval_s: 0.05\n"
        "pseudonym:\n  key_file: pseudonym.key\n"
        "rules:\n  include_shipped: false\n  paths: [rules.d]\n"
        "pipeline: {batch_records: 37}\n"
        "ops:\n  metrics: {enabled: false}\n")
    return config
