"""Runtime suppressions: the rule files' `exceptions`, for what cannot wait for a rule
change, kept in the store's `suppressions` table and managed by
``neo-auditd suppress add|list|remove``.

A suppression has the fields an exception has — which rule ('*': every rule), which
field values it holds back, an owner, a reason and an expiry — and, like an exception,
applies to events before its expiry (event time, so a replay of old logs judges as the
live run did) and stops by itself after it. The daemon reads the table again whenever
it changes (one cheap query per batch), so `suppress add` takes effect at the next
batch without a reload. A removed suppression keeps its row, with who removed it.

`allowances` lists both kinds together for `status`.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from auditd.detect.resolve import near
from auditd.event import FIELDS, AccessEvent
from auditd.store.sqlite import immediate
from auditd.store.times import from_db, to_db

if TYPE_CHECKING:
    from auditd.detect.ruleset import RuleSet

EVERY_RULE = "*"
_SINGLE = frozenset({"str", "ip", "int", "bool"})


class SuppressionError(ValueError):
    """A suppression that cannot be added: the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Suppression:
    id: int
    rule_id: str
    fields: tuple[str, ...]
    values: tuple[Any, ...]
    owner: str
    reason: str
    created_at: dt.datetime
    expires_at: dt.datetime
    removed_at: dt.datetime | None = None
    removed_by: str | None = None

    def active(self, now: dt.datetime) -> bool:
        return self.removed_at is None and now < self.expires_at


def typed_value(field: str, text: Any) -> Any:
    """A field's value as the event holds it ('3' for neo.data.record_count is 3)."""
    spec = FIELDS.get(field)
    if spec is None or spec.kind not in _SINGLE:
        kind = f"a {spec.kind} field" if spec is not None else "unknown"
        raise SuppressionError(f"field '{field}' cannot be matched: it is {kind}{near(field, FIELDS)}; use one "
                               "with a single value (user.id, source.ip, ...)")
    if spec.kind == "int":
        try:
            return int(text)
        except (TypeError, ValueError):
            raise SuppressionError(f"'{field}' is a number, got {text!r}") from None
    if spec.kind == "bool":
        if isinstance(text, bool):
            return text
        if str(text).lower() not in ("true", "false"):
            raise SuppressionError(f"'{field}' is true or false, got {text!r}")
        return str(text).lower() == "true"
    return str(text)


def add(conn: sqlite3.Connection, *, rule_id: str, match: dict[str, Any], owner: str, reason: str,
        expires_at: dt.datetime, now: dt.datetime, known_rules: Iterable[str] | None = None) -> int:
    """Record a suppression (in its own transaction); its id."""
    if not owner.strip() or not reason.strip():
        raise SuppressionError("a suppression needs an owner and a reason")
    if not match:
        raise SuppressionError("a suppression needs at least one field=value (suppressing a whole rule is "
                               "disabling it: do that in the rule files, reviewed)")
    if expires_at.tzinfo is None:
        raise SuppressionError("the expiry must carry its zone")
    if expires_at <= now:
        raise SuppressionError(f"the expiry {expires_at.isoformat()} is not in the future")
    if known_rules is not None and rule_id != EVERY_RULE:
        known = set(known_rules)
        if rule_id not in known:
            raise SuppressionError(f"no rule '{rule_id}'{near(rule_id, known)}")
    fields = list(match)
    values = [typed_value(f, match[f]) for f in fields]
    with immediate(conn):
        cur = conn.execute(
            "INSERT INTO suppressions (rule_id, fields, match_values, owner, reason, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rule_id, json.dumps(fields), json.dumps(values, ensure_ascii=False), owner.strip(), reason.strip(),
             to_db(now), to_db(expires_at)))
    return int(cur.lastrowid)


def remove(conn: sqlite3.Connection, suppression_id: int, *, by: str, now: dt.datetime) -> bool:
    """Mark a suppression removed; False when there is no such active one."""
    with immediate(conn):
        cur = conn.execute("UPDATE suppressions SET removed_at = ?, removed_by = ? WHERE id = ? AND removed_at IS NULL",
                           (to_db(now), by, suppression_id))
    return cur.rowcount == 1


def read_all(conn: sqlite3.Connection) -> list[Suppression]:
    """Every suppression ever recorded, oldest first ([] in a store from before them)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'suppressions'").fetchone() is None:
        return []
    out = []
    for row in conn.execute("SELECT id, rule_id, fields, match_values, owner, reason, created_at, expires_at,"
                            " removed_at, removed_by FROM suppressions ORDER BY id"):
        sid, rule_id, fields, values, owner, reason, created, expires, removed, removed_by = row
        out.append(Suppression(sid, rule_id, tuple(json.loads(fields)), tuple(json.loads(values)), owner, reason,
                               from_db(created), from_db(expires), from_db(removed) if removed else None,
                               removed_by))
    return out


def version(conn: sqlite3.Connection) -> tuple[int, int]:
    """Changes whenever a suppression is added or removed."""
    try:
        row = conn.execute("SELECT COALESCE(MAX(id), 0), COUNT(removed_at) FROM suppressions").fetchone()
    except sqlite3.OperationalError:  # a store from before suppressions
        return (0, 0)
    return int(row[0]), int(row[1])


SuppressionCheck = Callable[[AccessEvent], "Suppression | None"]


def compile_suppressions(items: Iterable[Suppression]) -> dict[str, SuppressionCheck]:
    """Per rule id (and '*'), a function naming the suppression that holds back an
    alert on an event, or None. Only suppressions not removed are compiled; expiry is
    checked against each event's time."""
    by_rule: dict[str, list[Suppression]] = {}
    for s in items:
        if s.removed_at is None:
            by_rule.setdefault(s.rule_id, []).append(s)
    return {rule_id: _check(group) for rule_id, group in by_rule.items()}


def _check(group: list[Suppression]) -> SuppressionCheck:
    tests = []
    for s in group:
        attrs = tuple(FIELDS[f].attr for f in s.fields)
        values = tuple(typed_value(f, v) for f, v in zip(s.fields, s.values))
        tests.append((attrs, values, s))

    def applying(event: AccessEvent) -> Suppression | None:
        for attrs, values, s in tests:
            if event.timestamp < s.expires_at and all(getattr(event, a) == v for a, v in zip(attrs, values)):
                return s
        return None

    return applying


@dataclass(frozen=True, slots=True)
class Allowance:
    """An exception (rule file) or a suppression (store), as `status` lists them."""

    source: str  # 'rule file' or 'store'
    name: str  # the exception's name, or 'suppression N'
    rule_id: str
    match: str  # 'user.id=E10011, source.ip=10.0.0.1'
    owner: str
    reason: str
    expires: str  # ISO date or time
    where: str  # file:line, or 'store'
    active: bool


def allowances(ruleset: "RuleSet | None", conn: sqlite3.Connection | None, now: dt.datetime,
               zone: dt.tzinfo) -> list[Allowance]:
    """Every exception of the loaded rules and every suppression not removed, each
    with whether it still applies today."""
    out: list[Allowance] = []
    today = now.astimezone(zone).date()
    for rule in ruleset.rules if ruleset is not None else ():
        for exc in rule.spec.exceptions:
            rows = sorted(exc.values, key=repr)
            shown = "; ".join(", ".join(f"{f}={v}" for f, v in zip(exc.fields, row)) for row in rows[:5])
            if len(rows) > 5:
                shown += f"; … {len(rows) - 5} more"
            out.append(Allowance("rule file", exc.name, rule.id, shown, exc.owner, exc.reason,
                                 exc.expires.isoformat(), str(exc.where) if exc.where else "-",
                                 today <= exc.expires))
    for s in read_all(conn) if conn is not None else ():
        if s.removed_at is not None:
            continue
        out.append(Allowance("store", f"suppression {s.id}", s.rule_id,
                             ", ".join(f"{f}={v}" for f, v in zip(s.fields, s.values)), s.owner, s.reason,
                             s.expires_at.astimezone(zone).isoformat(timespec="minutes"), "store", s.active(now)))
    return out
