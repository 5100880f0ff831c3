"""`neo-auditd status`: what the daemon has done and owes, read from its store.

Everything here reads the store through its own read-only connection, so the status
command and the metrics endpoint can run beside a busy daemon: WAL readers never wait
for the writer and never hold it up. Tables written by later stages (incidents,
the reload record) may be missing in an older store; each reader
says what it does then.

The queries shared with the metrics endpoint live here, so that `status` and the
Prometheus page never disagree on what "open" or "overdue" means.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from auditd.config.typed import DEFAULT_ZONE
from auditd.correlate.model import ACTIVE_STATUSES
from auditd.deliver import outbox
from auditd.detect.state import rule_counters
from auditd.detect.suppressions import allowances
from auditd.errors import NeoError
from auditd.ops import runstate
from auditd.ops.cluster_rules import read_costs
from auditd.ops.shipping import ElasticStatus, collect_elastic_status
from auditd.sources.base import SourceReport
from auditd.sources.globs import PathMatcher
from auditd.sources.identity import FileIdentity
from auditd.store.health import read_check
from auditd.store.sqlite import SOURCE_REPORT_KEY
from auditd.store.times import to_db
from auditd.workdays import YearCoverage, coverage, load_calendar


class Settings(Protocol):
    """What status reads of the composed configuration (``auditd.settings.Settings``,
    which sits below ops in the map and is not imported here)."""

    sources: Sequence[Any]  # each with a .name
    elastic: Any  # ElasticSettings or None
    working_days: Any
    zone: dt.tzinfo

log = logging.getLogger("neo_auditd.status")

# The respond stage's steps (store migration 0008): a step is overdue while it is open
# (no closed_at) past its due_at; times are the store's fixed-width text, so text order
# is time order.
STEPS_TABLE = "playbook_steps"
_OVERDUE_STEPS = f"SELECT COUNT(*) FROM {STEPS_TABLE} WHERE closed_at IS NULL AND due_at < ?"
LAST_RELOAD_KEY = "last_reload"  # meta row the daemon writes after every load or reload
MAX_ERROR_CHARS = 2000


class StatusError(NeoError):
    """The store cannot be read (missing, not a database, locked for too long)."""


class FileLag(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes of a checkpointed file not yet committed to the store."""

    source: str
    path: str
    offset: int  # committed: everything before it is in the store
    size: int
    lag_bytes: int
    checkpointed: bool = True  # False: matched by the source's globs, nothing of it committed yet


class RefusedFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    reason: str  # sources.guard.REASONS
    detail: str


class ScanStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What the source's globs found at the daemon's last scan of them."""

    files: int
    unmatched_globs: list[str]  # globs that match nothing: a typo, or logs not there yet
    refused: list[RefusedFile]


class SourceStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    configured: bool | None  # None when no config was given to compare with
    events: int
    quarantined: int
    skipped: int
    last_event_at: dt.datetime | None  # event time, UTC
    lag_bytes: int
    files: list[FileLag]
    scan: ScanStatus | None = None  # None until the daemon has scanned this source's globs


class ReloadStatus(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    at: dt.datetime
    error: str | None = None
    rules_in_force: int | None = None  # after this attempt: the new set's, or the old one still running


class CalendarStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The working-day calendar over the next 12 months, as the config defines it."""

    years: list[YearCoverage]  # source None: only the every-day fallback answers for that year
    problem: str | None = None  # the override file could not be read (the daemon would not start)


class RuleStateStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A stateful rule version's learned state: evicted keys are detections missed."""

    rule_id: str
    rule_hash: str
    keys: int
    evicted: int
    bad_rows: int


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    last_started: dt.datetime | None
    last_finished: dt.datetime | None
    last_ok: bool | None
    last_error: str | None
    runs: int


class FailedMessage(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    key: str
    route: str
    audience: str
    attempts: int
    error: str | None


class OutboxStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The deliver stage's outbox: what waits, what failed (each escalated), what repeated."""

    by_state: dict[str, int]
    backlog: int  # held, pending, sending, digested
    failed: int
    possible_repeats: int  # sent again after a crash while in flight
    oldest_waiting: dt.datetime | None
    failed_messages: list[FailedMessage]  # the latest, at most 10


class AllowanceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A rule file's exception or a store's suppression: an alert held back on purpose."""

    source: str  # 'rule file' or 'store'
    name: str
    rule_id: str
    match: str
    owner: str
    reason: str
    expires: str
    where: str
    active: bool


class Status(msgspec.Struct, frozen=True, kw_only=True):
    generated_at: dt.datetime
    store_path: str
    sources: list[SourceStatus]
    rules_loaded: int | None
    open_incidents: dict[str, int]  # tier -> incidents in an active status
    playbook_steps_overdue: int | None = None  # None: the steps table could not be read
    last_reload: ReloadStatus | None
    rule_state: list[RuleStateStatus] = []
    jobs: list[JobStatus] = []
    allowances: list[AllowanceStatus] = []  # exceptions and suppressions, together
    store_check: dict | None = None  # the last or running integrity check (store/health.py)
    daemon: dict | None = None  # what the running daemon says it does (ops/runstate.py): running, holding back
    elasticsearch: ElasticStatus | None = None  # None: no shipping configured or ever recorded
    cluster_rules: dict | None = None  # the `scope: cluster` rules' costs (ops/cluster_rules.py)
    working_days: CalendarStatus | None = None  # None: no config given
    outbox: OutboxStatus | None = None  # None: a store from before the deliver stage


# -- connections and shared queries ------------------------------------------------------
def connect_readonly(store_path: Path, *, timeout_s: float = 2.0) -> sqlite3.Connection:
    """A read-only connection; never creates the database file.

    check_same_thread is off because the metrics endpoint answers on its own threads;
    callers still use one connection from one thread at a time.
    """
    uri = Path(store_path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    return conn


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def rule_state(conn: sqlite3.Connection) -> list[RuleStateStatus]:
    """Per stateful rule version: keys held, keys evicted over the cap, unreadable rows."""
    if not table_exists(conn, "detector_rules"):
        return []
    return [RuleStateStatus(rule_id=rid, rule_hash=rhash, keys=keys, evicted=evicted, bad_rows=bad)
            for rid, rhash, keys, evicted, bad in rule_counters(conn)]


def job_runs(conn: sqlite3.Connection) -> list[JobStatus]:
    if not table_exists(conn, "jobs"):
        return []
    rows = conn.execute("SELECT job_id, last_started, last_finished, last_ok, last_error, runs FROM jobs ORDER BY job_id")
    return [JobStatus(job_id=job_id, last_started=_utc(started), last_finished=_utc(finished),
                      last_ok=None if ok is None else bool(ok), last_error=error, runs=runs)
            for job_id, started, finished, ok, error, runs in rows]


def _store_check(conn: sqlite3.Connection) -> dict | None:
    report = read_check(conn) if table_exists(conn, "meta") else None
    if report is None:
        return None
    return {"state": report.state, "started_at": report.started_at, "finished_at": report.finished_at,
            "tables_done": report.tables_done, "tables_total": report.tables_total,
            "problems": report.problems, "seconds": report.seconds}


def incident_counts(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(tier, status, count) of every incident; empty before the correlate stage's tables exist."""
    if not table_exists(conn, "incidents"):
        return []
    rows = conn.execute("SELECT tier, status, COUNT(*) FROM incidents GROUP BY tier, status ORDER BY tier, status")
    return [(str(tier), str(status), int(count)) for tier, status, count in rows]


def open_incidents_by_tier(counts: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for tier, status, count in counts:
        if status in ACTIVE_STATUSES:
            out[tier] = out.get(tier, 0) + count
    return dict(sorted(out.items()))


def overdue_steps(conn: sqlite3.Connection, now: dt.datetime) -> int | None:
    """Playbook steps open past their due time; None when they cannot be counted."""
    if not table_exists(conn, STEPS_TABLE):
        return 0  # a store from before the respond stage: nothing is due yet
    try:
        return int(conn.execute(_OVERDUE_STEPS, (to_db(now),)).fetchone()[0])
    except sqlite3.OperationalError as exc:
        # never a reassuring 0 when the count is unknown
        log.warning("cannot count overdue playbook steps", extra={"error": str(exc)})
        return None


def file_lags(conn: sqlite3.Connection, sources: Sequence[Any] = (),
              scans: dict[str, ScanStatus] | None = None) -> list[FileLag]:
    """Lag of every checkpointed file still on disk under the path it was last seen at,
    then of the regular files the globs of `sources` match: one a checkpoint knows by its
    inode (renamed by a rotation) counts from that checkpoint, one no checkpoint knows
    counts whole -- a daemon holding back before its first commit (a full disk), or
    behind on a new file, shows its true backlog, not "0 B". Files a first start skips
    (``start_at: end`` while the store has no checkpoint at all) and files the last scan
    refused are not counted (`scans`: their reports, when the caller has read them)."""
    out: list[FileLag] = []
    places: dict[str, dict[tuple[int, int], int]] = {}  # source -> (device, inode) -> committed offset
    whole_paths: dict[str, set[str]] = {}  # source -> paths of checkpoints without an inode (whole files)
    shown: set[tuple[str, int, int]] = set()

    def lag_of(source: str, path: str, st: os.stat_result, offset: int) -> None:
        # Smaller than the offset: truncated in place (copytruncate); all of it is unread.
        lag = st.st_size - offset if st.st_size >= offset else st.st_size
        out.append(FileLag(source=source, path=path, offset=offset, size=st.st_size, lag_bytes=lag))
        shown.add((source, st.st_dev, st.st_ino))

    rows = conn.execute("SELECT source, fingerprint, path, offset FROM checkpoints ORDER BY source, path")
    for source, fingerprint, path, offset in rows:
        identity = FileIdentity.parse(fingerprint)
        if identity is None:
            whole_paths.setdefault(source, set()).add(path)
        else:
            places.setdefault(source, {})[(identity.device, identity.inode)] = offset
        try:
            st = os.stat(path)
        except OSError:
            continue  # rotated away or deleted: nothing left to read there
        if identity is not None and (identity.device, identity.inode) != (st.st_dev, st.st_ino):
            continue  # the path now holds another file (after rotation); not this checkpoint's
        lag_of(source, path, st, offset)
    first_start = not places and not whole_paths
    if scans is None:
        scans = _scans(conn) if sources else {}
    for source in sources:
        patterns = getattr(source, "paths", None)
        if not patterns or (first_start and getattr(source, "start_at", "beginning") == "end"):
            continue
        known = places.get(source.name, {})
        scan = scans.get(source.name)
        refused = {r.path for r in scan.refused} if scan is not None else set()
        for path in PathMatcher(patterns).scan():
            if path in refused or path in whole_paths.get(source.name, ()):
                continue
            try:
                st = os.lstat(path)  # a symlink is judged by the tailer (guard.py), not followed here
            except OSError:
                continue
            place = (st.st_dev, st.st_ino)
            if not stat.S_ISREG(st.st_mode) or (source.name, *place) in shown:
                continue
            if place in known:
                lag_of(source.name, path, st, known[place])
            else:
                out.append(FileLag(source=source.name, path=path, offset=0, size=st.st_size,
                                   lag_bytes=st.st_size, checkpointed=False))
    return out


def record_reload(conn: sqlite3.Connection, ok: bool, at: dt.datetime, error: str | None = None, *,
                  rules_in_force: int | None = None) -> None:
    """Write the result of a load or reload where `status` reads it (one autocommitted row)."""
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS] + "…"
    record = ReloadStatus(ok=ok, at=at.astimezone(dt.timezone.utc), error=error, rules_in_force=rules_in_force)
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (LAST_RELOAD_KEY, msgspec.json.encode(record).decode()),
    )


def read_last_reload(conn: sqlite3.Connection) -> ReloadStatus | None:
    if not table_exists(conn, "meta"):
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (LAST_RELOAD_KEY,)).fetchone()
    if row is None:
        return None
    try:
        return msgspec.json.decode(row[0], type=ReloadStatus)
    except msgspec.ValidationError as exc:
        log.warning("ignoring a malformed last_reload record", extra={"error": str(exc)})
        return None


# -- the status ----------------------------------------------------------------------------
def collect_status(store_path: Path, settings: Settings | None, now: dt.datetime, *,
                   rules_loaded: int | None = None, ruleset=None) -> Status:
    """Read the store at `store_path`; `settings`, when given, adds sources not yet seen.

    `rules_loaded` defaults to the count the daemon recorded with its last (re)load.
    `ruleset`, when given, adds its rule files' exceptions to the store's suppressions.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not Path(store_path).is_file():
        raise StatusError(f"{store_path}: no store there (has the daemon run with this config?)")
    try:
        conn = connect_readonly(store_path)
    except sqlite3.Error as exc:
        raise StatusError(f"{store_path}: cannot open the store: {exc}") from exc
    try:
        configured = [s.name for s in settings.sources] if settings is not None else None
        last_reload = read_last_reload(conn)
        if rules_loaded is None and last_reload is not None:
            rules_loaded = last_reload.rules_in_force
        return Status(
            generated_at=now.astimezone(dt.timezone.utc),
            store_path=str(store_path),
            sources=_sources(conn, configured, settings.sources if settings is not None else ()),
            rules_loaded=rules_loaded,
            open_incidents=open_incidents_by_tier(incident_counts(conn)),
            playbook_steps_overdue=overdue_steps(conn, now),
            last_reload=last_reload,
            rule_state=rule_state(conn),
            jobs=job_runs(conn),
            allowances=[AllowanceStatus(**{f: getattr(a, f) for f in AllowanceStatus.__struct_fields__})
                        for a in allowances(ruleset, conn, now, settings.zone if settings is not None
                                            else DEFAULT_ZONE)],
            store_check=_store_check(conn),
            daemon=runstate.read(store_path, now),
            elasticsearch=_elastic(conn, settings, now),
            cluster_rules=read_costs(conn),
            working_days=calendar_status(settings, now) if settings is not None else None,
            outbox=outbox_status(conn),
        )
    except sqlite3.DatabaseError as exc:
        raise StatusError(f"{store_path}: cannot read the store: {exc}") from exc
    finally:
        conn.close()


def outbox_status(conn: sqlite3.Connection) -> OutboxStatus | None:
    """The outbox as status and the metrics show it (deliver/outbox.py's queries)."""


    if not table_exists(conn, "outbox"):
        return None
    by_state: dict[str, int] = {}
    for (_, state), n in outbox.counts(conn).items():
        by_state[state] = by_state.get(state, 0) + n
    repeats = conn.execute("SELECT COUNT(*) FROM outbox WHERE possible_repeat = 1").fetchone()[0]
    failed = [FailedMessage(id=i, key=key, route=route, audience=audience, attempts=attempts, error=error)
              for i, key, route, audience, attempts, error in conn.execute(
                  "SELECT id, wire_key, route, audience, attempts, last_error FROM outbox WHERE state = 'failed'"
                  " ORDER BY id DESC LIMIT 10")]
    return OutboxStatus(by_state=dict(sorted(by_state.items())),
                        backlog=sum(by_state.get(s, 0) for s in outbox.OPEN_STATES),
                        failed=by_state.get("failed", 0), possible_repeats=repeats,
                        oldest_waiting=outbox.oldest_open(conn), failed_messages=failed)


def _sources(conn: sqlite3.Connection, configured: list[str] | None, sources: Sequence[Any] = ()) -> list[SourceStatus]:
    stats = {}
    if table_exists(conn, "source_stats"):
        rows = conn.execute("SELECT source, events, quarantined, skipped, last_event_at FROM source_stats")
        stats = {row[0]: row[1:] for row in rows}
    scans = _scans(conn)
    lags: dict[str, list[FileLag]] = {}
    for lag in file_lags(conn, sources, scans) if table_exists(conn, "checkpoints") else []:
        lags.setdefault(lag.source, []).append(lag)
    # configured sources in config order first, then any the config no longer names
    names = list(configured or []) + sorted((set(stats) | set(lags)) - set(configured or []))
    out = []
    for name in names:
        events, quarantined, skipped, last_event_at = stats.get(name, (0, 0, 0, None))
        files = lags.get(name, [])
        out.append(SourceStatus(
            name=name,
            configured=None if configured is None else name in configured,
            events=events, quarantined=quarantined, skipped=skipped,
            last_event_at=_utc(last_event_at),
            lag_bytes=sum(f.lag_bytes for f in files),
            files=files,
            scan=scans.get(name),
        ))
    return out


def _elastic(conn: sqlite3.Connection, settings: Settings | None, now: dt.datetime) -> ElasticStatus | None:
    elastic = settings.elastic if settings is not None else None
    return collect_elastic_status(conn, now, data_stream=elastic.events_data_stream if elastic else None,
                                  shipping=elastic is not None and elastic.ship.enabled)


def calendar_status(settings: Settings, now: dt.datetime) -> CalendarStatus:
    """The config's calendar over the next 12 months (its override file read afresh)."""
    from auditd.config.located import Problems

    problems = Problems()
    calendar = load_calendar(settings.working_days, problems)
    if calendar is None:
        return CalendarStatus(years=[], problem=str(problems.items[0]) if problems.items else "unreadable")
    return CalendarStatus(years=coverage(calendar, now.astimezone(settings.zone).date()))


def _scans(conn: sqlite3.Connection) -> dict[str, ScanStatus]:
    """The sources' last scan reports (meta rows the pipeline writes)."""
    if not table_exists(conn, "meta"):
        return {}
    out: dict[str, ScanStatus] = {}
    rows = conn.execute("SELECT key, value FROM meta WHERE key >= ? AND key < ?",
                        (SOURCE_REPORT_KEY, SOURCE_REPORT_KEY[:-1] + chr(ord(SOURCE_REPORT_KEY[-1]) + 1)))
    for key, value in rows:
        try:
            report = msgspec.json.decode(value, type=SourceReport)
        except msgspec.MsgspecError as exc:
            log.warning("ignoring a malformed source report", extra={"error": str(exc)})
            continue
        out[key[len(SOURCE_REPORT_KEY):]] = ScanStatus(
            files=report.files, unmatched_globs=list(report.unmatched),
            refused=[RefusedFile(path=p, reason=r, detail=d) for p, r, d in report.refused])
    return out


def _utc(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    value = dt.datetime.fromisoformat(text)
    # the store writes aware times; a naive one would be a bug upstream, read as UTC
    return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)
