#!/usr/bin/env python3
"""Generate neo-crm's access log for the example deployment, with planted violations.

    python examples/generate.py --out DIR --lines N --seed S --start 2026-11-02

Writes DIR/access.log in the format of docs/example-access-log.md, and
DIR/ground_truth.jsonl with one line per planted violation: {req, line, kind, user_id,
description}. The staff, their roles, shifts and stores come from
examples/directory.yaml, read with the daemon's own loader, so "normal" here means
exactly what the directory entitles. The same arguments give the same bytes.

Normal traffic: every employee works their shifts (login, accesses, logout) with a
lunch dip; each role has its own mix of operations; store staff touch only their own
store's customers, dispatchers their region's, head-office roles any store's; purposes
and tickets are given wherever a grant requires them. Every normal access is entitled,
so the planted lines are the only violations (the kinds are in `KINDS`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: use the daemon's own directory loader
    sys.path.insert(0, str(REPO))

from auditd.config.located import Problems  # noqa: E402
from auditd.config.typed import DEFAULT_ZONE  # noqa: E402
from auditd.directory import Directory, Employee, RoleAssignment, load_directory  # noqa: E402

DIRECTORY = Path(__file__).resolve().parent / "directory.yaml"
CUSTOMERS = 160_000  # customer n belongs to store index (n - 1) % number of stores
LISTED_SUBJECTS = 50  # the app lists the customer ids of results up to this size only
KINDS = (
    "departed", "category_not_granted", "out_of_scope", "missing_purpose", "unmask_without_grant",
    "share_beyond_allowance", "export_outside_mainland", "bulk_export", "off_shift",
)

# op -> (resource type, fields returned)
OPS = {
    "customer.view": ("customer", ("name", "phone", "gender", "birthday", "member_level")),
    "customer.search": ("customer", ("name", "phone", "member_level")),
    "customer.update": ("customer", ("phone", "address")),
    "customer.unmask": ("customer", ("phone",)),
    "customer.export": ("customer", ("name", "phone", "member_level", "store")),
    "customer.share": ("customer", ("name", "phone", "address")),
    "customer.delete": ("customer", ("name", "phone", "address", "birthday")),
    "order.view": ("order", ("order_id", "items", "amount", "address", "phone")),
    "order.list": ("order", ("order_id", "amount", "status")),
    "order.export": ("order", ("order_id", "amount", "status", "store")),
    "address.view": ("address", ("name", "phone", "address")),
    "payment.view": ("payment", ("txn_id", "amount", "method", "card_last4")),
    "points.view": ("points", ("points", "balance", "coupons")),
    "location.view": ("location", ("lat", "lon", "updated_at")),
    "face.view": ("face", ("face_image",)),
    "report.print": ("order", ("order_id", "items", "amount", "name")),
}
ID_PREFIX = {"customer": "C", "address": "A", "points": "PT", "location": "L", "face": "F"}
DESTS = {
    "bi": {"host": "bi.neo.internal", "ip": "10.10.50.20", "country": "CN"},
    "files": {"host": "files.neo.internal", "ip": "10.10.40.5", "country": "CN"},
    "fin": {"host": "fin-sftp.neo.internal", "ip": "10.10.60.12", "country": "CN"},
    "dsr": {"host": "dsr-portal.neo.internal", "ip": "10.10.70.8", "country": "CN"},
    "P-LOGI": {"partner": "P-LOGI", "host": "sftp.logi.example", "ip": "198.51.100.7", "country": "CN"},
    "P-PAY": {"partner": "P-PAY", "host": "api.pay.example", "ip": "198.51.100.40", "country": "CN"},
    "offshore": {"host": "bi-backup.example.sg", "ip": "203.0.113.50", "country": "SG"},
}
DEST_JSON = {k: json.dumps(v, separators=(",", ":")) for k, v in DESTS.items()}
TICKETS = {"T": "T-2026-{:06d}", "REF": "REF-2026-{:06d}", "O": "O{:010d}", "DSR": "DSR-2026-{:05d}",
           "INC": "INC-2026-{:05d}"}


@dataclass(frozen=True)
class Act:
    """One kind of access a role makes, with what its grant needs (purpose, ticket)."""

    op: str
    weight: int = 1
    count: tuple[int, int] = (1, 1)
    masked: bool = True
    purposes: tuple[str, ...] = ()
    ticket: str | None = None  # a key of TICKETS
    dest: str | None = None  # a key of DESTS
    fields: tuple[str, ...] | None = None  # instead of the op's usual fields
    res_type: str | None = None  # instead of the op's usual resource type


CS = dict(purposes=("after-sales", "complaint", "refund", "delivery-query"), ticket="T")
ROLE_ACTS: dict[str, tuple[Act, ...]] = {
    "store_clerk": (
        Act("customer.view", 30), Act("customer.search", 15, (1, 12)), Act("order.view", 25),
        Act("order.list", 10, (5, 40)), Act("address.view", 10), Act("customer.update", 6), Act("report.print", 4),
    ),
    "store_manager": (
        Act("customer.view", 20), Act("customer.search", 10, (1, 15)), Act("order.view", 15),
        Act("order.list", 10, (10, 80)), Act("address.view", 5), Act("customer.update", 5), Act("report.print", 5),
        Act("points.view", 8, purposes=("member-care",), ticket="T"),
        Act("payment.view", 8, purposes=("refund",), ticket="REF"),
        Act("customer.export", 2, (20, 300), purposes=("member-event-invitation",), dest="files"),
        Act("customer.unmask", 4, masked=False, purposes=("callback",), ticket="T"),
    ),
    "cs_agent": (
        Act("customer.view", 30, **CS), Act("customer.search", 20, (1, 10), **CS), Act("order.view", 20, **CS),
        Act("order.list", 5, (1, 20), **CS), Act("address.view", 8, **CS), Act("customer.update", 7, **CS),
        Act("payment.view", 5, **CS), Act("points.view", 3, **CS), Act("customer.unmask", 2, masked=False, **CS),
    ),
    "dispatcher": (
        Act("order.list", 25, (10, 60)), Act("order.view", 30), Act("address.view", 20), Act("customer.view", 5),
        Act("location.view", 5, purposes=("delivery",), ticket="O"),
        Act("customer.share", 15, masked=False, purposes=("delivery",), ticket="O", dest="P-LOGI"),
    ),
    "finance": (
        Act("payment.view", 35, purposes=("reconciliation", "refund", "chargeback")), Act("order.view", 20),
        Act("order.list", 15, (20, 200)), Act("points.view", 10, purposes=("reconciliation",)),
        Act("order.export", 3, (100, 800), purposes=("reconciliation",), dest="fin"),
        Act("customer.share", 5, purposes=("payment-settlement",), dest="P-PAY",
            fields=("order_id", "amount", "txn_id"), res_type="payment"),
        Act("customer.view", 5, purposes=("refund-verification",), ticket="REF", fields=("name", "member_level")),
    ),
    "analyst": (
        Act("customer.search", 35, (20, 50)), Act("order.list", 40, (20, 500)),
        Act("order.export", 10, (50, 800), purposes=("sales-analysis",), dest="bi"),
        Act("customer.export", 5, (50, 800), purposes=("membership-analysis",), dest="bi"),
    ),
    "dpo": (
        Act("customer.view", 40, masked=False, purposes=("data-subject-request",), ticket="DSR"),
        Act("customer.search", 15, (1, 5), purposes=("data-subject-request",), ticket="DSR"),
        Act("customer.export", 10, masked=False, purposes=("data-subject-access",), ticket="DSR", dest="dsr"),
        Act("customer.delete", 5, masked=False, purposes=("erasure",), ticket="DSR"),
        Act("payment.view", 10, purposes=("audit",), ticket="DSR"),
        Act("order.list", 10, (1, 30), purposes=("audit",), ticket="DSR"),
        Act("face.view", 5, masked=False, purposes=("audit",), ticket="DSR"),
        Act("location.view", 5, purposes=("audit",), ticket="DSR"),
    ),
    "it_admin": (
        Act("customer.view", 70, purposes=("account-support",), ticket="INC", fields=("name", "member_level")),
        Act("customer.update", 30, purposes=("account-support",), ticket="INC", fields=("member_level",)),
    ),
}
RATE_PER_HOUR = {"store_clerk": 40, "store_manager": 30, "cs_agent": 60, "dispatcher": 45, "finance": 30,
                 "analyst": 20, "dpo": 6, "it_admin": 4}
APP_HOSTS = {"pos": ("pos-api-01", "pos-api-02"), "crm": ("crm-web-01", "crm-web-02", "crm-web-03"),
             "ops": ("ops-web-01", "ops-web-02")}
ROLE_APP = {"store_clerk": "pos", "store_manager": "pos", "dispatcher": "ops"}  # the rest: crm


@dataclass
class Actor:
    emp: Employee
    role: str
    stores: tuple[int, ...]  # store indices whose customers this actor serves
    heads: tuple[str, ...]  # pre-rendered '"app":…,"host":…,' per host
    who: str  # pre-rendered '"emp":{…},"ip":"…",'
    acts: tuple[Act, ...]
    cum_weights: tuple[float, ...]
    spans: list[tuple[int, int]] = field(default_factory=list)  # working spans, epoch ms


@dataclass(frozen=True)
class Planted:
    kind: str
    actor: Actor
    t_ms: int
    act: Act
    customer_store: int | None  # None: the actor's usual choice
    description: str


class World:
    """The company as the generator sees it: stores, staff, the time range."""

    def __init__(self, directory: Directory, start: dt.date, days: int, zone: dt.tzinfo = DEFAULT_ZONE):
        self.directory = directory
        self.zone = zone
        self.start, self.days = start, days
        self.store_ids = sorted(directory.stores)
        self.store_region = [directory.stores[s].region for s in self.store_ids]
        self.t0_ms = self.local_ms(start)
        self.t1_ms = self.local_ms(start + dt.timedelta(days=days))
        self._minute, self._minute_text, self._suffix = -1, "", ""  # stamp()'s cache

    def local_ms(self, day: dt.date, minute: int = 0) -> int:
        local = dt.datetime(day.year, day.month, day.day, tzinfo=self.zone) + dt.timedelta(minutes=minute)
        return int(local.timestamp() * 1000)

    def stamp(self, t_ms: int) -> str:
        """'2026-11-02T09:15:03.123+08:00' for an epoch-ms instant; lines come in time order,
        so the text up to the minute is reused from the previous call most of the time."""
        minute = t_ms // 60_000
        if minute != self._minute:
            local = dt.datetime.fromtimestamp(minute * 60, self.zone)
            off = int(local.utcoffset().total_seconds())
            sign, off_abs = ("+" if off >= 0 else "-"), abs(off)
            self._minute, self._minute_text = minute, local.strftime("%Y-%m-%dT%H:%M:")
            self._suffix = f"{sign}{off_abs // 3600:02d}:{off_abs % 3600 // 60:02d}"
        s, ms = divmod(t_ms % 60_000, 1000)
        return f"{self._minute_text}{s:02d}.{ms:03d}{self._suffix}"


def behaviour_of(role_id: str) -> str | None:
    """The example role whose traffic a directory role makes: its own id, or for a
    variant named '<example role>_<anything>' (store_clerk_07) the example role's, so
    that benchmarks can build directories with many roles from the same behaviours."""
    if role_id in ROLE_ACTS:
        return role_id
    base = max((r for r in ROLE_ACTS if role_id.startswith(r + "_")), key=len, default=None)
    return base


def build_actors(world: World) -> list[Actor]:
    """One actor per employee who held a role in the range (the departed included)."""
    actors = []
    for n, emp in enumerate(sorted(world.directory.employees.values(), key=lambda e: e.id)):
        moment = dt.datetime.fromtimestamp(world.t0_ms / 1000, world.zone)
        if emp.departure is not None and emp.departure <= moment:
            moment = emp.departure - dt.timedelta(seconds=1)  # who they were when they left
        held = [a for a in emp.assignments if a.valid_at(moment) and behaviour_of(a.role.id) is not None]
        if not held:
            continue
        role = behaviour_of(held[0].role.id)
        own = world.store_ids.index(emp.store) if emp.store else None
        if own is not None and role in ("store_clerk", "store_manager"):
            stores = (own,)
        elif role == "dispatcher":
            stores = tuple(i for i, r in enumerate(world.store_region) if r == emp.region)
        else:
            stores = tuple(range(len(world.store_ids)))
        app = ROLE_APP.get(role, "crm")
        if own is not None:
            ip = f"10.{20 + own}.{n % 200 + 10}.{n % 50 + 20}"
        else:
            ip = f"10.10.{n % 30 + 1}.{n % 200 + 20}"
        who = ('"emp":' + json.dumps({"id": emp.id, "name": emp.name}, ensure_ascii=False, separators=(",", ":"))
               + f',"ip":"{ip}",')
        acts = ROLE_ACTS[role]
        cum = tuple(float(sum(a.weight for a in acts[:i + 1])) for i in range(len(acts)))
        heads = tuple(f'"app":"{app}","host":"{h}",' for h in APP_HOSTS[app])
        spans = working_spans(world, emp, held[0])
        actors.append(Actor(emp, role, stores, heads, who, acts, cum, spans))
    return actors


def working_spans(world: World, emp: Employee, held: RoleAssignment) -> list[tuple[int, int]]:
    """The employee's shifts inside the range while employed in this role; none if suspended."""
    if emp.status == "suspended" or emp.shift is None:
        return []
    start_ms, end_ms = world.t0_ms, world.t1_ms
    for bound in (emp.hired_at, held.valid_from):
        if bound is not None:
            start_ms = max(start_ms, int(bound.timestamp() * 1000))
    for bound in (emp.departure, held.valid_until):
        if bound is not None:
            end_ms = min(end_ms, int(bound.timestamp() * 1000))
    spans = set()
    for i in range(world.days):
        for a, b in emp.shift.intervals_on(world.start + dt.timedelta(days=i), world.zone):
            a_ms, b_ms = max(int(a * 1000), start_ms), min(int(b * 1000), end_ms)
            if a_ms < b_ms:
                spans.add((a_ms, b_ms))
    return sorted(spans)


# ---------------------------------------------------------------- normal traffic

LUNCH = (12 * 60, 13 * 60 + 30)  # local minutes: fewer accesses while people eat
LUNCH_KEEP = 0.35
ACCESS, LOGIN, LOGOUT, PLANTED = 0, 1, 2, 3


def encode(t_ms: int, index: int, kind: int) -> int:
    """One int per line, so a million lines sort as plain ints (fast, deterministic)."""
    return (t_ms << 24) | (index << 4) | kind


MAX_INDEX = 0xFFFFF  # actors, and planted lines, that `encode` can number


def schedule_normal(world: World, actors: list[Actor], lines: int, rng: random.Random) -> list[int]:
    """Share `lines` among everyone's shifts by role rate × length; place each in time."""
    spans = [(i, a, b) for i, actor in enumerate(actors) for a, b in actor.spans]
    weights = [RATE_PER_HOUR[actors[i].role] * (b - a) for i, a, b in spans]
    total = sum(weights)
    if not total:
        raise SystemExit("nobody in the directory works in the chosen days")
    counts = [int(lines * w / total) for w in weights]
    for k in rng.choices(range(len(spans)), weights=weights, k=lines - sum(counts)):
        counts[k] += 1
    codes: list[int] = []
    for (i, a, b), count in zip(spans, counts):
        if count >= 3 and b - a > 1_800_000:  # a working session: log in, work, log out
            codes.append(encode(a + int(rng.random() * 300_000), i, LOGIN))
            codes.append(encode(b - 1 - int(rng.random() * 600_000), i, LOGOUT))
            count -= 2
            a, b = a + 300_000, b - 600_000
        off_ms = int(dt.datetime.fromtimestamp(a / 1000, world.zone).utcoffset().total_seconds() * 1000)
        for _ in range(count):
            while True:
                t = a + int(rng.random() * (b - a))
                minute = (t + off_ms) // 60_000 % 1440
                if not LUNCH[0] <= minute < LUNCH[1] or rng.random() < LUNCH_KEEP:
                    break
            codes.append(encode(t, i, ACCESS))
    return codes


# ---------------------------------------------------------------- planted violations

def plant(world: World, actors: list[Actor], per_kind: int, rng: random.Random) -> list[Planted]:
    planter = Planter(world, actors, rng)
    out = []
    for kind in KINDS:
        for i in range(per_kind):
            planted = getattr(planter, kind)(i)
            if planted is None:
                print(f"generate: no way to plant {kind!r} in this range; skipped", file=sys.stderr)
                continue
            out.append(planted)
    return out


class Planter:
    """One method per kind of violation; each line is wrong in that one way only (a clerk's
    payment read is in their shift, on their own store's customer, and so on)."""

    def __init__(self, world: World, actors: list[Actor], rng: random.Random):
        self.world, self.actors, self.rng = world, actors, rng
        self.working: dict[str, list[Actor]] = {}
        for actor in actors:
            if actor.spans:
                self.working.setdefault(actor.role, []).append(actor)

    def _on_shift(self, role: str) -> tuple[Actor, int]:
        actor = self.rng.choice(self.working[role])
        return actor, _time_in(self.rng.choice(actor.spans), self.rng)

    def departed(self, i: int) -> Planted | None:
        """An access inside the leaver's old shift hours (so that it is not off-shift too)."""
        world = self.world
        gone = [a for a in self.actors if a.emp.departure is not None and a.emp.shift is not None
                and a.emp.departure.timestamp() * 1000 < world.t1_ms]
        gone.sort(key=lambda a: (not a.emp.account_enabled, a.emp.id))  # a live account is how it happens
        for actor in gone:
            after = int(actor.emp.departure.timestamp() * 1000) + 60_000
            spans = [(max(a, after), b) for day in range(world.days)
                     for a, b in _shift_ms(world, actor.emp, world.start + dt.timedelta(days=day)) if b > after]
            if spans:
                left = actor.emp.departure.astimezone(world.zone).isoformat(timespec="minutes")
                return Planted("departed", actor, _time_in(self.rng.choice(spans), self.rng), actor.acts[0], None,
                               f"{actor.emp.id} ({actor.role}) departed at {left}; {actor.acts[0].op} afterwards")
        return None

    def category_not_granted(self, i: int) -> Planted:
        clerk, t = self._on_shift("store_clerk")
        return Planted("category_not_granted", clerk, t, Act("payment.view"), None,
                       f"{clerk.emp.id} (store_clerk) read payment data (property), "
                       "which store_clerk is not granted")

    def out_of_scope(self, i: int) -> Planted:
        clerk, t = self._on_shift("store_clerk")
        region = clerk.emp.region
        other = self.rng.choice([s for s, r in enumerate(self.world.store_region) if r != region])
        store, other_region = self.world.store_ids[other], self.world.store_region[other]
        return Planted("out_of_scope", clerk, t, Act("customer.view"), other,
                       f"{clerk.emp.id} (store_clerk of {clerk.emp.store}, {region}) read a customer of "
                       f"{store} in {other_region}; the grant is own_store")

    def missing_purpose(self, i: int) -> Planted:
        agent, t = self._on_shift("cs_agent")
        return Planted("missing_purpose", agent, t, Act("customer.view"), None,
                       f"{agent.emp.id} (cs_agent) read a customer with neither ticket nor purpose; "
                       "the grant requires one")

    def unmask_without_grant(self, i: int) -> Planted:
        clerk, t = self._on_shift("store_clerk")
        act = Act("customer.unmask", masked=False) if i % 2 == 0 else Act("customer.view", masked=False)
        return Planted("unmask_without_grant", clerk, t, act, None,
                       f"{clerk.emp.id} (store_clerk) saw a customer's phone unmasked ({act.op}); no unmask grant")

    def share_beyond_allowance(self, i: int) -> Planted:
        disp, t = self._on_shift("dispatcher")
        act = Act("customer.share", masked=False, purposes=("delivery",), ticket="O", dest="P-LOGI",
                  fields=("name", "phone", "address", "birthday", "gender"))
        return Planted("share_beyond_allowance", disp, t, act, None,
                       f"{disp.emp.id} (dispatcher) shared birthday and gender with P-LOGI, which may receive "
                       "name, phone, address only")

    def export_outside_mainland(self, i: int) -> Planted:
        analyst, t = self._on_shift("analyst")
        act = Act("order.export", count=(200, 800), purposes=("sales-analysis",), dest="offshore")
        return Planted("export_outside_mainland", analyst, t, act, None,
                       f"{analyst.emp.id} (analyst) exported orders to bi-backup.example.sg (SG), "
                       "outside mainland China")

    def bulk_export(self, i: int) -> Planted:
        analyst, t = self._on_shift("analyst")
        act = Act("customer.export", count=(40_000, 90_000), purposes=("membership-analysis",), dest="bi")
        return Planted("bulk_export", analyst, t, act, None,
                       f"{analyst.emp.id} (analyst) exported tens of thousands of customer records at once "
                       "(normal exports: at most 800)")

    def off_shift(self, i: int) -> Planted:
        clerk = self.rng.choice(self.working["store_clerk"])
        worked = self.rng.choice(clerk.spans)  # 03:00 of a day they work: employed, just not on shift
        day = dt.datetime.fromtimestamp(worked[0] / 1000, self.world.zone).date()
        t = self.world.local_ms(day, 3 * 60) + int(self.rng.random() * 3_600_000)
        return Planted("off_shift", clerk, t, Act("customer.view"), None,
                       f"{clerk.emp.id} (store_clerk, shift {clerk.emp.shift}) read a customer at 03:xx")


def _shift_ms(world: World, emp: Employee, day: dt.date) -> list[tuple[int, int]]:
    return [(max(int(a * 1000), world.t0_ms), min(int(b * 1000), world.t1_ms))
            for a, b in emp.shift.intervals_on(day, world.zone)]


def _time_in(span: tuple[int, int], rng: random.Random) -> int:
    a, b = span
    margin = min(600_000, (b - a) // 4)  # not at the very edge of a shift
    return a + margin + int(rng.random() * (b - a - 2 * margin))


# ---------------------------------------------------------------- rendering

class Renderer:
    """Turns scheduled lines into JSON text from pre-rendered pieces (no json.dumps per line)."""

    def __init__(self, world: World, rng: random.Random):
        self.world = world
        self.rng = rng
        self.n_stores = len(world.store_ids)
        self.per_store = CUSTOMERS // self.n_stores
        self.fields_json = {op: _compact(f) for op, (_, f) in OPS.items()}

    def auth(self, actor: Actor, ts: str, req: str, op: str) -> str:
        rng = self.rng
        result = "denied" if op == "auth.login" and rng.random() < 0.02 else "ok"  # mistyped passwords
        head = actor.heads[int(rng.random() * len(actor.heads))]
        return f'{{"ts":"{ts}",{head}"req":"{req}",{actor.who}"op":"{op}","result":"{result}"}}'

    def access(self, actor: Actor, act: Act, ts: str, req: str, store: int | None = None,
               planted: bool = False) -> str:
        rng = self.rng
        lo, hi = act.count
        count = lo if lo == hi else rng.randint(lo, hi)
        if store is None:
            store = actor.stores[int(rng.random() * len(actor.stores))]
        res_type = act.res_type or OPS[act.op][0]
        scattered = len(actor.stores) == self.n_stores and count > 1  # a head-office query spans stores
        customers = self._customers(store, scattered, min(count, LISTED_SUBJECTS))
        parts = [f'{{"ts":"{ts}",{actor.heads[int(rng.random() * len(actor.heads))]}"req":"{req}",'
                 f'{actor.who}"op":"{act.op}","res":{self._res(res_type, count, customers[0], store, scattered)}']
        if count <= LISTED_SUBJECTS:
            parts.append(',"subjects":["' + '","'.join(f"C{n:08d}" for n in customers) + '"]')
        fields = _compact(act.fields) if act.fields else self.fields_json[act.op]
        parts.append(f',"count":{count},"fields":{fields},"masked":{"true" if act.masked else "false"}')
        if act.ticket:
            parts.append(f',"ticket":"{TICKETS[act.ticket].format(rng.randrange(1, 999_999))}"')
        if act.purposes:
            parts.append(f',"purpose":"{act.purposes[int(rng.random() * len(act.purposes))]}"')
        if act.dest:
            parts.append(f',"dest":{DEST_JSON[act.dest]}')
        failed = rng.random() < 0.003 and not planted  # timeouts; a planted access always succeeds
        parts.append(',"result":"error"}' if failed else ',"result":"ok"}')
        return "".join(parts)

    def _customers(self, store: int, scattered: bool, k: int) -> list[int]:
        """Customer numbers; n's home store is (n - 1) % stores."""
        rnd, n_stores, per_store = self.rng.random, self.n_stores, self.per_store
        if scattered:
            return [1 + int(rnd() * n_stores) + n_stores * int(rnd() * per_store) for _ in range(k)]
        return [1 + store + n_stores * int(rnd() * per_store) for _ in range(k)]

    def _res(self, res_type: str, count: int, customer: int, store: int, scattered: bool) -> str:
        store_id = self.world.store_ids[(customer - 1) % self.n_stores]
        if count > 1:  # a search, list or export: no single record; the store it was scoped to, if one
            return f'{{"type":"{res_type}"}}' if scattered else f'{{"type":"{res_type}","store":"{store_id}"}}'
        prefix = ID_PREFIX.get(res_type)
        if prefix is not None:
            rid = f"{prefix}{customer:08d}"
        else:
            rid = ("PAY" if res_type == "payment" else "O") + f"{int(self.rng.random() * 1e10):010d}"
        return f'{{"type":"{res_type}","id":"{rid}","store":"{store_id}"}}'


def write(out: Path, world: World, actors: list[Actor], codes: list[int], planted: list[Planted],
          rng: random.Random) -> None:
    render = Renderer(world, rng)
    truth = []
    stamp = world.stamp
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "access.log", "w", encoding="utf-8", newline="\n") as f:
        buf: list[str] = []
        for line_no, code in enumerate(codes, 1):
            t_ms, index, kind = code >> 24, (code >> 4) & MAX_INDEX, code & 0xF
            ts, req = stamp(t_ms), f"r-{line_no:08d}"
            if kind == ACCESS:
                actor = actors[index]
                act = actor.acts[_pick(actor.cum_weights, rng.random() * actor.cum_weights[-1])]
                buf.append(render.access(actor, act, ts, req))
            elif kind == PLANTED:
                p = planted[index]
                buf.append(render.access(p.actor, p.act, ts, req, p.customer_store, planted=True))
                truth.append({"req": req, "line": line_no, "kind": p.kind, "user_id": p.actor.emp.id,
                              "description": p.description})
            else:
                buf.append(render.auth(actors[index], ts, req, "auth.login" if kind == LOGIN else "auth.logout"))
            if len(buf) >= 65536:
                f.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            f.write("\n".join(buf) + "\n")
    with open(out / "ground_truth.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for row in truth:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")


def _compact(values: tuple[str, ...]) -> str:
    return json.dumps(list(values), separators=(",", ":"))


def _pick(cum_weights: tuple[float, ...], x: float) -> int:
    for i, w in enumerate(cum_weights):  # a handful of acts: a scan beats bisect's call
        if x < w:
            return i
    return len(cum_weights) - 1


# ---------------------------------------------------------------- command line

def generate(out: Path, lines: int, seed: int, start: dt.date, days: int = 7, per_kind: int = 2,
             directory_path: Path = DIRECTORY) -> None:
    problems = Problems()
    directory = load_directory(directory_path, problems)
    if directory is None:
        raise SystemExit("\n".join(str(p) for p in problems.items))
    world = World(directory, start, days)
    rng = random.Random(seed)
    actors = build_actors(world)
    if len(actors) > MAX_INDEX or per_kind * len(KINDS) > MAX_INDEX:
        raise SystemExit(f"at most {MAX_INDEX} employees and {MAX_INDEX // len(KINDS)} planted lines per kind")
    planted = plant(world, actors, per_kind, rng)
    if lines < len(planted):
        raise SystemExit(f"--lines must be at least {len(planted)} (the planted violations)")
    codes = schedule_normal(world, actors, lines - len(planted), rng)
    codes += [encode(p.t_ms, i, PLANTED) for i, p in enumerate(planted)]
    codes.sort()
    write(out, world, actors, codes, planted, rng)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for access.log and ground_truth.jsonl")
    parser.add_argument("--lines", type=int, default=100_000, help="lines to write, planted ones included")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 11, 2),
                        help="first local day (default 2026-11-02)")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--per-kind", type=int, default=2, help="planted violations of each kind")
    parser.add_argument("--directory", type=Path, default=DIRECTORY)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    generate(args.out, args.lines, args.seed, args.start, args.days, args.per_kind, args.directory)
    seconds = time.perf_counter() - began
    print(f"generate: {args.lines} lines in {seconds:.1f} s ({args.lines / seconds:,.0f} lines/s) -> {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
