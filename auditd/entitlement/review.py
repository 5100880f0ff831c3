"""Unused grants: which grants, per role and per employee, nobody exercised in a period.

Least privilege is also about taking access away (DESIGN.md, Rules). A grant is
exercised by a stored access whose (category, action) it covers, made by someone
holding its role at that moment (the roles the enrich stage recorded on the event),
that the application did not deny and that the entitlement check did not reject: an
access outside the grants exercises none of them. When several roles of one person
cover the same access, each is credited, so a grant is never called unused while it
may have been the one relied upon.

    review = review_grants(store, directory, since=now - 90 days, now=now)
    print(render_grant_review(review))             # a table for people
    print(render_grant_review(review, as_json=True))

Events are read with one SQL query over the store's event segments (by their time
bounds) and a partial msgpack decode of the few fields needed (`stored_view`), not as full
AccessEvents.
"""

from __future__ import annotations

import datetime as dt
import logging
import unicodedata
from collections import Counter
from typing import Any

import msgspec

from auditd.config.typed import DEFAULT_ZONE
from auditd.directory.model import ACTIVE, Directory, Grant, Role
from auditd.entitlement.checker import DATA_ACTIONS
from auditd.event import stored_view
from auditd.store.encoding import segment_decoder
from auditd.store.times import to_db

Pair = tuple[str, str]  # (category, action)
log = logging.getLogger("neo_auditd.entitlement")


class GrantUsage(msgspec.Struct, kw_only=True):
    index: int  # position among the role's grants in the directory file
    categories: tuple[str, ...]
    actions: tuple[str, ...]
    scope: str
    exercised: dict[str, int]  # 'category:action' -> accesses, for the pairs used
    unused: list[str]  # 'category:action' pairs nobody used

    @property
    def used(self) -> bool:
        return bool(self.exercised)


class RoleUsage(msgspec.Struct, kw_only=True):
    role: str
    holders: int  # active employees holding it at the end of the period
    accesses: int  # accesses credited to the role's grants
    grants: list[GrantUsage]


class EmployeeUsage(msgspec.Struct, kw_only=True):
    user_id: str
    name: str
    roles: list[str]  # held at the end of the period
    exercised: dict[str, int]
    unused: list[str]


class GrantReview(msgspec.Struct, kw_only=True):
    since: dt.datetime
    until: dt.datetime
    events: int  # data accesses read
    roles: list[RoleUsage]
    employees: list[EmployeeUsage]


# the part of a stored event the review reads; msgspec leaves the other fields undecoded
_Use = stored_view("_Use", ("timestamp", "action", "outcome", "user_id", "user_roles", "categories",
                            "entitlement_granted"))
_decode_segment = segment_decoder(_Use)


def review_grants(store: Any, directory: Directory, since: dt.datetime, now: dt.datetime) -> GrantReview:
    """Grants exercised and not, per role and per employee, for accesses in [since, now).

    `store` is the daemon's Store, or an sqlite3 connection to its file (a scheduled
    job's own, read-only one); times are aware."""
    uses, events = _read_uses(getattr(store, "conn", store), since, now)
    by_role: dict[str, Counter[Pair]] = {role_id: Counter() for role_id in directory.roles}
    by_employee: dict[str, Counter[Pair]] = {}
    for (user_id, role_ids, action, categories), n in uses.items():
        roles = [directory.roles[r] for r in role_ids if r in directory.roles]
        for category in categories:
            covering = [r for r in roles if (category, action) in r.by_category_action]
            for role in covering:
                by_role[role.id][(category, action)] += n
            if covering and user_id is not None:
                by_employee.setdefault(user_id, Counter())[(category, action)] += n
    views = [directory.employee_as_of(uid, now) for uid in sorted(directory.employees)]
    active = [v for v in views if v is not None and v.status == ACTIVE]
    holders = Counter(role.id for v in active for role in v.roles)
    roles = [_role_usage(role, by_role[role.id], holders[role.id]) for role in directory.roles.values()]
    employees = [
        _employee_usage(v.id, v.name, v.roles, by_employee.get(v.id, Counter())) for v in active
    ]
    return GrantReview(since=since, until=now, events=events, roles=roles, employees=employees)


def _read_uses(conn: Any, since: dt.datetime, now: dt.datetime) -> tuple[Counter, int]:
    """(user, roles, action, categories) -> accesses that may exercise a grant; and how
    many data accesses were read. Events are stored as one msgpack array per committed
    batch (`event_segments`); only segments that straddle the period's bounds have
    their events' times compared."""
    lo, hi = to_db(since), to_db(now)
    sql = "SELECT first_ts, last_ts, doc FROM event_segments WHERE last_ts >= ? AND first_ts < ?"
    uses: Counter = Counter()
    events = 0
    for first, last, doc in conn.execute(sql, (lo, hi)):
        batch = _decode_segment(doc)
        if not (lo <= first and last < hi):
            batch = [u for u in batch if since <= u.timestamp < now]
        for use in batch:
            if use.action not in DATA_ACTIONS:
                continue
            events += 1
            if use.outcome == "denied" or use.entitlement_granted is False:
                continue  # refused by the application, or outside the grants: exercises nothing
            uses[(use.user_id, use.user_roles, use.action, use.categories)] += 1
    return uses, events


def _pairs(grant: Grant) -> list[Pair]:
    return [(c, a) for c in grant.categories for a in grant.actions]


def _key(pair: Pair) -> str:
    return f"{pair[0]}:{pair[1]}"


def _role_usage(role: Role, used: Counter[Pair], holders: int) -> RoleUsage:
    grants = []
    for i, grant in enumerate(role.grants):
        pairs = _pairs(grant)
        grants.append(GrantUsage(
            index=i, categories=grant.categories, actions=grant.actions, scope=grant.scope,
            exercised={_key(p): used[p] for p in pairs if used[p]},
            unused=[_key(p) for p in pairs if not used[p]],
        ))
    return RoleUsage(role=role.id, holders=holders, accesses=sum(used.values()), grants=grants)


def _employee_usage(user_id: str, name: str, roles: tuple[Role, ...], used: Counter[Pair]) -> EmployeeUsage:
    granted = {p for role in roles for grant in role.grants for p in _pairs(grant)}
    return EmployeeUsage(
        user_id=user_id, name=name, roles=[r.id for r in roles],
        exercised={_key(p): used[p] for p in sorted(granted) if used[p]},
        unused=[_key(p) for p in sorted(granted) if not used[p]],
    )


# -- rendering ---------------------------------------------------------------------------------

def render_grant_review(review: GrantReview, *, as_json: bool = False, zone: dt.tzinfo = DEFAULT_ZONE) -> str:
    """A readable report (roles, then employees with unused grants), or JSON."""
    if as_json:
        return msgspec.json.format(msgspec.json.encode(review), indent=2).decode()
    since, until = (t.astimezone(zone).strftime("%Y-%m-%d %H:%M") for t in (review.since, review.until))
    lines = [f"Grant review {since} .. {until} ({zone}): {review.events:,} data accesses read", "",
             "Roles (a grant is unused when no category:action pair of it was exercised)"]
    lines += _table(["role", "holders", "grant", "scope", "exercised", "unused"], _role_rows(review))
    idle = [e for e in review.employees if e.unused]
    lines += ["", f"Employees with grants they did not use ({len(idle)} of {len(review.employees)} active)"]
    rows = [[e.user_id, e.name, ",".join(e.roles), str(sum(e.exercised.values())), _clip(", ".join(e.unused), 60)]
            for e in idle]
    lines += _table(["employee", "name", "roles", "accesses", "unused category:action"], rows)
    return "\n".join(lines)


def _role_rows(review: GrantReview) -> list[list[str]]:
    rows = []
    for role in review.roles:
        for grant in role.grants:
            what = f"#{grant.index} {'/'.join(grant.categories)} × {'/'.join(grant.actions)}"
            exercised = ", ".join(f"{k}={n:,}" for k, n in sorted(grant.exercised.items(), key=lambda kv: -kv[1]))
            unused = "ALL (unused grant)" if not grant.exercised else ", ".join(grant.unused) or "-"
            rows.append([role.role, str(role.holders), _clip(what, 48), grant.scope, _clip(exercised or "-", 40),
                         _clip(unused, 40)])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    widths = [max(_width(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths)).rstrip()
            for row in [header, *rows]]


def _width(text: str) -> int:
    """Columns on a terminal: names such as 店员甲 take two per character."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"
