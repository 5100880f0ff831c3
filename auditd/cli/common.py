"""What the command modules share: argument helpers, output, the store they read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Sequence

import msgspec

from auditd.errors import EX_CONFIG, ConfigError


# Control characters and bidirectional overrides a log line may carry (in an employee id,
# a resource name): written raw, they clear an operator's screen, recolour it or reorder
# what it shows. Text output shows them escaped; --json output escapes them already.
# \u escapes: the daemon's JSON log lines pass through here too, and stay JSON.
_UNSAFE = {c: f"\\u{c:04x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F),
                                      *range(0x2066, 0x206A)] if c not in (0x09, 0x0A)}


class EscapedText:
    """A text stream that writes control characters as escapes (\\u001b), and passes all
    else, its binary buffer included, to the stream it wraps."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(text.translate(_UNSAFE))
        return len(text)

    def write_own(self, text: str) -> int:
        """The program's own control characters (a progress bar's carriage return)."""
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def json_out(obj) -> None:
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n")


def config_error(exc: ConfigError, as_json: bool, warnings: Sequence[object] = (), *,
                 outcome: str = "nothing was started") -> int:
    if as_json:
        json_out({"ok": False, "problems": [str(p) for p in exc.problems], "warnings": [str(w) for w in warnings]})
    print_warnings(warnings)
    for problem in exc.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{len(exc.problems)} problem(s) found; {outcome}", file=sys.stderr)
    return EX_CONFIG


def print_warnings(warnings: Sequence[object]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def settings_and_store_path(args):
    """The config alone (not its rules, key or directory) and where its store is: reading
    incidents or status must work while, say, a rule file is broken."""
    from auditd.config.located import Problems
    from auditd.settings import load_settings

    problems = Problems()
    settings, _ = load_settings(args.config, problems)
    if settings is None:
        # status and the incident commands find the store through this file: after a bad edit
        # they cannot, while a running daemon goes on with what it last loaded
        raise SystemExit(config_error(ConfigError(problems.items), getattr(args, "json", False),
                                      outcome="the store it names was not read (a running daemon keeps the "
                                              "configuration it last loaded; fix this file, then reload)"))
    return settings, (args.state_dir / "neo-auditd.db") if args.state_dir else settings.store_path


def store_despite_problems(args, doc) -> Path | None:
    """Where the store is when the config has problems elsewhere: `--state-dir`, or the
    file's own `store.path` or `state_dir` when they are plain text (relative to it). None
    when neither says. `status` reads the store through this after a bad edit, which is
    when the operator most wants to see what the running daemon made of it."""
    if args.state_dir:
        return args.state_dir / "neo-auditd.db"
    data = doc.data if doc is not None and isinstance(doc.data, dict) else {}
    store = data.get("store")
    named = store.get("path") if isinstance(store, dict) else None
    if isinstance(named, str) and named:
        return Path(args.config).parent / named
    state_dir = data.get("state_dir")
    if isinstance(state_dir, str) and state_dir:
        return Path(args.config).parent / state_dir / "neo-auditd.db"
    return None


def shown_id_scrubber(settings):
    """`pseudonym.id_patterns` over text a command shows: each raw customer id becomes its
    pseudonym, or "[customer id]" when the key cannot be read here; None without patterns."""
    from auditd.config.located import Problems
    from auditd.enrich.pseudonym import IdScrubber, Pseudonymiser, load_key

    if not settings.pseudonym.id_patterns:
        return None
    key = load_key(settings.pseudonym.key_file, Problems())
    pseudonymise = Pseudonymiser(key) if key is not None else (lambda _id: "[customer id]")
    return IdScrubber(settings.pseudonym.id_patterns, pseudonymise).text


def incident_conn(args):
    """The store, and the zone its times are shown in (the config's `timezone`). A store
    that is not there is an error, not a new empty one: a mistyped state_dir must not
    answer 'no incidents'."""
    settings, path = settings_and_store_path(args)
    return open_store(path, create=False), settings.zone


def open_store(path: Path, *, create: bool):
    """The store at `path` for a command; a damaged one, a folder in its place or (unless
    `create`) none at all ends the command with what to do."""
    from auditd.store import health
    from auditd.store.sqlite import Store

    try:
        health.preflight(path)
    except health.StoreDamaged as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    if not create and not path.exists():
        print(f"error: {path}: no store there (has the daemon run with this config? state_dir, or --state-dir, "
              "names the folder it keeps neo-auditd.db in)", file=sys.stderr)
        raise SystemExit(1)
    return Store(path).open()


_NAMES_A_RESPONDER = ("--who", "the assignee")


def refused_text(what: str, text: str, id_patterns: Iterable[str] = (), *, allowed: Iterable[str] = ()) -> bool:
    """Free text kept for good (a timeline entry is hash-chained) must carry pseudonyms
    only: refuse, with the reason, text in which the PI patterns find something (but the
    kinds `allowed`), or the config's patterns of raw customer ids (`pseudonym.id_patterns`)."""
    from auditd.config.regex import compile_regex
    from auditd.ops.sentry import personal_information_in

    found = [kind for kind in personal_information_in(text) if kind not in allowed]
    if any(compile_regex(p).search(text) for p in id_patterns):  # checked by the config's loader
        found.append("customer id")
    if found and what in _NAMES_A_RESPONDER:  # a person of the staff, not a customer
        print(f"error: {what} holds what looks like personal information ({', '.join(found)}): it would be kept "
              "for good; name the responder by login name or staff id (alice, E10011), never by e-mail or "
              "phone", file=sys.stderr)
    elif found:
        print(f"error: {what} holds what looks like personal information ({', '.join(found)}): it would be kept "
              "for good; name customers by their pseudonym (as `incidents show` gives them), never by phone, "
              "e-mail, id or card number", file=sys.stderr)
    return bool(found)


def id_arg(text: str) -> int:
    """A row's number as `list` shows it: a positive integer that SQLite can hold."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number as the list shows it, got {text!r}") from None
    if not 1 <= n < 2**63:
        raise argparse.ArgumentTypeError(f"no such number: {text[:30]!r}")
    return n


def who_acts(args) -> str:
    import getpass

    return (args.who or getpass.getuser()).strip()


def date_arg(text: str):
    import datetime as dt

    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date such as 2027-01-15, got {text!r}") from None
    if not 1970 <= day.year <= 9000:  # a year ahead of it is counted in working days too
        raise argparse.ArgumentTypeError(f"expected a date between 1970 and 9000, got {text!r}")
    return day


def limit_arg(text: str) -> int:
    """How many rows to show: a positive number SQLite can take as a LIMIT."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of rows, got {text[:30]!r}") from None
    if not 1 <= n < 2**31:
        raise argparse.ArgumentTypeError(f"expected a number of rows from 1 to {2**31 - 1:,}, got {text[:30]!r}")
    return n


def workers_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}") from None
    if not 0 <= n <= 256:
        raise argparse.ArgumentTypeError("between 0 (one per core) and 256")
    return n


def config_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-c", "--config", type=Path, required=required,
                   help="the daemon's YAML config file, e.g. examples/config.yaml (paths in it are relative "
                        "to it)")


def state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="keep everything kept under the config's state_dir in DIR instead: the store, the quarantine, "
                        "rendered reports and notices, the deliver spool (e.g. a copy of the store for a trial)")


def store_reader(p: argparse.ArgumentParser, json_help: str) -> None:
    """A command that reads the store: its config, another store, and --json."""
    config_arg(p)
    state_arg(p)
    p.add_argument("--json", action="store_true", help=json_help)


def rule_ids(settings):
    """The ids of the configured rules, or None when they do not load (then any id is taken)."""
    from auditd.config.located import Problems
    from auditd.detect import load_rules

    problems = Problems()
    ruleset = load_rules(settings.rule_paths(), problems, categories=settings.categories, zone=settings.zone)
    return None if problems else [r.id for r in ruleset.rules], (None if problems else ruleset)

