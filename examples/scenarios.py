"""The scenarios planted in the example log, and the ground truth written for them.

Each scenario is something a responder should hear about, planted by one actor as one
or more lines, each wrong in the scenario's way only (a clerk's payment read is in
their shift, on their own store's customer, and so on). `needs` names the rule kinds a
detector must have to find the scenario; an empty tuple means the per-event rules
(match, entitlement, departed) can. Scenarios whose kinds are not built yet are
planted all the same, so that the behaviour rules can be graded against this log the
day they land. New scenarios are appended to SCENARIOS; existing ones keep their names.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from generate import Act, Actor, World

SCENARIOS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (name, rule kinds that can find it; empty: the per-event rules)
    ("departed_access", ()),
    ("category_not_granted", ()),
    ("out_of_scope", ()),
    ("missing_purpose", ()),
    ("unmask_without_grant", ()),
    ("share_beyond_allowance", ()),
    ("export_outside_mainland", ()),
    ("bulk_export", ()),
    ("off_shift", ()),
    ("dpo_outside_request", ()),
    ("night_scraping", ("threshold", "baseline")),
    ("id_enumeration", ("threshold",)),
    ("first_category", ("first_seen",)),
    ("export_burst", ("baseline",)),
)
HOUR = 3_600_000
MINUTE = 60_000


@dataclass(frozen=True)
class PlantedEvent:
    scenario: int  # index into the scenario list
    actor: "Actor"
    t_ms: int
    act: "Act"
    store: int | None = None  # whose customer: None is the actor's usual choice
    customer: int | None = None  # this very customer number
    ip: str | None = None  # instead of the actor's workstation


@dataclass
class Scenario:
    name: str
    needs: tuple[str, ...]
    actor: "Actor"
    description: str
    events: list[PlantedEvent] = field(default_factory=list)


def plant(world: "World", actors: list["Actor"], per_kind: int, rng: random.Random,
          model: Any) -> tuple[list[Scenario], list[PlantedEvent]]:
    """`model` is the generator module (its Act, ROLE_ACTS, RATE_PER_HOUR, CUSTOMERS)."""
    planter = Planter(world, actors, rng, model)
    scenarios: list[Scenario] = []
    for name, needs in SCENARIOS:
        for i in range(per_kind):
            made = getattr(planter, name)(i)
            if made is None:
                print(f"generate: no way to plant {name!r} in this range; skipped", file=sys.stderr)
                continue
            actor, description, events = made
            index = len(scenarios)
            scenario = Scenario(name, needs, actor, description)
            scenario.events = [PlantedEvent(index, actor, t, act, **extra) for t, act, extra in events]
            scenarios.append(scenario)
    return scenarios, [e for s in scenarios for e in s.events]


Made = tuple["Actor", str, list[tuple[int, "Act", dict[str, Any]]]]


class Planter:
    """One method per scenario; each returns (actor, description, [(time, act, extra)])."""

    def __init__(self, world: "World", actors: list["Actor"], rng: random.Random, model: Any):
        self.Act, self.role_acts, self.model = model.Act, model.ROLE_ACTS, model
        self.world, self.actors, self.rng = world, actors, rng
        self.working: dict[str, list[Actor]] = {}
        for actor in actors:
            if actor.spans:
                self.working.setdefault(actor.role, []).append(actor)

    def _pick(self, role: str, i: int | None = None) -> "Actor | None":
        staff = self.working.get(role)
        if not staff:
            return None
        return staff[i % len(staff)] if i is not None else self.rng.choice(staff)

    def _on_shift(self, role: str, min_day: int = 0, room: int = 0) -> tuple["Actor", int] | None:
        """Someone of the role, and a moment inside one of their working spans (on day
        `min_day` or later, with `room` ms of the span still ahead)."""
        staff = list(self.working.get(role, ()))
        self.rng.shuffle(staff)
        first = self.world.t0_ms + min_day * 24 * HOUR
        for actor in staff:
            spans = [(a, b - room) for a, b in actor.spans if a >= first and b - room - a > 20 * MINUTE]
            if spans:
                return actor, _time_in(self.rng.choice(spans), self.rng)
        return None

    # -- outside the grant, or gone: the per-event rules ----------------------------------

    def departed_access(self, i: int) -> Made | None:
        """A leaver reads customers on a ticket in her old shift hours (so not off-shift
        too), from a subnet she never used: HR left her account enabled."""
        world = self.world
        gone = [a for a in self.actors if a.person.departure_ms is not None and a.shifts
                and a.person.departure_ms < world.t1_ms]
        gone.sort(key=lambda a: (not a.person.account_enabled, a.id))
        for actor in gone:
            after = actor.person.departure_ms + MINUTE
            windows = [(max(a, after, world.t0_ms), b - HOUR) for a, b in actor.shifts
                       if b - HOUR - max(a, after, world.t0_ms) > 30 * MINUTE and b <= world.t1_ms]
            if not windows:
                continue
            t = _time_in(windows[(3 * i) % len(windows)], self.rng)
            ip = f"10.88.{self.rng.randrange(1, 250)}.{self.rng.randrange(2, 250)}"
            act = actor.acts[0]
            events = [(t + k * self.rng.randint(5 * MINUTE, 18 * MINUTE), act, {"ip": ip}) for k in range(3)]
            left = dt.datetime.fromtimestamp(actor.person.departure_ms / 1000, world.zone).isoformat(timespec="minutes")
            return actor, (f"{actor.id} ({actor.role}) departed at {left}; three {act.op} on a ticket "
                           f"afterwards, from {ip} (a subnet she never used)"), events
        return None

    def category_not_granted(self, i: int) -> Made | None:
        found = self._on_shift("store_clerk")
        if found is None:
            return None
        clerk, t = found
        return clerk, (f"{clerk.id} (store_clerk) read payment data (property), which store_clerk is not "
                       "granted"), [(t, self.Act("payment.view"), {})]

    def out_of_scope(self, i: int) -> Made | None:
        found = self._on_shift("store_clerk")
        if found is None:
            return None
        clerk, t = found
        others = [s for s, r in enumerate(self.world.store_region) if r != clerk.person.region]
        if not others:
            return None
        other = self.rng.choice(others)
        store, region = self.world.store_ids[other], self.world.store_region[other]
        return clerk, (f"{clerk.id} (store_clerk of {clerk.person.store}, {clerk.person.region}) read a customer "
                       f"of {store} in {region}; the grant is own_store"), [(t, self.Act("customer.view"),
                                                                              {"store": other})]

    def missing_purpose(self, i: int) -> Made | None:
        found = self._on_shift("cs_agent")
        if found is None:
            return None
        agent, t = found
        return agent, (f"{agent.id} (cs_agent) read a customer with neither ticket nor purpose; the grant "
                       "requires one"), [(t, self.Act("customer.view"), {})]

    def unmask_without_grant(self, i: int) -> Made | None:
        found = self._on_shift("store_clerk")
        if found is None:
            return None
        clerk, t = found
        act = self.Act("customer.unmask", masked=False) if i % 2 == 0 else self.Act("customer.view", masked=False)
        return clerk, (f"{clerk.id} (store_clerk) saw a customer's phone unmasked ({act.op}); no unmask "
                       "grant"), [(t, act, {})]

    def share_beyond_allowance(self, i: int) -> Made | None:
        found = self._on_shift("dispatcher")
        if found is None:
            return None
        disp, t = found
        act = self.Act("customer.share", masked=False, purposes=("delivery",), ticket="O", dest="P-LOGI",
                       fields=("name", "phone", "address", "birthday", "gender"))
        return disp, (f"{disp.id} (dispatcher) shared birthday and gender with P-LOGI, which may receive "
                      "name, phone, address only"), [(t, act, {})]

    def export_outside_mainland(self, i: int) -> Made | None:
        found = self._on_shift("analyst")
        if found is None:
            return None
        analyst, t = found
        act = self.Act("order.export", count=(200, 800), purposes=("sales-analysis",), dest="offshore")
        return analyst, (f"{analyst.id} (analyst) exported orders to bi-backup.example.sg (SG), outside "
                         "mainland China"), [(t, act, {})]

    def bulk_export(self, i: int) -> Made | None:
        """Tens of thousands of customers at once (normal exports: at most 800): within the
        analyst's grant, and every other time of points data, which it does not cover."""
        found = self._on_shift("analyst")
        if found is None:
            return None
        analyst, t = found
        if i % 2 == 0:
            act = self.Act("customer.export", count=(40_000, 90_000), purposes=("membership-analysis",), dest="bi")
            what = "customers' records"
        else:
            act = self.Act("customer.export", count=(40_000, 90_000), purposes=("membership-analysis",), dest="bi",
                           res_type="points", fields=("points", "balance", "coupons"))
            what = "customers' points and balances (property), which the analyst role is not granted"
        return analyst, f"{analyst.id} (analyst) exported tens of thousands of {what} at once", [(t, act, {})]

    def off_shift(self, i: int) -> Made | None:
        clerk = self._pick("store_clerk")
        if clerk is None:
            return None
        worked = self.rng.choice(clerk.spans)  # 03:xx of a day they work: employed, just not on shift
        day = self.world.day_of(worked[0])
        t = self.world.local_ms(day, 3 * 60) + int(self.rng.random() * HOUR)
        return clerk, f"{clerk.id} (store_clerk) read a customer at 03:xx, far outside their shift", [
            (t, self.Act("customer.view"), {})]

    def dpo_outside_request(self, i: int) -> Made | None:
        """The DPO's entitled work raises nothing; the same person without a data-subject
        request, or outside her grant, does."""
        found = self._on_shift("dpo")
        if found is None:
            return None
        dpo, t = found
        if i % 2 == 0:
            act = self.Act("face.view", masked=False, purposes=("internal-review",), ticket="INC")
            return dpo, f"{dpo.id} (dpo) read a customer's face data for an internal review, not a " \
                        "data-subject request", [(t, act, {})]
        act = self.Act("customer.share", masked=False, purposes=("data-subject-request",), ticket="DSR",
                       dest="P-LOGI")
        return dpo, f"{dpo.id} (dpo) shared a customer's contact data with P-LOGI; her grant has no share", [
            (t, act, {})]

    # -- behaviour: the kinds a later issue adds -------------------------------------------

    def night_scraping(self, i: int) -> Made | None:
        """Hundreds of customers one by one between midnight and three, each on a (made-up)
        ticket: every line is entitled; the hour and the volume are not normal."""
        agent = self._pick("cs_agent", i)
        if agent is None:
            return None
        day = self.world.start + dt.timedelta(days=1 + (2 * i) % max(1, self.world.days - 1))
        t = self.world.local_ms(day, 30) + self.rng.randrange(0, HOUR)
        act = self.role_acts["cs_agent"][0]
        events = []
        for _ in range(self.rng.randint(150, 250)):
            events.append((t, act, {}))
            t += self.rng.randint(15_000, 45_000)
        return agent, f"{agent.id} (cs_agent) read {len(events)} customers one by one after midnight", events

    def id_enumeration(self, i: int) -> Made | None:
        """Customers C…n, n+1, n+2, … in order, on shift, each on a ticket."""
        found = self._on_shift("cs_agent", room=HOUR)
        if found is None:
            return None
        agent, t = found
        first = self.rng.randrange(1, self.model.CUSTOMERS - 500)
        act = self.role_acts["cs_agent"][0]
        events = []
        for k in range(self.rng.randint(120, 180)):
            events.append((t, act, {"customer": first + k}))
            t += self.rng.randint(8_000, 20_000)
        return agent, f"{agent.id} (cs_agent) read {len(events)} customers with consecutive ids", events

    def first_category(self, i: int) -> Made | None:
        """Finance never reads customers' identity; after four days of history, one does
        (entitled: finance may, with a purpose)."""
        staff = self.working.get("finance", [])
        first = self.world.t0_ms + 4 * 24 * HOUR
        for k in range(len(staff)):  # the i-th, or the next one who works late in the range
            finance = staff[(i + k) % len(staff)]
            spans = [s for s in finance.spans if s[0] >= first and s[1] - s[0] > HOUR]
            if spans:
                break
        else:
            return None
        act = self.Act("customer.view", purposes=("refund-verification",), ticket="REF",
                       fields=("name", "member_level"))
        return finance, f"{finance.id} (finance) read a customer's identity data, a category never used " \
                        "before", [(_time_in(self.rng.choice(spans), self.rng), act, {})]

    def export_burst(self, i: int) -> Made | None:
        """A store manager exports ten times as often in one shift as the model's norm;
        each export is entitled and small."""
        staff = self.working.get("store_manager", [])
        first = self.world.t0_ms + 3 * 24 * HOUR
        for k in range(len(staff)):
            manager = staff[(3 * i + 1 + k) % len(staff)]
            spans = [s for s in manager.spans if s[0] >= first and s[1] - s[0] > 4 * HOUR]
            if spans:
                break
        else:
            return None
        a, b = self.rng.choice(spans)
        acts = self.role_acts["store_manager"]
        export = next(x for x in acts if x.op == "customer.export")
        norm = self.model.RATE_PER_HOUR["store_manager"] * export.weight / sum(x.weight for x in acts) * (b - a) / HOUR
        n = max(10, round(10 * norm))
        times = sorted(a + 15 * MINUTE + self.rng.randrange(0, b - a - 30 * MINUTE) for _ in range(n))
        return manager, f"{manager.id} (store_manager) made {n} exports in one shift, ten times the norm " \
                        f"({norm:.1f})", [(t, export, {}) for t in times]


def _time_in(span: tuple[int, int], rng: random.Random) -> int:
    a, b = span
    margin = min(10 * MINUTE, (b - a) // 4)  # not at the very edge of a shift
    return a + margin + int(rng.random() * (b - a - 2 * margin))


def truth_rows(world: "World", scenarios: list[Scenario], planted: list[PlantedEvent],
               located: dict[int, tuple[str, int, int]], prefix: str, model: int) -> Iterable[dict[str, Any]]:
    """One row per scenario; event ids as neo-auditd makes them ('<prefix>:<byte offset>')."""
    where: dict[int, list[tuple[str, int, int]]] = {}
    for index, event in enumerate(planted):
        where.setdefault(event.scenario, []).append(located[index])
    for index, scenario in enumerate(scenarios):
        lines = sorted(where[index], key=lambda x: x[1])
        times = sorted(e.t_ms for e in scenario.events)
        yield {
            "scenario": scenario.name,
            "actor": scenario.actor.id,
            "time": world.stamp(times[0]),
            "until": world.stamp(times[-1]),
            "event_ids": [f"{prefix}:{offset}" for _, _, offset in lines],
            "reqs": [req for req, _, _ in lines],
            "lines": [line for _, line, _ in lines],
            "needs": list(scenario.needs),
            "description": scenario.description,
            "model": model,
        }
