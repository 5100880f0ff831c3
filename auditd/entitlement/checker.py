"""The least-privilege check: is this access within the grants the actor held then?

Runs in the enrich stage, after the directory join and before pseudonymisation (the
`assigned` scope looks up raw order and ticket ids), and writes two facts on each
event: `entitlement_granted` (True, False, or None when it could not judge) and
`entitlement_reason` (``"<code>: <detail>"``, see `reasons.py`).

As of the event's time: the enricher has already put on the event the roles valid at
that moment (``user.roles``), the status then (``neo.actor.status``) and the actor's
store and region, computed once per employee and local day (and per event on a day
when the record changes, e.g. a departure at 18:00). The checker keys its grant tables
by that role set, so a promotion yesterday or a role ending at noon is judged by what
was valid at the access, and employees who share roles share the tables.

Fast: for each (roles, action, categories) the covering grants are reduced once into a
`Plan` — either a fixed denial (category or action not granted) or, per category, the
distinct (scope, purpose required, unmask) options, cheapest first. An ordinary access
costs a dict lookup and a comparison or two; the words of a denial are only composed
when an access fails.

The order of judgement, which decides the reason when several apply: the actor
(unknown, departed, inactive); the category; the action; the scope; the purpose; the
unmasking; then for exports and shares the destination (partner known, country,
network) and the partner's field allowance.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from auditd.config.typed import DEFAULT_ZONE
from auditd.directory.model import (
    ACTIVE,
    NOT_YET_HIRED,
    SUSPENDED,
    Directory,
    Partner,
    Role,
)
from auditd.entitlement.assignments import AssignmentLookup, AssignmentLookupError
from auditd.entitlement.reasons import (
    ACTION_NOT_GRANTED,
    ACTOR_INACTIVE,
    CATEGORY_NOT_GRANTED,
    DEPARTED,
    DESTINATION_NOT_ALLOWED,
    OUT_OF_SCOPE,
    PURPOSE_MISSING,
    SCOPE_UNVERIFIED,
    SHARE_FIELDS_BEYOND_ALLOWANCE,
    UNKNOWN_ACTOR,
    UNMASKED_WITHOUT_GRANT,
    reason,
)
from auditd.event import AccessEvent

DATA_ACTIONS = frozenset({"read", "search", "list", "export", "download", "print", "update", "delete", "unmask",
                          "share"})
EGRESS_ACTIONS = frozenset({"export", "download", "share"})  # the data goes somewhere: check where
# cheapest scope test first; `assigned` may cost a lookup
_SCOPE_COST = {"all": 0, "own_store": 1, "own_region": 1, "assigned": 3}
MAX_PLANS = 65536  # (roles, action, categories) combinations; reached only by odd logs


@dataclass(frozen=True, slots=True)
class Option:
    """One way a grant can allow an access: all three conditions must hold."""

    scope: str
    purpose_required: bool
    unmask: bool


@dataclass(frozen=True, slots=True)
class Plan:
    denial: str | None  # a reason that holds whatever the record: category or action not granted
    options: tuple[tuple[str, tuple[Option, ...]], ...] = ()  # per category, cheapest first
    egress: bool = False


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Where exports, downloads and shares to no partner may go."""

    countries: tuple[str, ...] = ("CN",)  # PI stays in mainland China
    networks: tuple[str, ...] = ()  # empty: destination addresses are not checked


class _Unverified(Exception):
    """The assignment lookup could not answer: the access is left unjudged."""


class EntitlementChecker:
    def __init__(self, directory: Directory | None = None, *, assignments: AssignmentLookup | None = None,
                 destinations: DestinationPolicy = DestinationPolicy(),
                 pseudonymise: Callable[[str], str] | None = None, zone: dt.tzinfo = DEFAULT_ZONE):
        """`pseudonymise` renders the order, ticket or customer ids a reason mentions
        (the enrich stage's Pseudonymiser); without it reasons name no such id at all."""
        self.assignments = assignments
        self.destinations = destinations
        self._networks = _parse_networks(destinations.networks)
        self.pseudonymise = pseudonymise
        self.zone = zone
        self.checked = self.denied = self.unverified = 0  # for metrics
        self.set_directory(directory)

    def set_directory(self, directory: Directory | None) -> None:
        """Swap in a reloaded directory; plans made from the old one are dropped."""
        self.directory = directory
        self._plans: dict[tuple[tuple[str, ...], str, tuple[str, ...]], Plan] = {}
        self._partner_networks: dict[str, tuple[tuple[int, int, int], ...]] = {}

    # -- the hot path ------------------------------------------------------------------------
    def check(self, events: Iterable[AccessEvent]) -> None:
        """Judge every event of a batch in place (the enricher's facts must be on them)."""
        if self.directory is None:
            return
        plans = self._plans
        for ev in events:
            known = ev.actor_known
            if known is None:
                continue  # not joined with the directory: nothing to judge by
            self.checked += 1
            if not known or ev.actor_status != ACTIVE:
                self._deny(ev, self._actor_reason(ev))
                continue
            action = ev.action
            if action not in DATA_ACTIONS:
                ev.entitlement_granted = True  # login, logout, grant, revoke by an active employee
                continue
            cats = ev.categories
            if not cats:
                continue  # touches no PI category: nothing to judge
            key = (ev.user_roles, action, cats)
            plan = plans.get(key)
            if plan is None:
                plan = self._plan(key)
            try:
                why = self._judge(ev, plan)
            except _Unverified as exc:
                self.unverified += 1
                ev.entitlement_reason = reason(SCOPE_UNVERIFIED, str(exc))
                continue
            if why is None:
                ev.entitlement_granted = True
            else:
                self._deny(ev, why)

    def _deny(self, ev: AccessEvent, why: str) -> None:
        self.denied += 1
        ev.entitlement_granted = False
        ev.entitlement_reason = why

    def _judge(self, ev: AccessEvent, plan: Plan) -> str | None:
        if plan.denial is not None:
            return plan.denial
        has_purpose = bool(ev.purpose or ev.ticket)
        unmasked = ev.masked is False
        for category, options in plan.options:
            for option in options:
                if option.purpose_required and not has_purpose:
                    continue
                if unmasked and not option.unmask:
                    continue
                if self._in_scope(option.scope, ev):
                    break
            else:
                return self._why_not(ev, category, options, has_purpose)
        return self._destination(ev) if plan.egress else None

    def _in_scope(self, scope: str, ev: AccessEvent) -> bool:
        if scope == "all":
            return True
        if scope == "own_store":
            return ev.resource_store is not None and ev.resource_store == ev.actor_store
        if scope == "own_region":
            return ev.resource_region is not None and ev.resource_region == ev.actor_region
        if scope == "assigned":
            return self._assigned_to_actor(ev)
        return False  # a scope this checker does not know allows nothing

    def _assigned_to_actor(self, ev: AccessEvent) -> bool:
        if self.assignments is None:
            return False
        for _, key in _lookup_keys(ev):
            try:
                if self.assignments.assignee(key) == ev.user_id:
                    return True
            except AssignmentLookupError as exc:
                raise _Unverified(f"assigned scope: {exc}") from None
        return False

    # -- plans -------------------------------------------------------------------------------
    def _plan(self, key: tuple[tuple[str, ...], str, tuple[str, ...]]) -> Plan:
        role_ids, action, categories = key
        roles = [r for r in (self.directory.roles.get(i) for i in role_ids) if r is not None]
        per_category = []
        plan = None
        for category in categories:
            grants = [g for role in roles for g in role.by_category_action.get((category, action), ())]
            if not grants:
                plan = Plan(denial=_not_granted(roles, action, category))
                break
            options = {Option(g.scope, g.purpose_required, g.unmask) for g in grants}
            ordered = sorted(options, key=lambda o: (_SCOPE_COST.get(o.scope, 9), o.purpose_required, not o.unmask))
            per_category.append((category, tuple(ordered)))
        if plan is None:
            plan = Plan(None, tuple(per_category), action in EGRESS_ACTIONS)
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    # -- reasons (only for accesses that fail) ----------------------------------------------
    def _actor_reason(self, ev: AccessEvent) -> str:
        if not ev.actor_known:
            who = f"employee id {ev.user_id}" if ev.user_id else "an access without an employee id"
            return reason(UNKNOWN_ACTOR, f"{who} is not in the HR directory")
        employee = self.directory.employees.get(ev.user_id or "")
        status = ev.actor_status
        if status == SUSPENDED:
            return reason(ACTOR_INACTIVE, f"{ev.user_id} is suspended in the HR directory")
        if status == NOT_YET_HIRED:
            hired = employee.hired_at.astimezone(self.zone).date() if employee and employee.hired_at else "later"
            return reason(ACTOR_INACTIVE, f"{ev.user_id} is not hired until {hired}")
        detail = f"{ev.user_id} left"
        if employee is not None and employee.departure is not None:
            detail += " at " + employee.departure.astimezone(self.zone).isoformat(timespec="minutes")
        if ev.actor_departed_working_days is not None:
            detail += f", {ev.actor_departed_working_days} working day(s) before this access"
        return reason(DEPARTED, detail)

    def _why_not(self, ev: AccessEvent, category: str, options: tuple[Option, ...], has_purpose: bool) -> str:
        roles = _names(ev.user_roles)
        action = ev.action
        in_scope = [o for o in options if self._in_scope(o.scope, ev)]
        if not in_scope:
            return reason(OUT_OF_SCOPE, self._scope_detail(ev, options))
        if not any(has_purpose or not o.purpose_required for o in in_scope):
            return reason(PURPOSE_MISSING, f"{roles} may {action} {category} data only with a ticket or purpose; "
                                           f"the access gave neither")
        fields = ", ".join(ev.fields) or "sensitive fields"
        return reason(UNMASKED_WITHOUT_GRANT, f"{action} of {category} data returned {fields} unmasked; no grant of "
                                              f"{roles} for it allows unmasking")

    def _scope_detail(self, ev: AccessEvent, options: tuple[Option, ...]) -> str:
        parts = []
        for scope in dict.fromkeys(o.scope for o in options):
            if scope == "own_store":
                parts.append(f"own_store: the record's store is {self._store(ev.resource_store, 'unknown')}, "
                             f"the actor's {self._store(ev.actor_store, 'none')}")
            elif scope == "own_region":
                parts.append(f"own_region: the record's region is {ev.resource_region or 'unknown'}, "
                             f"the actor's {ev.actor_region or 'none'}")
            elif scope == "assigned":
                parts.append("assigned: " + self._assignment_detail(ev))
            else:
                parts.append(f"{scope}: not a scope this version knows")
        return "; ".join(parts)

    def _store(self, store: str | None, missing: str) -> str:
        if store is None:
            return missing
        region = self.directory.store_region(store)
        return f"{store} ({region})" if region else store

    def _assignment_detail(self, ev: AccessEvent) -> str:
        if self.assignments is None:
            return "no assignment lookup is configured"
        keys = _lookup_keys(ev)
        if not keys:
            return "the access names no order, ticket or customer to look up"
        parts = []
        for label, key in keys:
            try:
                who = self.assignments.assignee(key) or "nobody"
            except AssignmentLookupError:
                who = "(lookup failed)"
            shown = f" {self.pseudonymise(key)}" if self.pseudonymise is not None else ""
            parts.append(f"{label}{shown} is assigned to {who}")
        return ", ".join(parts) + f", not to {ev.user_id}"

    # -- destinations ------------------------------------------------------------------------
    def _destination(self, ev: AccessEvent) -> str | None:
        partner_id = ev.destination_partner
        if partner_id is None:
            if ev.action == "share":
                return reason(DESTINATION_NOT_ALLOWED, "the share names no partner")
            return self._place(ev, self.destinations.countries, self._networks, "")
        partner = self.directory.partners.get(partner_id)
        if partner is None:
            return reason(DESTINATION_NOT_ALLOWED, f"partner {partner_id} is not in the directory")
        placed = self._place(ev, partner.countries, self._networks_of(partner), f" for partner {partner_id}")
        if placed is not None:
            return placed
        extra = [f for f in ev.fields if f not in partner.allowed_fields]
        if extra:
            allowed = ", ".join(partner.allowed_fields) or "no fields"
            return reason(SHARE_FIELDS_BEYOND_ALLOWANCE, f"{partner_id} may receive {allowed}; the {ev.action} "
                                                         f"also sent {', '.join(extra)}")
        return None

    def _place(self, ev: AccessEvent, countries: tuple[str, ...], networks: tuple[tuple[int, int, int], ...],
               whose: str) -> str | None:
        country = ev.destination_country
        if country is not None and country not in countries:
            return reason(DESTINATION_NOT_ALLOWED, f"destination country {country} is outside the allowed "
                                                   f"({', '.join(countries) or 'none'}){whose}")
        address = ev.destination_ip
        if address is not None and networks and not _in_networks(address, networks):
            return reason(DESTINATION_NOT_ALLOWED, f"destination {address} is outside the allowed networks{whose}")
        return None

    def _networks_of(self, partner: Partner) -> tuple[tuple[int, int, int], ...]:
        nets = self._partner_networks.get(partner.id)
        if nets is None:
            nets = self._partner_networks[partner.id] = _parse_networks(partner.networks)
        return nets


def _not_granted(roles: list[Role], action: str, category: str) -> str:
    names = _names(tuple(r.id for r in roles))
    actions = sorted({a for r in roles for g in r.grants if category in g.categories for a in g.actions})
    if not actions:
        return reason(CATEGORY_NOT_GRANTED, f"no grant of {names} covers {category} data")
    if action == "unmask":
        return reason(UNMASKED_WITHOUT_GRANT, f"{names} may not unmask {category} data")
    return reason(ACTION_NOT_GRANTED, f"{names} may {', '.join(actions)} {category} data, not {action}")


def _names(role_ids: tuple[str, ...]) -> str:
    if not role_ids:
        return "no role held at the time"
    return "role " + role_ids[0] if len(role_ids) == 1 else "roles " + ", ".join(role_ids)


def _lookup_keys(ev: AccessEvent) -> list[tuple[str, str]]:
    """The ids the `assigned` scope looks up: the record's own id, then the ticket."""
    keys = []
    if ev.resource_id:
        keys.append((ev.resource_type or "record", ev.resource_id))
    if ev.ticket and ev.ticket != ev.resource_id:
        keys.append(("ticket", ev.ticket))
    return keys


def _parse_networks(texts: Iterable[str]) -> tuple[tuple[int, int, int], ...]:
    nets = (ipaddress.ip_network(t, strict=False) for t in texts)
    return tuple((n.version, int(n.network_address), int(n.netmask)) for n in nets)


@lru_cache(maxsize=4096)
def _address(text: str) -> tuple[int, int] | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.version, int(ip)


def _in_networks(text: str, networks: tuple[tuple[int, int, int], ...]) -> bool:
    parsed = _address(text)
    if parsed is None:
        return False  # not an address: in no allowed network
    version, value = parsed
    return any(version == v and value & mask == net for v, net, mask in networks)
