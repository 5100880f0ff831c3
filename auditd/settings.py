"""The daemon's configuration file, as frozen typed settings.

Each stage keeps its own section type beside its code (sources, decode, correlate…);
this module, above the stages beside ``runtime.py``, composes them into one `Settings`
and loads a file with every problem located and reported together. The mechanism it
uses (YAML that remembers where each value came from, typed conversion) is ``config/``,
on the ground floor, which imports no stage.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from auditd.config.located import Doc, Problems, load_yaml_file
from auditd.config.typed import MISSING, Duration, convert, unknown_zone
from auditd.correlate.settings import CorrelateSettings
from auditd.decode.settings import FormatSettings
from auditd.deliver.settings import DeliverSettings
from auditd.elastic.settings import ElasticSettings
from auditd.entitlement.settings import EntitlementSettings
from auditd.ops.settings import OpsSettings
from auditd.respond.settings import RespondSettings
from auditd.sources.settings import FileSourceSettings
from auditd.workdays import WorkdaySettings

def _shipped_rules() -> Path:
    """rules/ of the checkout (editable install), else the copy a wheel installed."""
    checkout = Path(__file__).resolve().parents[1] / "rules"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "neo-auditd" / "rules"


SHIPPED_RULES = _shipped_rules()


@dataclass(frozen=True, slots=True)
class StoreSettings:
    path: Path | None = None  # default: <state_dir>/neo-auditd.db
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    keep_events: bool = True  # events are evidence; retention purges them later
    # The start-up integrity check (PRAGMA quick_check, ~1 s per 200 MB) runs before
    # the daemon reads anything on a store up to this size; a larger one starts at
    # once and is checked in the background, its progress in `status`.
    startup_check_max_bytes: int = 256 * 1024 * 1024
    # The store never grows past this (PRAGMA max_page_count): at the cap the daemon holds
    # back and says so, as on a full disk, until retention frees pages or the cap is raised
    # (SIGHUP). None: only the disk limits it.
    max_bytes: int | None = None

    def check(self):
        if self.startup_check_max_bytes < 0:
            yield "startup_check_max_bytes", "must be 0 or more"
        if self.max_bytes is not None and self.max_bytes < 1024 * 1024:
            yield "max_bytes", "must be at least 1 MiB (1048576)"


@dataclass(frozen=True, slots=True)
class PseudonymSettings:
    key_file: Path  # HMAC-SHA-256 key; never logged
    # Recently seen ids' pseudonyms are kept (~200 B each, so ~100 MB when full): an HMAC
    # costs ~1 us and a cached one ~0.1-0.5 us, and staff keep returning to the same
    # customers. Size it to the ids (customers, addresses, ...) seen in a few days.
    cache_size: int = 524_288
    # what the company's raw customer ids look like (RE2 patterns, e.g. '\bC\d{8}\b'): free
    # text the commands keep for good (notes, reasons, report findings, assignees) that
    # holds one is refused, as a phone number or an e-mail address is
    id_patterns: tuple[str, ...] = ()

    def check(self):
        if self.cache_size < 1:
            yield "cache_size", "must be at least 1"
        from auditd.config.regex import RegexError, compile_regex

        for i, pattern in enumerate(self.id_patterns):
            try:
                compiled = compile_regex(pattern)
            except RegexError as exc:
                yield ("id_patterns", i), str(exc)
                continue
            if compiled.search(""):
                yield ("id_patterns", i), "matches empty text, so it would refuse every note; anchor it to the id"


@dataclass(frozen=True, slots=True)
class DirectorySettings:
    path: Path
    reload_check_s: float = 5.0
    # an access this long before a shift starts or after it ends is still on shift
    # (neo.actor.off_shift false): overtime and early starts are work, not anomalies
    shift_grace: Duration = Duration(3600.0)

    def check(self):
        if not 0 <= self.shift_grace.seconds <= 12 * 3600:
            yield "shift_grace", "must be between 0 and 12h"
        if not 0.1 <= self.reload_check_s <= 86400:  # also NaN
            yield "reload_check_s", "must be between 0.1 and 86400 (seconds between looks at the file)"


@dataclass(frozen=True, slots=True)
class RulesSettings:
    paths: list[Path] = field(default_factory=list)  # operator files and folders, after the shipped ones
    include_shipped: bool = True


@dataclass(frozen=True, slots=True)
class CategorySettings:
    sensitive: bool = False
    description: str = ""


DEFAULT_CATEGORIES = {
    "identity": CategorySettings(False, "name, gender, birthday, id numbers"),
    "contact": CategorySettings(False, "phone, address, address book"),
    "media": CategorySettings(False, "photos, calendar"),
    "property": CategorySettings(True, "transactions, balance, points, coupons"),
    "location": CategorySettings(True, "precise location"),
    "device": CategorySettings(False, "IMEI, MAC, Android ID, IDFA"),
    "biometric": CategorySettings(True, "face"),
    "order": CategorySettings(False, "orders and delivery"),
}


@dataclass(frozen=True, slots=True)
class QuarantineSettings:
    path: Path | None = None  # default: <state_dir>/quarantine.jsonl


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    batch_records: int = 20_000  # records per transaction; bigger batches, fewer fsyncs
    max_batch_delay_s: float = 0.5
    # how often stateful rules may act with no event in hand (a window closing)
    tick_every: Duration = field(default_factory=lambda: Duration(60.0))
    # After SIGTERM, a stage stuck mid-batch is abandoned after this long (the batch is
    # read again at the next start); below the unit's TimeoutStopSec=30, so that systemd
    # never needs its SIGKILL.
    stop_timeout_s: float = 20.0
    # worker processes for decode, enrich and the rules' conditions in `run` and `replay`
    # (issue 19): 1 is one process, as before; 0 is one per core. Read at start.
    workers: int = 1

    def check(self):
        if self.batch_records < 1:
            yield "batch_records", "must be at least 1"
        if not 0 <= self.workers <= 256:
            yield "workers", "must be between 0 (one per core) and 256"
        if self.tick_every.seconds <= 0:
            yield "tick_every", "must be more than 0"
        if self.max_batch_delay_s < 0:
            yield "max_batch_delay_s", "must not be negative"
        if not 1 <= self.stop_timeout_s <= 3600:
            yield "stop_timeout_s", f"expected 1 to 3600 seconds, got {self.stop_timeout_s:g}"


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path
    sources: list[FileSourceSettings]
    pseudonym: PseudonymSettings
    directory: DirectorySettings | None = None
    timezone: str = "Asia/Shanghai"
    formats: dict[str, FormatSettings] = field(default_factory=dict)
    categories: dict[str, CategorySettings] = field(default_factory=lambda: dict(DEFAULT_CATEGORIES))
    rules: RulesSettings = field(default_factory=RulesSettings)
    entitlement: EntitlementSettings = field(default_factory=EntitlementSettings)
    working_days: WorkdaySettings = field(default_factory=WorkdaySettings)
    correlate: CorrelateSettings = field(default_factory=CorrelateSettings)
    respond: RespondSettings = field(default_factory=RespondSettings)
    deliver: DeliverSettings = field(default_factory=DeliverSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    ops: OpsSettings = field(default_factory=OpsSettings)
    elastic: ElasticSettings | None = None  # ship to, and read from, an Elasticsearch cluster

    def check(self):
        why = unknown_zone(self.timezone)
        if why:
            yield "timezone", why
        names = [s.name for s in self.sources]
        for i, name in enumerate(names):
            if names.index(name) != i:
                yield ("sources", i, "name"), f"duplicate source name {name!r}"
        # checkpoints are keyed by source name: file and cluster sources share one namespace
        for i, source in enumerate(self.elastic.sources if self.elastic else ()):
            if source.name in names:
                yield ("elastic", "sources", i, "name"), f"source name {source.name!r} is also a file source"

    def with_state_dir(self, state_dir: Path) -> "Settings":
        """These settings with everything the daemon keeps under `state_dir` kept under
        another folder instead (`--state-dir`: a copy of the store for a trial): the store,
        the quarantine file, rendered reports and notices, the deliver spool, even where
        the config names them elsewhere, so that a trial never writes where production
        keeps its records."""
        import dataclasses

        return dataclasses.replace(
            self, state_dir=Path(state_dir), store=dataclasses.replace(self.store, path=None),
            quarantine=dataclasses.replace(self.quarantine, path=None),
            respond=dataclasses.replace(self.respond, output_dir=None),
            deliver=dataclasses.replace(self.deliver, spool=None))

    @property
    def store_path(self) -> Path:
        return self.store.path or self.state_dir / "neo-auditd.db"

    @property
    def quarantine_path(self) -> Path:
        return self.quarantine.path or self.state_dir / "quarantine.jsonl"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def rule_paths(self) -> list[Path]:
        return ([SHIPPED_RULES] if self.rules.include_shipped else []) + list(self.rules.paths)

    def sensitive_categories(self) -> frozenset[str]:
        return frozenset(name for name, c in self.categories.items() if c.sensitive)


def load_settings(path: Path, problems: Problems) -> tuple[Settings | None, Doc | None]:
    """Load the config file; every problem is added to `problems`.

    Settings with any problem are not returned: every later loader (formats, directory,
    rules, key) reads them, and a half-checked value (an unknown zone, a list holding a
    failed item) is what turned a typo into a crash.
    """
    doc = load_yaml_file(Path(path), problems)
    if doc is None:
        return None, None
    before = len(problems.items)
    settings = convert(Settings, doc.data, doc, (), problems)
    if settings is MISSING or len(problems.items) > before:
        return None, doc
    return settings, doc


def with_overrides(settings: Settings, **changes) -> Settings:
    return dataclasses.replace(settings, **changes)


__all__ = ["Settings", "load_settings", "Duration"]
