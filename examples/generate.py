#!/usr/bin/env python3
"""Generate neo-crm's access log for the example deployment, with planted scenarios.

    python examples/generate.py --out DIR --lines N --seed S --start 2026-11-02

Writes DIR/access.log in the format of docs/example-access-log.md, and
DIR/ground_truth.jsonl with one line per planted scenario:
{scenario, actor, time, until, event_ids, reqs, lines, needs, description, model}.
`event_ids` are the ids neo-auditd gives those lines (docs/example-access-log.md says
how they are made), so a detector's alerts can be scored against the file without
trusting the detector. The same arguments give the same bytes.

The generator imports nothing from the daemon: it reads the HR directory with its own
reader (directory_reader.py), so a bug in the daemon's directory cannot hide itself.

The normal model (MODEL_VERSION) is frozen: staff work their shifts (login, accesses
spread through the shift with a lunch dip, logout), each role with its own mix of
operations, purposes and tickets wherever a grant requires them, and with the variance
real staff have: overtime up to 50 minutes past a shift, early starts, single days
and weeks of leave, role changes and new hires on the dates the directory gives, and a
team (finance) that works Saturdays. Every normal access is entitled and within an
hour of its shift. Later work adds scenarios (SCENARIOS, appended at the end), never
changes the normal model; the streams of randomness are separate so that the normal
traffic does not depend on what is planted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))  # directory_reader, scenarios: beside this file
from directory_reader import Company, Person, read_company  # noqa: E402
from scenarios import plant, truth_rows  # noqa: E402

MODEL_VERSION = 2  # the normal model; frozen (see the module docstring)
ZONE = ZoneInfo("Asia/Shanghai")
DIRECTORY = Path(__file__).resolve().parent / "directory.yaml"
CUSTOMERS = 160_000  # customer n belongs to store index (n - 1) % number of stores
LISTED_SUBJECTS = 50  # the app lists the customer ids of results up to this size only
FINGERPRINT_BYTES = 1024  # the daemon's default sources[].fingerprint_bytes

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
DSR = dict(ticket="DSR", masked=False)  # the DPO works on data-subject requests, unmasked
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
    "finance": (  # never customers' identity: a first look at it is a scenario (first_category)
        Act("payment.view", 35, purposes=("reconciliation", "refund", "chargeback")), Act("order.view", 20),
        Act("order.list", 15, (20, 200)), Act("points.view", 10, purposes=("reconciliation",)),
        Act("order.export", 3, (100, 800), purposes=("reconciliation",), dest="fin"),
        Act("customer.share", 5, purposes=("payment-settlement",), dest="P-PAY",
            fields=("order_id", "amount", "txn_id"), res_type="payment"),
    ),
    "analyst": (
        Act("customer.search", 35, (20, 50)), Act("order.list", 40, (20, 500)),
        Act("order.export", 10, (50, 800), purposes=("sales-analysis",), dest="bi"),
        Act("customer.export", 5, (50, 800), purposes=("membership-analysis",), dest="bi"),
    ),
    "dpo": (
        Act("customer.view", 40, purposes=("data-subject-request",), **DSR),
        Act("customer.search", 15, (1, 5), purposes=("data-subject-request",), **DSR),
        Act("customer.export", 10, purposes=("data-subject-access",), dest="dsr", **DSR),
        Act("customer.delete", 5, purposes=("data-subject-erasure",), **DSR),
        Act("payment.view", 10, purposes=("data-subject-access",), **DSR),
        Act("order.list", 10, (1, 30), purposes=("data-subject-access",), **DSR),
        Act("face.view", 5, purposes=("data-subject-access",), **DSR),
        Act("location.view", 5, purposes=("data-subject-access",), **DSR),
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

# the variance of the normal model (frozen with it)
OVERTIME = (0.20, 10, 50)  # chance a shift runs over, and by how many minutes (at most)
EARLY_START = (0.10, 5, 20)  # chance someone starts early, and by how many minutes
DAY_OFF = 0.04  # chance of a single day of leave on a working day
WEEK_OFF = (1 / 12, 3)  # chance someone takes a block of leave in the range, and its days
LUNCH = (12 * 60, 13 * 60 + 30)  # local minutes: fewer accesses while people eat
LUNCH_KEEP = 0.35


@dataclass
class Actor:
    """One employee in one role (someone promoted mid-range is two actors, one id)."""

    person: Person
    role: str  # the example role whose behaviour this is
    stores: tuple[int, ...]  # store indices whose customers this actor serves
    ip: str
    heads: tuple[str, ...]  # pre-rendered '"app":…,"host":…,' per host
    acts: tuple[Act, ...]
    cum_weights: tuple[float, ...]
    shifts: list[tuple[int, int]] = field(default_factory=list)  # the directory's shift windows, epoch ms
    spans: list[tuple[int, int]] = field(default_factory=list)  # when they actually worked, epoch ms

    @property
    def id(self) -> str:
        return self.person.id

    def who(self, ip: str | None = None) -> str:
        return ('"emp":' + json.dumps({"id": self.person.id, "name": self.person.name}, ensure_ascii=False,
                                      separators=(",", ":")) + f',"ip":"{ip or self.ip}",')


class World:
    """The company as the generator sees it: stores, staff, the time range."""

    def __init__(self, company: Company, start: dt.date, days: int, zone: dt.tzinfo = ZONE):
        self.company = company
        self.zone = zone
        self.start, self.days = start, days
        self.store_ids = list(company.stores)
        self.store_region = [company.stores[s] for s in self.store_ids]
        self.t0_ms = self.local_ms(start)
        self.t1_ms = self.local_ms(start + dt.timedelta(days=days))
        self._minute, self._minute_text, self._suffix = -1, "", ""  # stamp()'s cache

    def local_ms(self, day: dt.date, minute: int = 0) -> int:
        local = dt.datetime(day.year, day.month, day.day, tzinfo=self.zone) + dt.timedelta(minutes=minute)
        return int(local.timestamp() * 1000)

    def day_of(self, t_ms: int) -> dt.date:
        return dt.datetime.fromtimestamp(t_ms / 1000, self.zone).date()

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
    return max((r for r in ROLE_ACTS if role_id.startswith(r + "_")), key=len, default=None)


def build_actors(world: World, rng: random.Random) -> list[Actor]:
    """One actor per employee and role held in the range (the departed: their last role)."""
    actors = []
    for n, person in enumerate(world.company.people):
        leave = leave_days(world, rng)
        held = [a for a in person.assignments if behaviour_of(a.role) is not None]
        if person.departure_ms is not None and person.departure_ms <= world.t0_ms:
            held = [a for a in held if _overlaps(a.start_ms, a.end_ms, person.departure_ms - 1, person.departure_ms)]
            held = held[:1]  # who they were when they left: for planting only
        for assignment in held:
            role = behaviour_of(assignment.role)
            actor = _actor(world, person, role, n)
            actor.shifts = shift_windows(world, person)
            start = max(x for x in (world.t0_ms, person.hired_ms, assignment.start_ms) if x is not None)
            end = min(x for x in (world.t1_ms, person.departure_ms, assignment.end_ms) if x is not None)
            if person.status != "suspended" and start < end:
                actor.spans = working_spans(world, actor.shifts, start, end, leave, rng)
            if actor.spans or (person.departure_ms is not None and person.departure_ms <= world.t1_ms):
                actors.append(actor)
    return actors


def _overlaps(a: int | None, b: int | None, start: int, end: int) -> bool:
    return (a is None or a < end) and (b is None or start < b)


def _actor(world: World, person: Person, role: str, n: int) -> Actor:
    own = world.store_ids.index(person.store) if person.store in world.company.stores else None
    if own is not None and role in ("store_clerk", "store_manager"):
        stores = (own,)
    elif role == "dispatcher":
        stores = tuple(i for i, r in enumerate(world.store_region) if r == person.region)
    else:
        stores = tuple(range(len(world.store_ids)))
    ip = f"10.{20 + own}.{n % 200 + 10}.{n % 50 + 20}" if own is not None else f"10.10.{n % 30 + 1}.{n % 200 + 20}"
    acts = ROLE_ACTS[role]
    cum = tuple(float(sum(a.weight for a in acts[:i + 1])) for i in range(len(acts)))
    app = ROLE_APP.get(role, "crm")
    heads = tuple(f'"app":"{app}","host":"{h}",' for h in APP_HOSTS[app])
    return Actor(person, role, stores or tuple(range(len(world.store_ids))), ip, heads, acts, cum)


def shift_windows(world: World, person: Person) -> list[tuple[int, int]]:
    """The directory's shift windows that start in the range (or the day before it)."""
    if person.hours is None:
        return []
    out = []
    for i in range(-1, world.days):
        out.extend(person.hours.windows_on(world.start + dt.timedelta(days=i), world.zone))
    return sorted(w for w in out if w[1] > world.t0_ms and w[0] < world.t1_ms)


def leave_days(world: World, rng: random.Random) -> frozenset[dt.date]:
    """Days this person is away: single days, and now and then a block of them."""
    days = {world.start + dt.timedelta(days=i) for i in range(world.days) if rng.random() < DAY_OFF}
    chance, length = WEEK_OFF
    if rng.random() < chance:
        first = rng.randrange(world.days)
        days.update(world.start + dt.timedelta(days=first + i) for i in range(length))
    return frozenset(days)


def working_spans(world: World, shifts: list[tuple[int, int]], start: int, end: int,
                  leave: frozenset[dt.date], rng: random.Random) -> list[tuple[int, int]]:
    """The shifts actually worked inside [start, end): leave days off, overtime and early
    starts on some, clipped to the employment and the role."""
    spans = []
    for a, b in shifts:
        early, over = 0, 0
        if rng.random() < EARLY_START[0]:
            early = rng.randint(EARLY_START[1], EARLY_START[2]) * 60_000
        if rng.random() < OVERTIME[0]:
            over = rng.randint(OVERTIME[1], OVERTIME[2]) * 60_000
        if world.day_of(a) in leave:
            continue
        a, b = max(a - early, start), min(b + over, end)
        if a < b:
            spans.append((a, b))
    return spans


# ---------------------------------------------------------------- normal traffic

ACCESS, LOGIN, LOGOUT, PLANTED = 0, 1, 2, 3
MAX_INDEX = 0xFFFFF  # actors, and planted lines, that `encode` can number


def encode(t_ms: int, index: int, kind: int) -> int:
    """One int per line, so a million lines sort as plain ints (fast, deterministic)."""
    return (t_ms << 24) | (index << 4) | kind


def schedule_normal(world: World, actors: list[Actor], lines: int, rng: random.Random) -> list[int]:
    """Share `lines` among everyone's working spans by role rate × length; place each in time."""
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


# ---------------------------------------------------------------- rendering

class Renderer:
    """Turns scheduled lines into JSON text from pre-rendered pieces (no json.dumps per line)."""

    def __init__(self, world: World, rng: random.Random):
        self.world = world
        self.rng = rng
        self.n_stores = len(world.store_ids)
        self.per_store = CUSTOMERS // self.n_stores
        self.fields_json = {op: _compact(f) for op, (_, f) in OPS.items()}
        self.who: dict[int, str] = {}  # id(actor) -> its pre-rendered employee and ip

    def _who(self, actor: Actor, ip: str | None) -> str:
        if ip is not None:
            return actor.who(ip)
        text = self.who.get(id(actor))
        if text is None:
            text = self.who[id(actor)] = actor.who()
        return text

    def auth(self, actor: Actor, ts: str, req: str, op: str) -> str:
        rng = self.rng
        result = "denied" if op == "auth.login" and rng.random() < 0.02 else "ok"  # mistyped passwords
        head = actor.heads[int(rng.random() * len(actor.heads))]
        return f'{{"ts":"{ts}",{head}"req":"{req}",{self._who(actor, None)}"op":"{op}","result":"{result}"}}'

    def access(self, actor: Actor, act: Act, ts: str, req: str, store: int | None = None, *,
               planted: bool = False, customer: int | None = None, ip: str | None = None) -> str:
        rng = self.rng
        lo, hi = act.count
        count = lo if lo == hi else rng.randint(lo, hi)
        if customer is not None:
            store = (customer - 1) % self.n_stores
        elif store is None:
            store = actor.stores[int(rng.random() * len(actor.stores))]
        res_type = act.res_type or OPS[act.op][0]
        scattered = len(actor.stores) == self.n_stores and count > 1  # a head-office query spans stores
        customers = [customer] if customer is not None else self._customers(store, scattered,
                                                                             min(count, LISTED_SUBJECTS))
        parts = [f'{{"ts":"{ts}",{actor.heads[int(rng.random() * len(actor.heads))]}"req":"{req}",'
                 f'{self._who(actor, ip)}"op":"{act.op}","res":'
                 f'{self._res(res_type, count, customers[0], store, scattered)}']
        if count <= LISTED_SUBJECTS:
            parts.append(',"subjects":["' + '","'.join(f"C{n:08d}" for n in customers) + '"]')
        fields = _compact(act.fields) if act.fields else self.fields_json[act.op]
        parts.append(f',"count":{count},"fields":{fields},"masked":{"true" if act.masked else "false"}')
        if act.ticket:
            parts.append(f',"ticket":"{TICKETS[act.ticket].format(rng.randrange(1, 99_999))}"')
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


def event_id_prefix(first_line: bytes) -> str:
    """What neo-auditd puts before ':<byte offset>' in the event ids of a file whose first
    line this is: the first 16 hex digits of the BLAKE2b-128 of that line, its newline
    included, cut at FINGERPRINT_BYTES (docs/example-access-log.md)."""
    head = first_line[:FINGERPRINT_BYTES]
    return hashlib.blake2b(head, digest_size=16).hexdigest()[:16]


def write(out: Path, world: World, actors: list[Actor], codes: list[int], planted: list,
          scenarios: list, render: Renderer, planted_render: Renderer) -> None:
    """The log, then the ground truth with the ids the daemon gives the planted lines."""
    stamp = world.stamp
    out.mkdir(parents=True, exist_ok=True)
    located: dict[int, tuple[str, int, int]] = {}  # planted index -> (req, line, byte offset)
    offset, prefix = 0, None
    with open(out / "access.log", "wb") as f:
        buf: list[bytes] = []
        rng_rand = render.rng.random
        for line_no, code in enumerate(codes, 1):
            t_ms, index, kind = code >> 24, (code >> 4) & MAX_INDEX, code & 0xF
            ts, req = stamp(t_ms), f"r-{line_no:08d}"
            if kind == ACCESS:
                actor = actors[index]
                act = actor.acts[_pick(actor.cum_weights, rng_rand() * actor.cum_weights[-1])]
                text = render.access(actor, act, ts, req)
            elif kind == PLANTED:
                p = planted[index]
                text = planted_render.access(p.actor, p.act, ts, req, p.store, planted=True, customer=p.customer,
                                             ip=p.ip)
                located[index] = (req, line_no, offset)
            else:
                text = render.auth(actors[index], ts, req, "auth.login" if kind == LOGIN else "auth.logout")
            data = text.encode("utf-8") + b"\n"
            if prefix is None:
                prefix = event_id_prefix(data)
            offset += len(data)
            buf.append(data)
            if len(buf) >= 65536:
                f.write(b"".join(buf))
                buf.clear()
        f.write(b"".join(buf))
    with open(out / "ground_truth.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for row in truth_rows(world, scenarios, planted, located, prefix or "", MODEL_VERSION):
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
    world = World(read_company(directory_path, ZONE), start, days)
    # separate streams: what is planted never moves the normal traffic, and vice versa
    actors = build_actors(world, random.Random(f"{seed}:staff"))
    if len(actors) > MAX_INDEX:
        raise SystemExit(f"at most {MAX_INDEX} employees")
    scenarios, planted = plant(world, actors, per_kind, random.Random(f"{seed}:scenarios"), sys.modules[__name__])
    if len(planted) > MAX_INDEX:
        raise SystemExit(f"at most {MAX_INDEX} planted lines; lower --per-kind")
    if lines < len(planted):
        raise SystemExit(f"--lines must be at least {len(planted)} (the planted scenarios' lines)")
    codes = schedule_normal(world, actors, lines - len(planted), random.Random(f"{seed}:schedule"))
    codes += [encode(p.t_ms, i, PLANTED) for i, p in enumerate(planted)]
    codes.sort()
    write(out, world, actors, codes, planted, scenarios, Renderer(world, random.Random(f"{seed}:render")),
          Renderer(world, random.Random(f"{seed}:render-planted")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for access.log and ground_truth.jsonl")
    parser.add_argument("--lines", type=int, default=100_000,
                        help="lines to write, planted ones included (default 100000; at least the planted ones)")
    parser.add_argument("--seed", type=int, default=1,
                        help="the same seed and arguments give the same bytes (default 1)")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 11, 2),
                        help="first local day (default 2026-11-02)")
    parser.add_argument("--days", type=int, default=7, help="days of log from --start (default 7)")
    parser.add_argument("--per-kind", type=int, default=2, help="planted instances of each scenario (default 2)")
    parser.add_argument("--directory", type=Path, default=DIRECTORY,
                        help="the HR directory whose staff work in the log (default examples/directory.yaml)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    generate(args.out, args.lines, args.seed, args.start, args.days, args.per_kind, args.directory)
    seconds = time.perf_counter() - began
    print(f"generate: {args.lines} lines in {seconds:.1f} s ({args.lines / seconds:,.0f} lines/s) -> {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
