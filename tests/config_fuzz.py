"""Hostile config, rule and directory files, for the property tests and benchmarks/fuzz_config.py.

The seeds are what the project ships: the example deployment (examples/config.yaml with
its directory and rules.d) and the shipped rules (rules/*.yaml). A mutation takes one
seed file and breaks one thing in it, the way a typo or an attacker would: a value of
the wrong type, out of range or a near-miss of an allowed word; a key deleted, renamed
or added; an unquoted token that YAML 1.1 reads as a number (00123, 1:30); or the whole
file empty, truncated or binary garbage. Every choice is drawn from a `random.Random`,
so that hypothesis (`st.randoms()`) can drive and shrink it, and the benchmark can run
it fast from a seed.

`Deployment.evaluate` loads the result the way the daemon does and returns an
`Outcome`: accepted, or the problems reported. Anything else (an exception escaping,
a problem without file:line:column, an internal "cannot check" problem) is a failure,
which `Outcome.failure` names.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import random
import re
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHIPPED_RULES = REPO / "rules"

# file (inside the deployment folder) -> the seed it starts from
SEED_FILES = {
    "config.yaml": EXAMPLES / "config.yaml",
    "directory.yaml": EXAMPLES / "directory.yaml",
    "rules.d/local.yaml": EXAMPLES / "rules.d" / "local.yaml",
    "rules/pi-access.yaml": SHIPPED_RULES / "pi-access.yaml",
    "rules/least-privilege.yaml": SHIPPED_RULES / "least-privilege.yaml",
}
# The deployment's config reads its own copy of the shipped rules, so they can be broken too.
RULES_CONFIG = "rules:\n  include_shipped: false\n  paths: [rules, rules.d]\n"

# A second config with every section of the README's reference, so that each key of
# each section is mutated too (the example deployment uses only a few).
FULL_CONFIG = """\
state_dir: out/state
timezone: Asia/Shanghai
sources:
  - name: crm
    paths: [out/logs/access.log*]
    format: neo-crm
    start_at: beginning
    poll_interval_s: 1.0
    use_inotify: true
    drain_grace_s: 5
    max_record_bytes: 16777216
  - name: app
    paths: [out/logs/app.log]
    format: app
    start_at: end
  - name: db
    paths: [out/logs/postgres*.csv]
    format: pgaudit
formats:
  app:
    kind: regex
    description: the app's own log
    options: {pattern: '^(?P<ts>\\S+) (?P<user>\\S+) (?P<op>\\w+) (?P<ip>\\S+)'}
    fields:
      "@timestamp": {path: ts, time_format: iso8601, timezone: Asia/Shanghai}
      user.id: {path: user, lower: true}
      source.ip: {path: ip, extract: '^(\\d{1,3}(?:\\.\\d{1,3}){3})$'}
      event.action: {path: op, map: {view: read, dl: download, "ex*": export}, default: read}
  crm2:
    extends: neo-crm
    fields:
      neo.purpose: null
pseudonym:
  key_file: out/pseudonym.key
  cache_size: 524288
directory:
  path: directory.yaml
  reload_check_s: 5
categories:
  identity: {description: "name, gender, birthday, id numbers"}
  contact: {description: "phone, address, address book"}
  media: {description: "photos, calendar"}
  property: {sensitive: true, description: "transactions, balance, points, coupons"}
  location: {sensitive: true, description: precise location}
  device: {description: "IMEI, MAC, Android ID, IDFA"}
  biometric: {sensitive: true, description: face}
  order: {description: orders and delivery}
  health: {sensitive: true, description: health records}
rules:
  include_shipped: true
  paths: [rules.d]
correlate:
  episode_gap: 4h
  tiers: {by_rule_kind: {departed: T5, entitlement: T5}, leak: T4, default: T6}
  criminal_bands:
    insider_factor: 0.5
    other_records: 5000
    bands:
      - {name: location-property, records: 50, categories: [location, property]}
entitlement:
  destinations:
    countries: [CN]
    networks: [10.0.0.0/8]
  assignments:
    csv: {path: assignments.csv}
    cache: {size: 100000, ttl_s: 300}
  departed:
    grace_working_days: 3
    account_feed: accounts.csv
    check_every: 1h
  review: {period: 90d, every: 7d}
working_days:
  override_file: working-days.yaml
elastic:
  hosts: [https://127.0.0.1:9200]
  api_key_file: es.key
  events_data_stream: logs-neo_auditd.access-default
  ship: {enabled: true, bulk_max_docs: 5000}
  scale_out:
    partitions: 16
    lease_ttl: 30s
    rules:
      - {id: bulk-readers, title: "Many customers read", distinct: neo.data.subject_ids,
         threshold: 200, window: 1h, filter: {event.action: [read, search]}}
  sources:
    - {name: fleet, index: "logs-neo_auditd.access-*", settle: 2m}
store: {synchronous: NORMAL}
pipeline: {batch_records: 20000, stop_timeout_s: 20}
ops:
  metrics: {enabled: true, listen: 127.0.0.1, port: 9464}
  sentry: {dsn: "https://abc@127.0.0.1/1", environment: production, sample_rate: 1.0}
  retention: {events: 184d, quarantine: 184d, check_every: 1h}
"""
FULL_CONFIG_FILES = {
    "assignments.csv": "id,assignee\nO1,E10001\n",
    "accounts.csv": "user_id,enabled,as_of\nE10001,true,2026-11-01T00:00:00+08:00\n",
    "working-days.yaml": "years:\n  2027:\n    holidays: [2027-01-01, 2027-02-06..2027-02-12]\n"
                         "    workdays: [2027-02-20]\n",
    "es.key": "ZXhhbXBsZTprZXk=\n",
    "contacts.csv": (EXAMPLES / "contacts.csv").read_text(encoding="utf-8"),  # the example's respond.contacts
}

LOCATED = re.compile(r"^error: (?P<file>[^\n:]+?):(?P<line>\d+):(?P<column>\d+): ")
FILE_LEVEL = re.compile(r"^error: (?P<file>/[^\n:]+?): ")  # a file missing or unreadable as a whole
INTERNAL = ("cannot check this value", "cannot convert ", "cannot build this value", "Traceback")


class RawToken(str):
    """A scalar written unquoted, exactly as given (00123, 1:30, yes, 2026-13-45)."""


def _represent_raw(dumper: yaml.SafeDumper, token: RawToken) -> yaml.ScalarNode:
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, str(token), (True, False))
    return dumper.represent_scalar(tag, str(token), style="")


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # the C emitter: ~10x faster
    pass


_Dumper.add_representer(RawToken, _represent_raw)

# Values that are wrong somewhere: types, ranges, YAML 1.1 surprises, hostile text.
WRONG_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**70, -(2**70), 10**400, 0.5, -0.5, float("nan"), float("inf"), 1e308,
    "", " ", "x", "\x00", "\u202e", "../../etc/passwd", "/dev/zero", "/proc/self/mem", "/", ".",
    "a" * 5000, "(", "^(a+)+$", "(a)\\1", "{", "%s%n", "${HOME}", "{{7*7}}",
    [], [None], [1, "a", {}], {}, {"x": 1}, {"": None}, [[[[]]]],
    dt.date(2026, 1, 1), dt.datetime(2026, 1, 1, 12, 0), dt.date(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59),
    RawToken("00123"), RawToken("1:30"), RawToken("0x1F"), RawToken("1_000"), RawToken("yes"), RawToken("off"),
    RawToken("0o17"), RawToken("2026-13-45"), RawToken(".nan"), RawToken(".inf"), RawToken("1.50"),
    RawToken("~"), RawToken("-0"), RawToken("190:20:30"),
)

WHOLE_FILE = ("empty", "garbage", "truncate", "not-a-mapping", "deep", "aliases", "duplicate-key")


@dataclass
class Mutation:
    file: str
    kind: str
    where: str
    text: str

    def describe(self) -> str:
        return f"{self.file}: {self.kind} at {self.where}"


@dataclass
class Outcome:
    code: int
    problems: list[str] = field(default_factory=list)
    escaped: str | None = None  # a traceback that got out

    @property
    def failure(self) -> str | None:
        """What is wrong with how the input was handled, or None."""
        if self.escaped:
            return "an exception escaped:\n" + self.escaped
        if self.code not in (0, 78):
            return f"exit code {self.code}, expected 0 or 78"
        if self.code == 78 and not self.problems:
            return "exit 78 without a problem"
        for problem in self.problems:
            if not (LOCATED.match(problem) or FILE_LEVEL.match(problem)):
                return f"a problem without file:line:column: {problem!r}"
            if any(marker in problem for marker in INTERNAL):
                return f"an internal error reported as a problem: {problem!r}"
        return None


class Deployment:
    """A copy of the example deployment, reset to the seeds before each input."""

    def __init__(self, folder: Path, *, metrics_port: int | None = None):
        from auditd.enrich.pseudonym import create_key_file

        self.folder = folder
        self.seeds = {name: path.read_text(encoding="utf-8") for name, path in SEED_FILES.items()}
        self.seeds["config.yaml"] = _own_rules(self.seeds["config.yaml"])
        self.seeds["full.yaml"] = FULL_CONFIG
        if metrics_port is not None:  # a daemon started from it must not collide with another's
            assert "port: 9464" in self.seeds["config.yaml"]
            self.seeds["config.yaml"] = self.seeds["config.yaml"].replace("port: 9464", f"port: {metrics_port}")
        self.data = {name: yaml.safe_load(text) for name, text in self.seeds.items()}
        self.config = folder / "config.yaml"
        for name, text in self.seeds.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
        for name, text in FULL_CONFIG_FILES.items():
            (folder / name).write_text(text, encoding="utf-8")
            (folder / name).chmod(0o600)
        (folder / "out").mkdir(exist_ok=True)
        if not (folder / "out" / "pseudonym.key").exists():
            create_key_file(folder / "out" / "pseudonym.key")
        self._dirty: set[str] = set()

    def reset(self) -> None:
        for name in self._dirty:
            path = self.folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            if name in self.seeds:
                path.write_text(self.seeds[name], encoding="utf-8")
        self._dirty.clear()

    def write(self, mutation: Mutation) -> None:
        self.reset()
        self._dirty.add(mutation.file)
        (self.folder / mutation.file).write_bytes(mutation.text.encode("utf-8", "surrogatepass"))

    def config_for(self, mutation: Mutation) -> Path:
        """The config that reads the mutated file (the full one reads only itself anew)."""
        return self.folder / "full.yaml" if mutation.file == "full.yaml" else self.config

    def load(self, mutation: Mutation) -> Outcome:
        """The loader of the mutated file alone, as `check` and a reload run it (faster than
        the whole of `check` for rule and directory files)."""
        from auditd.config.located import Problems
        from auditd.settings import DEFAULT_CATEGORIES
        from auditd.config.typed import DEFAULT_ZONE
        from auditd.detect import load_rules
        from auditd.directory import load_directory

        if mutation.file in ("config.yaml", "full.yaml"):
            return self.check(self.folder / mutation.file)
        problems = Problems()
        try:
            if mutation.file == "directory.yaml":
                load_directory(self.folder / "directory.yaml", problems, categories=frozenset(DEFAULT_CATEGORIES))
            else:
                load_rules([self.folder / "rules", self.folder / "rules.d"], problems,
                           categories=DEFAULT_CATEGORIES, zone=DEFAULT_ZONE)
        except BaseException:  # noqa: BLE001
            return Outcome(-1, escaped=traceback.format_exc())
        return Outcome(78 if problems else 0, [f"error: {p}" for p in problems.shown])

    def check(self, config: Path | None = None) -> Outcome:
        """`neo-auditd check` in this process: its exit code and the problems it printed."""
        from auditd.cli import main

        err = io.StringIO()
        umask = os.umask(0o022)  # main() sets 077 for the process; give the test process its own back
        os.umask(umask)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(["check", "-c", str(config or self.config)])
        except BaseException:  # noqa: BLE001 - SystemExit included: check must return
            return Outcome(-1, escaped=traceback.format_exc())
        finally:
            os.umask(umask)
        problems = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
        return Outcome(code, problems)


def _own_rules(config_text: str) -> str:
    """The example config, reading the deployment's copy of the shipped rules."""
    data = yaml.safe_load(config_text)
    assert "rules" in data, "the example config names its rules"
    head, _, tail = config_text.partition("\nrules:\n")
    rest = tail.split("\n\n", 1)[1] if "\n\n" in tail else ""
    return head + "\n" + RULES_CONFIG + "\n" + rest


# --- mutations ----------------------------------------------------------------------------


def mutate(rnd: random.Random, deployment: Deployment) -> Mutation:
    name = rnd.choice(sorted(deployment.seeds))
    if rnd.random() < 0.08:
        return _whole_file(rnd, name, deployment.seeds[name])
    data = _copy(deployment.data[name])
    paths = list(_paths(data))
    path = rnd.choice(paths)
    kind = rnd.choice(("wrong-value", "wrong-value", "typo", "delete", "rename-key", "add-key", "deep-wrong"))
    data, kind = _apply(rnd, data, path, kind)
    return Mutation(name, kind, _show(path), _dump(data))


def _whole_file(rnd: random.Random, name: str, seed: str) -> Mutation:
    kind = rnd.choice(WHOLE_FILE)
    if kind == "empty":
        text = rnd.choice(("", "\n", "---\n", "# only a comment\n", "~\n"))
    elif kind == "garbage":
        text = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 200))).decode("latin-1")
    elif kind == "truncate":
        text = seed[: rnd.randint(0, len(seed))]
    elif kind == "not-a-mapping":
        text = rnd.choice(("[]\n", "- a\n- b\n", "42\n", "'text'\n", "{}\n", "!!binary aGVsbG8=\n"))
    elif kind == "deep":
        depth = rnd.randint(50, 3000)
        text = "a: " + "[" * depth + "]" * depth + "\n"
    elif kind == "aliases":
        text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(rnd.randint(1, 8)))
    else:
        lines = seed.splitlines(keepends=True)
        keyed = [line for line in lines if re.match(r"^[a-z_]+:", line)]
        text = seed + (rnd.choice(keyed) if keyed else "a: 1\na: 2\n")
    return Mutation(name, kind, "(whole file)", text)


def _apply(rnd: random.Random, data: Any, path: tuple, kind: str) -> tuple[Any, str]:
    if not path:
        return rnd.choice(WRONG_VALUES), "wrong-root"
    parent = _get(data, path[:-1])
    last = path[-1]
    current = parent[last]
    if kind == "delete":
        del parent[last]
    elif kind == "rename-key" and isinstance(parent, dict):
        parent[_typo(rnd, last) or last + "x"] = parent.pop(last)
    elif kind == "add-key" and isinstance(current, dict):
        current[rnd.choice(("enabled", "extra", "x", "kind", "paths", "id", "<<"))] = rnd.choice(WRONG_VALUES)
    elif kind == "typo" and isinstance(current, str) and current:
        parent[last] = _typo(rnd, current)
    elif kind == "deep-wrong" and isinstance(current, (dict, list)) and current:
        inner = rnd.choice(list(_paths(current))[1:] or [()])
        if inner:
            return _apply(rnd, data, path + inner, "wrong-value")
        parent[last] = rnd.choice(WRONG_VALUES)
    else:
        parent[last] = rnd.choice(WRONG_VALUES)
        kind = "wrong-value"
    return data, kind


def _typo(rnd: random.Random, text: str) -> str:
    if not text:
        return "x"
    i = rnd.randrange(len(text))
    op = rnd.choice(("swap", "drop", "double", "case", "replace"))
    if op == "swap" and i + 1 < len(text):
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    if op == "drop":
        return text[:i] + text[i + 1:]
    if op == "double":
        return text[:i] + text[i] + text[i:]
    if op == "case":
        return text.swapcase()
    return text[:i] + rnd.choice("aeiou_-.0 ") + text[i + 1:]


def _paths(data: Any, prefix: tuple = ()):
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, prefix + (i,))


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def _copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def _show(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(root)"


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=1000)
