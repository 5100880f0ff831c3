"""`neo-auditd status` as text: what `collect_status` read, rendered for a terminal, times
in the configured zone (Asia/Shanghai by default). `--json` prints the `Status` itself."""

from __future__ import annotations

import datetime as dt
import unicodedata
from zoneinfo import ZoneInfo

from auditd.config.typed import DEFAULT_ZONE
from auditd.ops.cluster_rules import render_lines as cluster_rule_lines
from auditd.ops.shipping import RUNNING, ElasticStatus
from auditd.ops.status import CalendarStatus, OutboxStatus, ReloadStatus, SourceStatus, Status
from auditd.workdays import uncovered


def render_status(status: Status, zone: ZoneInfo = DEFAULT_ZONE) -> str:
    """A plain-text report for a terminal; times in `zone` (Asia/Shanghai by default)."""
    lines = [
        f"neo-auditd status at {_when(status.generated_at, zone)}",
        f"store:        {status.store_path}",
        f"rules loaded: {'unknown' if status.rules_loaded is None else status.rules_loaded}",
        f"last reload:  {_reload_line(status.last_reload, zone)}{_reloading(status.daemon, zone)}",
        f"daemon:       {_daemon_line(status.daemon, zone)}",
        *([f"deliver:      {_deliver_line(status.daemon, zone)}"] if status.daemon and status.daemon.get("deliver")
          else []),
        *([f"metrics:      {_metrics_line(status.daemon)}"] if _metrics_line(status.daemon) else []),
        f"store check:  {_check_line(status.store_check, zone)}",
        "",
        "sources:",
    ]
    if status.sources:
        lines += _indent(_table(("SOURCE", "EVENTS", "QUARANTINED", "SKIPPED", "LAST EVENT", "LAG"),
                                [_source_row(s, status.generated_at, zone) for s in status.sources]))
        files = [(f.source, f.path, f"{f.offset:,}" if f.checkpointed else "nothing yet", f"{f.size:,}",
                  _bytes(f.lag_bytes))
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
    held = box.by_state.get("held", 0)  # waiting on purpose (the daily digest), not stuck
    why = f" ({held:,} held for the next daily digest)" if held else ""
    lines = [f"outbox: {states}", f"  backlog:      {box.backlog:,} messages{why}{oldest}",
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


def _metrics_line(daemon: dict | None) -> str | None:
    """The running daemon's metrics endpoint, or why it is not listening (the daemon runs on
    without it, and said so only in its log)."""
    if not daemon or not daemon.get("alive") or daemon.get("state") == "stopped" or not daemon.get("metrics"):
        return None
    endpoint = daemon["metrics"]
    if endpoint.get("error"):
        return (f"NOT LISTENING on {endpoint.get('listen')}:{endpoint.get('port')}: {endpoint['error']} "
                "(another process has the port? set ops.metrics.port, then restart)")
    return f"http://{endpoint.get('listen')}:{endpoint.get('port')}/metrics"


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


def _reloading(daemon: dict | None, zone: ZoneInfo) -> str:
    """A SIGHUP's load in progress (read on a thread while the lines go on)."""
    since = daemon.get("reloading_since") if daemon and daemon.get("alive") and daemon.get("state") != "stopped" \
        else None
    return f"; a reload is being read since {_when(dt.datetime.fromisoformat(since), zone)}" if since else ""


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
