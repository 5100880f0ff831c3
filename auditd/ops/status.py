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
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import msgspec

from auditd.config.typed import DEFAULT_ZONE
from auditd.correlate.model import ACTIVE_STATUSES
from auditd.deliver import outbox
from auditd.detect.state import rule_counters
from auditd.detect.suppressions import allowances
from auditd.errors import NeoError
from auditd.ops import runstate
from auditd.ops.cluster_rules import read_costs, render_lines as cluster_rule_lines
from auditd.ops.shipping import RUNNING, ElasticStatus, collect_elastic_status
from auditd.sources.base import SourceReport
from auditd.sources.identity import FileIdentity
from auditd.store.health import read_check
from auditd.store.sqlite import SOURCE_REPORT_KEY
from auditd.store.times import to_db
from auditd.workdays import YearCoverage, coverage, load_calendar, uncovered



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


def file_lags(conn: sqlite3.Connection) -> list[FileLag]:
    """Lag of every checkpointed file still on disk under the path it was last seen at."""
    out: list[FileLag] = []
    rows = conn.execute("SELECT source, fingerprint, path, offset FROM checkpoints ORDER BY source, path")
    for source, fingerprint, path, offset in rows:
        try:
            st = os.stat(path)
        except OSError:
            continue  # rotated away or deleted: nothing left to read there
        identity = FileIdentity.parse(fingerprint)
        if identity is not None and (identity.device, identity.inode) != (st.st_dev, st.st_ino):
            continue  # the path now holds another file (after rotation); not this checkpoint's
        # Smaller than the offset: truncated in place (copytruncate); all of it is unread.
        lag = st.st_size - offset if st.st_size >= offset else st.st_size
        out.append(FileLag(source=source, path=path, offset=offset, size=st.st_size, lag_bytes=lag))
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
            sources=_sources(conn, configured),
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


def _sources(conn: sqlite3.Connection, configured: list[str] | None) -> list[SourceStatus]:
    stats = {}
    if table_exists(conn, "source_stats"):
        rows = conn.execute("SELECT source, events, quarantined, skipped, last_event_at FROM source_stats")
        stats = {row[0]: row[1:] for row in rows}
    lags: dict[str, list[FileLag]] = {}
    for lag in file_lags(conn) if table_exists(conn, "checkpoints") else []:
        lags.setdefault(lag.source, []).append(lag)
    scans = _scans(conn)
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


# -- rendering ----------------------------------------------------------------------------
def render_status(status: Status, zone: ZoneInfo = DEFAULT_ZONE) -> str:
    """A plain-text report for a terminal; times in `zone` (Asia/Shanghai by default)."""
    lines = [
        f"neo-auditd status at {_when(status.generated_at, zone)}",
        f"store:        {status.store_path}",
        f"rules loaded: {'unknown' if status.rules_loaded is None else status.rules_loaded}",
        f"last reload:  {_reload_line(status.last_reload, zone)}",
        f"daemon:       {_daemon_line(status.daemon, zone)}",
        *([f"deliver:      {_deliver_line(status.daemon, zone)}"] if status.daemon and status.daemon.get("deliver")
          else []),
        f"store check:  {_check_line(status.store_check, zone)}",
        "",
        "sources:",
    ]
    if status.sources:
        lines += _indent(_table(("SOURCE", "EVENTS", "QUARANTINED", "SKIPPED", "LAST EVENT", "LAG"),
                                [_source_row(s, status.generated_at, zone) for s in status.sources]))
        files = [(f.source, f.path, f"{f.offset:,}", f"{f.size:,}", _bytes(f.lag_bytes))
                 for s in status.sources for f in s.files]
        if files:
            lines += ["", "files:"] + _indent(_table(("SOURCE", "PATH", "COMMITTED", "SIZE", "LAG"), files))
        lines += _scan_lines(status.sources)
    else:
        lines.append("  none yet")
    if status.elasticsearch is not None:
        lines += [""] + _elastic_lines(status.elasticsearch, status.generated_at, zone)
    if status.cluster_rules:
        lines += [""] + cluster_rule_lines(status.cluster_rules)
    lines += ["", "open incidents: " + _incident_line(status.open_incidents)]
    overdue = status.playbook_steps_overdue
    lines.append(f"overdue playbook steps: {'unknown' if overdue is None else overdue}")
    if status.outbox is not None:
        lines += [""] + _outbox_lines(status.outbox, status.generated_at, zone)
    if status.rule_state:
        lines += ["", "rule state (evicted keys are detections missed: raise the rule's max_keys):"]
        lines += _indent(_table(("RULE", "KEYS", "EVICTED", "UNREADABLE"),
                                [(r.rule_id, f"{r.keys:,}", f"{r.evicted:,}", f"{r.bad_rows:,}")
                                 for r in status.rule_state]))
    if status.allowances:
        lines += ["", "exceptions and suppressions (alerts held back on purpose):"]
        lines += _indent(_table(("RULE", "NAME", "MATCH", "OWNER", "EXPIRES", "STATE", "WHERE"), [
            (a.rule_id, a.name, _clip(a.match, 40), a.owner, a.expires, "in force" if a.active else "expired",
             a.where) for a in status.allowances]))
    if status.jobs:
        lines += ["", "jobs:"]
        lines += _indent(_table(("JOB", "LAST RUN", "RESULT", "RUNS"), [
            (j.job_id, _when(j.last_started, zone),
             "running or cut short" if j.last_finished is None or (j.last_started and j.last_finished < j.last_started)
             else ("ok" if j.last_ok else f"failed: {_clip(j.last_error or '', 60)}"), f"{j.runs:,}")
            for j in status.jobs]))
    if status.working_days is not None:
        lines += [""] + _calendar_lines(status.working_days)
    return "\n".join(lines) + "\n"


def _elastic_lines(es: ElasticStatus, now: dt.datetime, zone: ZoneInfo) -> list[str]:
    record, backlog = es.record, es.backlog
    head = f"elasticsearch: {es.data_stream or 'events'}" + ("" if es.shipping else " (shipping off in this config)")
    state = es.state.upper() if es.state not in (RUNNING, "stopped") else es.state
    if record is not None:
        state += f" since {_when(record.since, zone)} (recorded {_ago(record.recorded_at, now)})"
    if es.state == "unknown":
        state += ": no word from the shipper lately; is the daemon running?"
    elif es.state == RUNNING:
        state += ", caught up" if backlog.events == 0 else ", behind"
    oldest = ""
    if backlog.oldest_event_at is not None:
        oldest = f"; oldest event {_when(backlog.oldest_event_at, zone)} ({_ago(backlog.oldest_event_at, now)})"
    lines = [head, f"  shipper:      {state}",
             f"  backlog:      {backlog.events:,} events, {_bytes(backlog.bytes)}{oldest}"]
    if record is not None and record.last_error is not None:
        lines.append(f"  last error:   {_when(record.last_error_at, zone)}: {record.last_error}")
    if record is not None:
        lines.append(f"  last shipped: {_when(record.last_shipped_at, zone)}")
    lines.append(f"  dead letters: {es.dead_letters:,}")
    return lines


def _outbox_lines(box: OutboxStatus, now: dt.datetime, zone: ZoneInfo) -> list[str]:
    states = ", ".join(f"{state} {n:,}" for state, n in box.by_state.items()) or "empty"
    oldest = "" if box.oldest_waiting is None else \
        f"; oldest waiting since {_when(box.oldest_waiting, zone)} ({_ago(box.oldest_waiting, now)})"
    lines = [f"outbox: {states}", f"  backlog:      {box.backlog:,} messages{oldest}",
             f"  possible repeats after a crash: {box.possible_repeats:,}"]
    if box.failed:
        lines.append(f"  FAILED:       {box.failed:,} (escalated; see `neo-auditd outbox list --state failed`, "
                     "resend with `neo-auditd outbox retry ID`)")
        lines += [f"    {m.id}  {m.audience}  {m.route}  after {m.attempts} attempt(s): {_clip(m.error or '', 70)}"
                  for m in box.failed_messages]
    return lines


def _calendar_lines(cal: CalendarStatus) -> list[str]:
    if cal.problem is not None:
        return [f"working days: UNREADABLE: {cal.problem}"]
    parts = [f"{y.year} {y.source}" if y.source else f"{y.year} NOT COVERED" for y in cal.years]
    lines = ["working days: " + ", ".join(parts)]
    missing = uncovered(cal.years)
    if missing:
        lines.append(f"  deadlines in {', '.join(map(str, missing))} count every calendar day as a working day "
                     "(early, never late): add the year to working_days.override_file")
    return lines


def _daemon_line(daemon: dict | None, zone: ZoneInfo) -> str:
    if daemon is None:
        return "no record (has it run with this store?)"
    since = daemon.get("since")
    since_text = _when(dt.datetime.fromisoformat(since), zone) if since else "?"
    if not daemon.get("alive") or daemon.get("state") == "stopped":
        return f"not running (stopped {since_text})"
    if daemon.get("state") == "holding_back":
        text = f"HOLDING BACK since {since_text}: {daemon.get('reason')}; no source is read, nothing is lost"
    else:
        text = f"running since {since_text} (pid {daemon.get('pid')})"
    return text + (" -- record stale: the daemon may be stuck" if daemon.get("stale") else "")


def _deliver_line(daemon: dict, zone: ZoneInfo) -> str:
    """The daemon's deliver process (jobs/deliver_supervisor.py): running, restarting, stopped."""
    record = daemon["deliver"]
    if not daemon.get("alive") or daemon.get("state") == "stopped" or record.get("state") == "stopped":
        text = "process not running"
    elif record.get("state") == "restarting":
        text = "process RESTARTING"
    else:
        since = record.get("since")
        text = f"process running (pid {record.get('pid')}" + \
            (f", since {_when(dt.datetime.fromisoformat(since), zone)})" if since else ")")
    restarts = int(record.get("restarts") or 0)
    if restarts:
        at = record.get("last_exit_at")
        text += (f"; restarted {restarts} time{'s' if restarts != 1 else ''}, last after it died "
                 f"({record.get('last_exit')}) at {_when(dt.datetime.fromisoformat(at), zone) if at else '?'}")
    return text


def _check_line(check: dict | None, zone: ZoneInfo) -> str:
    if check is None:
        return "not run yet"
    started = _when(dt.datetime.fromisoformat(check["started_at"]), zone)
    if check["state"] == "running":
        return f"running since {started}: {check['tables_done']} of {check['tables_total']} tables checked"
    if check["state"] == "ok":
        return f"ok ({started}, {check['seconds']} s)"
    return f"DAMAGED ({started}): {_clip('; '.join(check['problems']), 120)} -- see README, 'Backups and restore'"


def _scan_lines(sources: list[SourceStatus]) -> list[str]:
    """Globs that match nothing and files refused: what an operator must look at."""
    out: list[str] = []
    for s in sources:
        if s.scan is None:
            continue
        out += [f"{s.name}: glob {glob} matches no file" for glob in s.scan.unmatched_globs]
        out += [f"{s.name}: not reading {f.path}: {f.detail}" for f in s.scan.refused]
    return ["", "source files not read:"] + _indent(out) if out else []


def _when(value: dt.datetime | None, zone: ZoneInfo) -> str:
    if value is None:
        return "never"
    return value.astimezone(zone).isoformat(sep=" ", timespec="seconds")


def _ago(then: dt.datetime, now: dt.datetime) -> str:
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "in the future"  # clock skew between the log's host and this one
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _source_row(s: SourceStatus, now: dt.datetime, zone: ZoneInfo) -> tuple[str, ...]:
    name = s.name if s.configured is not False else f"{s.name} (not in config)"
    last = "never" if s.last_event_at is None else f"{_when(s.last_event_at, zone)} ({_ago(s.last_event_at, now)})"
    return (name, f"{s.events:,}", f"{s.quarantined:,}", f"{s.skipped:,}", last, _bytes(s.lag_bytes))


def _reload_line(reload: ReloadStatus | None, zone: ZoneInfo) -> str:
    if reload is None:
        return "not recorded"
    if reload.ok:
        return f"ok at {_when(reload.at, zone)}"
    problems = (reload.error or "").splitlines()
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"FAILED at {_when(reload.at, zone)}" + (f": {problems[0]}{more}" if problems else "")


def _incident_line(by_tier: dict[str, int]) -> str:
    if not by_tier:
        return "none"
    return ", ".join(f"{tier} {count}" for tier, count in by_tier.items())


def _bytes(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    size, i = float(n), 0
    while size >= 1024 and i < len(units) - 1:
        size, i = size / 1024, i + 1
    return f"{n} B" if i == 0 else f"{size:.1f} {units[i]}"


def _width(text: str) -> int:
    # Source names and paths may be Chinese: wide characters take two terminal columns.
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(_width(h), *(_width(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c + " " * (w - _width(c)) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers)] + [line(row) for row in rows]


def _indent(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"
