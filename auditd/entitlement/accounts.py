"""The account-status feed: whether each employee's account is enabled, and since when.

HR cancels a leaver's id, and IT their account, within 3 working days; the departed
sweep checks that against what the account systems say. They say it in a file the
identity system exports (or appends to), CSV with a header or JSON lines, one
observation per line::

    user_id,enabled,as_of
    E10046,true,2026-11-03T08:00:00+08:00

    {"user_id": "E10046", "enabled": false, "as_of": "2026-11-06T17:20:00+08:00"}

Several lines per user make a history; the latest at or before a moment is the state
then. A time without an offset is in the company's zone. The feed is operational data,
not configuration: a bad line is skipped and reported (file:line) rather than stopping
the sweep, so one malformed export line cannot hide every other leaver.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditd.config.located import read_regular_file
from auditd.config.typed import DEFAULT_ZONE
from auditd.errors import NeoError

log = logging.getLogger("neo_auditd.entitlement")

_BOOLS = {"true": True, "yes": True, "1": True, "y": True, "false": False, "no": False, "0": False, "n": False}


class AccountFeedError(NeoError):
    """The feed file cannot be read at all."""


@dataclass(frozen=True, slots=True)
class AccountState:
    user_id: str
    enabled: bool
    as_of: dt.datetime  # aware
    source: str  # where the observation comes from, e.g. 'accounts.csv:14'


@dataclass(slots=True)
class AccountFeed:
    """Observations per user, in time order."""

    states: dict[str, list[AccountState]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # skipped lines, 'file:line: why'

    @classmethod
    def of(cls, observations: Iterable[AccountState]) -> AccountFeed:
        feed = cls()
        for state in observations:
            feed.states.setdefault(state.user_id, []).append(state)
        for history in feed.states.values():
            history.sort(key=lambda s: s.as_of)
        return feed

    def __contains__(self, user_id: object) -> bool:
        return user_id in self.states

    def state_at(self, user_id: str, when: dt.datetime) -> AccountState | None:
        """The latest observation at or before `when`, or None if there is none."""
        history = self.states.get(user_id)
        if not history:
            return None
        i = bisect.bisect_right([s.as_of for s in history], when)
        return history[i - 1] if i else None

    def last_enabled_between(self, user_id: str, start: dt.datetime, end: dt.datetime) -> AccountState | None:
        """The last observation in [start, end] that saw the account enabled: proof that
        it was still live then (a later "disabled" only says it was gone by that time)."""
        found = None
        for state in self.states.get(user_id, ()):
            if start <= state.as_of <= end and state.enabled:
                found = state
        return found


MAX_FEED_BYTES = 256 * 1024 * 1024  # an account per line: millions of accounts


def load_account_feed(path: Path | str, *, zone: dt.tzinfo = DEFAULT_ZONE) -> AccountFeed:
    """Read a CSV (``.csv``) or JSON-lines feed; raises AccountFeedError if unreadable."""
    path = Path(path)
    try:  # a regular file only, opened without blocking: a FIFO named here cannot hang the sweep
        text = read_regular_file(path, MAX_FEED_BYTES)[0].decode("utf-8-sig")
    except OSError as exc:
        raise AccountFeedError(f"cannot read account feed {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise AccountFeedError(f"cannot read account feed {path}: {exc}") from None
    is_csv = path.suffix.lower() == ".csv" or not text.lstrip().startswith("{")
    rows = _csv_rows(text) if is_csv else _json_rows(text)
    observations, problems = [], []
    for line, row in rows:
        where = f"{path}:{line}"
        try:
            observations.append(_state(row, where, zone))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    feed = AccountFeed.of(observations)
    feed.problems = problems
    if problems:
        log.warning("account feed lines skipped", extra={"file.path": str(path), "skipped": len(problems),
                                                         "first": problems[0]})
    return feed


def _csv_rows(text: str) -> Iterable[tuple[int, Any]]:
    reader = csv.DictReader(text.splitlines())
    for row in reader:
        if any((v or "").strip() for v in row.values() if isinstance(v, str)):
            yield reader.line_num, row


def _json_rows(text: str) -> Iterable[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError:
            yield number, None


def _state(row: Any, where: str, zone: dt.tzinfo) -> AccountState:
    if not isinstance(row, dict):
        raise ValueError("expected an object with user_id, enabled and as_of")
    user_id = str(row.get("user_id") or "").strip()
    if not user_id:
        raise ValueError("no user_id")
    enabled = row.get("enabled")
    if isinstance(enabled, str):
        enabled = _BOOLS.get(enabled.strip().lower())
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be true or false, got {row.get('enabled')!r}")
    try:
        as_of = dt.datetime.fromisoformat(str(row.get("as_of") or "").strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"as_of must be an ISO 8601 time, got {row.get('as_of')!r}") from None
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=zone)
    return AccountState(user_id, enabled, as_of, where)
