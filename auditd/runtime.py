"""Everything loaded from the config, validated as a whole and swapped as a whole.

Start-up, `check` and SIGHUP reload all go through `load_runtime`, so a reload is
validated exactly as a start is, and an invalid set never replaces a running one.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any, Callable

from auditd.config.located import Problems, regular_file_stat
from auditd.settings import SHIPPED_RULES, Settings, load_settings
from auditd.correlate import Correlator
from auditd.decode import load_format
from auditd.deliver import Deliverer, build_deliverer
from auditd.decode.normalise import Normaliser
from auditd.detect import KINDS, KindContext, RuleSet, load_rules
from auditd.detect.kinds import RuleKind
from auditd.detect.state import StateStore
from auditd.directory import Directory, load_directory
from auditd.enrich import Enricher, Pseudonymiser, load_key
from auditd.enrich.pseudonym import IdScrubber
from auditd.entitlement import build_checker
from auditd.errors import ConfigError, ConfigProblem
from auditd.ops.privacy import check_named_file, check_state
from auditd.respond import Responder, build_responder
from auditd.sources.guard import Protected, inside
from auditd.sources.globs import static_directory
from auditd.workdays import WorkingCalendar, load_calendar


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    config_path: Path
    normalisers: dict[str, Normaliser]
    framers: dict[str, Callable[[], Any]]
    ruleset: RuleSet
    directory: Directory | None
    enricher: Enricher
    correlator: Correlator
    # sources whose events come already enriched and pseudonymised (read back from the cluster)
    pre_enriched: frozenset[str] = frozenset()
    calendar: WorkingCalendar = field(default_factory=WorkingCalendar)  # mainland-China working days
    responder: Responder | None = None  # playbooks, templates and contacts as loaded
    deliverer: Deliverer | None = None  # the outbox's channels, their secrets read
    state: StateStore = field(default_factory=StateStore)  # stateful rules' state; the pipeline binds it
    loaded_at: float = field(default_factory=time.time)
    warnings: tuple[ConfigProblem, ...] = ()  # located, not reasons to refuse the set (a key others can read)
    id_scrubber: IdScrubber | None = None  # raw customer ids in alerts' words -> pseudonyms (pseudonym.id_patterns)

    def normaliser(self, source: str) -> Normaliser:
        return self.normalisers[source]

    def scrubbed(self, alerts: list) -> list:
        """Alerts as they may be committed: with `pseudonym.id_patterns`, no raw customer id
        in their words or actor. Alerts from the logs (per batch, at a tick, from the cluster)
        pass here before the correlator's seam."""
        if not alerts or self.id_scrubber is None:
            return alerts
        return list(map(self.id_scrubber.alert, alerts))


def load_runtime(config_path: Path, *, clock: Callable[[], Any] | None = None,
                 kinds: Mapping[str, RuleKind] = KINDS,
                 directory_loader: Callable[..., Directory | None] | None = None,
                 state_dir: Path | None = None) -> Runtime:
    """Load and validate config, formats, directory, key and rules; raise ConfigError with all problems.

    `kinds` is the registry of rule kinds (tests pass one with a kind of their own).
    `directory_loader` reads the HR directory (default `load_directory`; a reload passes
    one that keeps the directory in force when its files are unchanged:
    `directory.reuse`). `state_dir` (from `--state-dir`) replaces the config's, for
    everything kept under it (`Settings.with_state_dir`)."""
    problems = Problems()
    settings, doc = load_settings(config_path, problems)
    if settings is None:
        problems.raise_if_any()
        raise ConfigError([])  # pragma: no cover - load_settings always reports why
    if state_dir is not None:
        settings = settings.with_state_dir(state_dir)
    settings = _guard_sources(settings, Path(config_path), doc, problems)
    normalisers, framers = _load_sources(settings, doc, problems)
    directory = None
    if settings.directory is not None:
        load = directory_loader or load_directory
        directory = load(settings.directory.path, problems, referrer=doc, key_path=("directory", "path"),
                         categories=frozenset(settings.categories))
    key = load_key(settings.pseudonym.key_file, problems, referrer=doc, key_path=("pseudonym", "key_file"))
    pre_enriched = _add_cluster_sources(settings, normalisers)
    state = StateStore()
    calendar = load_calendar(settings.working_days, problems, referrer=doc)
    ruleset = load_rules(_rule_paths(settings, doc, problems), problems, categories=settings.categories,
                         zone=settings.zone, context=KindContext(zone=settings.zone, state=state, calendar=calendar),
                         kinds=kinds)
    if settings.elastic is None:  # a rule that would never run must not pass for one that runs
        for rule in ruleset.scoped("cluster"):
            problems.items.append(ConfigProblem(rule.spec.where, f"rule {rule.id}: scope",
                                                "scope cluster needs the config's elastic: section (the lease "
                                                "holder runs it over every host's events); add it, or remove "
                                                "'scope' to run the rule on each daemon's own events"))
    check_state(settings.state_dir, {("store", "path"): settings.store_path,
                                     ("quarantine", "path"): settings.quarantine_path}, doc, problems)
    if settings.elastic is not None:  # read when the client is built: checked now, not at start
        if settings.elastic.api_key_file is not None:
            check_named_file(settings.elastic.api_key_file, doc, ("elastic", "api_key_file"), problems,
                             max_bytes=64 * 1024, secret=True)
        if settings.elastic.ca_certs is not None:
            check_named_file(settings.elastic.ca_certs, doc, ("elastic", "ca_certs"), problems)
    _check_entitlement_files(settings, doc, problems)
    pseudonymiser = Pseudonymiser(key, cache_size=settings.pseudonym.cache_size) if key is not None else None
    correlator = Correlator(settings.correlate, clock) if clock else Correlator(settings.correlate)
    # playbooks are validated like rules: a reload with a bad one keeps the old set running
    responder = build_responder(settings.respond, problems, calendar=calendar or WorkingCalendar(), zone=settings.zone,
                                state_dir=settings.state_dir, correlator=correlator, pseudonymise=pseudonymiser,
                                directory=lambda: directory, referrer=doc)
    deliverer = build_deliverer(settings.deliver, settings.respond, problems, state_dir=settings.state_dir,
                                zone=settings.zone, referrer=doc)
    problems.raise_if_any()
    enricher = Enricher(
        directory, pseudonymiser, sensitive_categories=settings.sensitive_categories(), zone=settings.zone,
        working_days_between=calendar.working_days_between,
        entitlement=build_checker(settings.entitlement, pseudonymise=pseudonymiser, zone=settings.zone),
        shift_grace_s=settings.directory.shift_grace.seconds if settings.directory is not None else 0.0,
        id_blocks=ruleset.reads("neo.resource.seq_"),
    )
    return Runtime(
        settings=settings,
        config_path=Path(config_path),
        normalisers=normalisers,
        framers=framers,
        ruleset=ruleset,
        directory=directory,
        enricher=enricher,
        correlator=correlator,
        pre_enriched=pre_enriched,
        calendar=calendar,
        responder=responder,
        deliverer=deliverer,
        state=state,
        warnings=tuple(problems.warnings),
        id_scrubber=IdScrubber(settings.pseudonym.id_patterns, pseudonymiser)
        if settings.pseudonym.id_patterns and pseudonymiser is not None else None,
    )


def _check_entitlement_files(settings: Settings, doc, problems: Problems) -> None:
    """The files the least-privilege check reads later, on the pipeline's thread (the
    assignments) or in a job (the account feed): a FIFO, device or folder named there
    is refused now, where it would otherwise hang a lookup or the departed sweep. One
    that is not there yet is the lookup's own error when it is needed, as before."""
    entitlement = settings.entitlement
    named: list[tuple[Path, tuple]] = []
    if entitlement.assignments is not None:
        for kind in ("csv", "sqlite"):
            lookup = getattr(entitlement.assignments, kind)
            if lookup is not None:
                named.append((lookup.path, ("entitlement", "assignments", kind, "path")))
    if entitlement.departed.account_feed is not None:
        named.append((entitlement.departed.account_feed, ("entitlement", "departed", "account_feed")))
    for path, key_path in named:
        try:
            regular_file_stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.add(doc, key_path, f"cannot read {path}: {exc.strerror or exc}")


def _rule_paths(settings: Settings, doc, problems: Problems) -> list[Path]:
    """The rule files and folders to read; a configured one that is missing is a problem
    at its line of the config."""
    paths = [SHIPPED_RULES] if settings.rules.include_shipped else []
    for i, path in enumerate(settings.rules.paths):
        try:
            os.stat(path)
        except FileNotFoundError:
            problems.add(doc, ("rules", "paths", i), f"rules path not found: {path}")
        except OSError as exc:  # a name too long, a folder we may not enter
            problems.add(doc, ("rules", "paths", i), f"cannot read rules path {path}: {exc.strerror}")
        else:
            paths.append(path)
    return paths


def _load_sources(settings: Settings, doc, problems: Problems):
    normalisers: dict[str, Normaliser] = {}
    framers: dict[str, Callable[[], Any]] = {}
    for i, source in enumerate(settings.sources):
        fmt = load_format(source.format, problems, custom=settings.formats, referrer=doc,
                          key_path=("sources", i, "format"), categories=frozenset(settings.categories))
        if fmt is None:
            continue
        normalisers[source.name] = Normaliser(fmt, source.name)
        framers[source.name] = fmt.make_framer
    return normalisers, framers


def daemon_files(settings: Settings, config_path: Path) -> Protected:
    """The daemon's own files, which no source may read: the state directory, the store
    and quarantine, the configuration, and every other file or folder the configuration
    names outside `sources` — keys and secrets, the HR directory and feeds, rules and
    playbooks, the customers' contacts and export manifests (raw PI), the letters'
    spool. Found by walking the settings, so a file a later section adds is covered too."""
    files = [settings.store_path, settings.quarantine_path, config_path]
    files += [Path(f"{settings.store_path}{suffix}") for suffix in ("-wal", "-shm", "-journal")]
    directories = [settings.state_dir]
    for name in (f.name for f in dataclasses.fields(settings) if f.name != "sources"):
        for path in _named_paths(getattr(settings, name)):
            path = path if path.is_absolute() else config_path.parent / path  # as a secret file is read
            if glob.has_magic(str(path)):
                files += map(Path, glob.glob(str(path)))  # export manifests: the ones there now
                continue
            files.append(path)
            try:
                if path.is_dir():  # a folder that exists (playbooks, templates, a spool): all below it
                    directories.append(path)
            except OSError:  # cannot be looked at: a file, as named
                pass
    return Protected.of(directories, files)


def _named_paths(value) -> Iterator[Path]:
    """Every Path in a settings value: dataclass fields, list items, mapping values."""
    if isinstance(value, Path):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _named_paths(getattr(value, f.name))
    elif isinstance(value, (list, tuple, frozenset, set)):
        for item in value:
            yield from _named_paths(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _named_paths(item)


def _guard_sources(settings: Settings, config_path: Path, doc, problems: Problems) -> Settings:
    """Sources that refuse the daemon's own files; a glob or allow_dirs reaching into
    them is a configuration error (the file readers refuse them anyway)."""
    protected = daemon_files(settings, config_path)
    for i, source in enumerate(settings.sources):
        for j, pattern in enumerate(source.paths):
            static = os.path.realpath(static_directory(os.path.abspath(pattern))[0])
            # what it matches now, as far as 10,000; a symlink among them is not the glob's
            # reach but a file in the log folder, refused (and shown in status) when read:
            # one planted there must not block every start and reload
            own = next((m for m in itertools.islice(glob.iglob(str(pattern), recursive=True), 10_000)
                        if not os.path.islink(m) and protected.refuses(os.path.realpath(m))), None)
            if protected.refuses(static) or protected.refuses(os.path.realpath(pattern)) or own is not None:
                problems.add(doc, ("sources", i, "paths", j),
                             "reaches into the daemon's own files (state directory, keys, configuration"
                             + (f": {own}" if own is not None else "") + "): never a source")
        for j, directory in enumerate(source.allow_dirs):
            real = os.path.realpath(directory)
            if protected.refuses(real) or any(inside(d, real) for d in protected.directories):
                problems.add(doc, ("sources", i, "allow_dirs", j),
                             "holds the daemon's own files (state directory, keys, configuration): "
                             "a symlink could reach them; name a narrower directory")
    sources = [source.with_protected(protected) for source in settings.sources]
    return dataclasses.replace(settings, sources=sources)


def _add_cluster_sources(settings: Settings, normalisers: dict) -> frozenset[str]:
    """Events other daemons shipped are ECS documents, decoded as they are."""
    if settings.elastic is None:
        return frozenset()
    from auditd.elastic.ecs_format import EcsDocumentDecoder

    for source in settings.elastic.sources:
        normalisers[source.name] = EcsDocumentDecoder(source.name)
    return frozenset(source.name for source in settings.elastic.sources)
