"""The `neo-auditd` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import msgspec

from auditd import __version__
from auditd.errors import EX_CONFIG, ConfigError, StoreFormatError
from auditd.ops.privacy import make_private
from auditd.store.health import StoreDamaged

DESCRIPTION = """\
neo-auditd checks every access to customers' personal information against the
employee's grants and normal behaviour, opens incidents, and runs the response
playbook of the incident's tier on the legal clocks.

Start with:  neo-auditd check -c CONFIG     (validate everything, exit 78 on errors)
             neo-auditd replay -c CONFIG FILE...   (run the pipeline over old logs)
             neo-auditd run -c CONFIG       (the daemon; SIGHUP reloads, SIGTERM drains)
             neo-auditd status -c CONFIG    (what the running daemon has read, found and held back)

Every command explains itself:  neo-auditd COMMAND --help
A first run on example data, and the tests:  README.md, "Two commands for a fresh machine".
"""


def _json_out(obj) -> None:
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n")


def _config_error(exc: ConfigError, as_json: bool, warnings: Sequence[object] = ()) -> int:
    if as_json:
        _json_out({"ok": False, "problems": [str(p) for p in exc.problems], "warnings": [str(w) for w in warnings]})
    _print_warnings(warnings)
    for problem in exc.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{len(exc.problems)} problem(s) found; nothing was started", file=sys.stderr)
    return EX_CONFIG


def _print_warnings(warnings: Sequence[object]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _environment_checks(runtime, today, *, cluster: bool):
    """What the files alone cannot tell: the working-day years ahead and, with `cluster`,
    whether Elasticsearch takes the index templates. (problems, warnings), both located."""
    from auditd.config.located import Problems
    from auditd.settings import load_settings
    from auditd.workdays import coverage, coverage_warning, uncovered

    problems, warnings = Problems(), []
    _, doc = load_settings(runtime.config_path, Problems())  # where each key is, for the messages
    override_file = runtime.settings.working_days.override_file
    text = coverage_warning(uncovered(coverage(runtime.calendar, today)), override_file)
    if text is not None and doc is not None:
        key = ("working_days", "override_file") if override_file is not None else ("working_days",)
        warnings.append(doc.problem(key, text))
    elastic = runtime.settings.elastic
    if cluster and elastic is not None and elastic.ship.enabled:
        from auditd.elastic.preflight import check_templates

        check_templates(elastic, doc, problems, warnings)
    return problems, warnings


# -- commands ----------------------------------------------------------------------------------
def cmd_check(args) -> int:
    import datetime as dt

    from auditd.runtime import load_runtime

    try:
        runtime = load_runtime(args.config)
    except ConfigError as exc:
        return _config_error(exc, args.json)
    today = args.as_of or dt.datetime.now(runtime.settings.zone).date()
    problems, warnings = _environment_checks(runtime, today, cluster=not args.offline)
    if problems:
        return _config_error(ConfigError(problems.items), args.json, warnings)
    summary = {
        "ok": True,
        "config": str(args.config),
        "sources": [s.name for s in runtime.settings.sources],
        "rules": len(runtime.ruleset),
        "employees": len(runtime.directory) if runtime.directory is not None else 0,
        "warnings": [str(w) for w in (*runtime.warnings, *warnings)],
    }
    _print_warnings([*runtime.warnings, *warnings])
    if args.json:
        _json_out(summary)
    else:
        print(f"ok: {args.config}: {len(summary['sources'])} source(s), {summary['rules']} rule(s), "
              f"{summary['employees']} employee(s)")
    return 0


def cmd_run(args) -> int:
    from auditd.logs import setup_logging
    from auditd.service import serve

    setup_logging(args.log_level)
    try:
        return serve(args.config, args.state_dir, new_store=args.new_store, workers=args.workers)
    except ConfigError as exc:
        return _config_error(exc, False)


def cmd_status(args) -> int:
    import datetime as dt

    from auditd.ops.status import StatusError, collect_status, render_status

    settings, store_path = _settings_and_store_path(args)
    _, ruleset = _rule_ids(settings)  # their exceptions, listed beside the store's suppressions
    try:
        status = collect_status(store_path, settings, dt.datetime.now(dt.timezone.utc), ruleset=ruleset)
    except StatusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        _json_out(status)
    else:
        print(render_status(status, settings.zone))
    return 0


def cmd_replay(args) -> int:
    from auditd.runtime import load_runtime
    from auditd.service import open_store, replay
    from auditd.workers import WorkerMismatch

    try:
        runtime = load_runtime(args.config)
    except ConfigError as exc:
        return _config_error(exc, args.json)
    names = [s.name for s in runtime.settings.sources]
    source = args.source or (names[0] if names else None)
    if source not in names:
        print(f"error: unknown source {source!r}; configured: {', '.join(names) or 'none'}", file=sys.stderr)
        return 2
    refused = _refused_replay_paths(runtime, args)
    if refused:
        for problem in refused:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    ship = runtime.settings.elastic is not None and runtime.settings.elastic.ship.enabled and not args.no_ship
    if ship:  # a template the cluster refuses would keep the shipper, and so the replay, waiting
        import datetime as dt

        today = dt.datetime.now(runtime.settings.zone).date()
        problems, warnings = _environment_checks(runtime, today, cluster=True)
        if problems:
            return _config_error(ConfigError(problems.items), args.json, warnings)
        _print_warnings(warnings)
    # the rules with scope: cluster run here too: the replayed events' windows are evaluated
    # (the running daemons evaluate only what reaches the cluster within the settle horizon)
    cluster_rules = [r.id for r in runtime.ruleset.scoped("cluster")]
    if cluster_rules:
        import dataclasses

        runtime = dataclasses.replace(runtime, ruleset=runtime.ruleset.with_scopes(frozenset({"local", "cluster"})))
    store, quarantine = open_store(runtime, args.state_dir)
    progress = _ProgressBar() if (sys.stderr.isatty() and not args.json and not args.no_progress) else None
    cluster = None
    if ship:
        from auditd.elastic.daemon import Cluster  # the client library is loaded only when shipping

        cluster = Cluster(runtime.settings.elastic, store)
        cluster.start(detect=False)  # cluster-wide rules belong to the running daemons
    try:
        workers = runtime.settings.pipeline.workers if args.workers is None else args.workers
        pipeline = replay(runtime, store, quarantine, args.paths, source, progress=progress, cluster=cluster,
                          workers=workers, config_path=Path(args.config))
        summary = _replay_summary(pipeline, store)
        summary["cluster_rules"] = _cluster_rule_summary(runtime, pipeline, cluster_rules)
    except WorkerMismatch as exc:  # what was committed stands; a second replay goes on from there
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if progress:
            progress.done()
        store.close()
    if args.json:
        _json_out(summary)
    else:
        print(f"{summary['events']} events, {summary['quarantined']} quarantined, {summary['skipped']} skipped, "
              f"{summary['alerts']} alerts, {summary['incidents']} incidents open in the store "
              f"({summary['seconds']:.1f} s, {summary['events_per_second']:,.0f} events/s)")
        if summary["cluster_rules"]:
            print(summary["cluster_rules"]["note"])
    return 0


def _cluster_rule_summary(runtime, pipeline, rule_ids: list[str]) -> dict | None:
    """What the replay says about the rules with scope: cluster (evaluated here)."""
    if not rule_ids:
        return None
    alerts = {rule: pipeline.totals.alerts_by_rule.get(rule, 0) for rule in rule_ids}
    elastic = runtime.settings.elastic
    settle = elastic.cluster.settle.seconds if elastic is not None else None
    horizon = f"{settle:g} s" if settle is not None else "the settle horizon"
    note = (f"cluster rules ({', '.join(rule_ids)}) evaluated here over the replayed events: "
            f"{sum(alerts.values())} alerts. The running daemons evaluate them only over events that reach the "
            f"cluster within {horizon} of their time; older windows, such as these, are evaluated by replay alone.")
    return {"rules": alerts, "settle_s": settle, "note": note}


def _workers_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}") from None
    if not 0 <= n <= 256:
        raise argparse.ArgumentTypeError("between 0 (one per core) and 256")
    return n


def _refused_replay_paths(runtime, args) -> list[str]:
    """Why given paths cannot be replayed: missing, not regular files, or the daemon's own.

    A symlink given on the command line is the operator's explicit choice and is
    followed, but never into the state directory, a key or the configuration.
    """
    import os
    import stat

    from auditd.runtime import daemon_files
    from auditd.sources.guard import Protected, type_reason

    own = daemon_files(runtime.settings, Path(args.config))
    if args.state_dir is not None:
        own = Protected.of([*own.directories, args.state_dir], own.files)
    problems = []
    for path in args.paths:
        try:
            mode = os.stat(path).st_mode  # a stat never waits, even on a FIFO
        except OSError:
            problems.append(f"no such file: {path}")
            continue
        real = os.path.realpath(path)
        if not stat.S_ISREG(mode):
            problems.append(f"{path}: {type_reason(mode)[1]}, not a regular file; only files are replayed")
        elif own.refuses(real) or (os.stat(real).st_dev, os.stat(real).st_ino) in own.places():
            problems.append(f"{path}: is the daemon's own file ({real}): state, keys and configuration "
                            f"are never replayed")
    return problems


def _replay_summary(pipeline, store) -> dict:
    t = pipeline.totals
    incidents = store.conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0]
    return {
        "records": t.records,
        "events": t.events,
        "quarantined": t.quarantined,
        "skipped": t.skipped,
        "alerts": t.alerts,
        "incidents": incidents,
        "incidents_opened": t.incidents_opened,
        "alerts_by_rule": dict(sorted(t.alerts_by_rule.items())),
        "unmapped_actions": dict(sorted(t.unmapped_actions.items())),
        "by_source": t.by_source,
        "seconds": round(t.seconds, 3),
        "events_per_second": round(t.records / t.seconds, 1) if t.seconds else 0.0,
        "shipped_lag": t.shipped_lag,
        "seconds_with_shipping": round(t.seconds_with_shipping, 3) if t.seconds_with_shipping else None,
    }


class _ProgressBar:
    def __init__(self) -> None:
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if pct != self._last:
            self._last = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\rreplay [{bar:<25}] {pct:3d}%")
            sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")


def cmd_test_rules(args) -> int:
    from auditd.config.located import Problems
    from auditd.settings import DEFAULT_CATEGORIES, SHIPPED_RULES, load_settings
    from auditd.config.typed import DEFAULT_ZONE
    from auditd.detect.testing import run_rule_tests

    paths: list[Path] = list(args.rules)
    categories, zone = DEFAULT_CATEGORIES, DEFAULT_ZONE
    if args.config:
        problems = Problems()
        settings, _ = load_settings(args.config, problems)
        if settings is None:
            return _config_error(ConfigError(problems.items), args.json)
        paths = settings.rule_paths() + paths
        categories, zone = settings.categories, settings.zone
    elif not paths:
        paths = [SHIPPED_RULES]
    report = run_rule_tests(paths, categories=categories, zone=zone, as_json=args.json, verbose=args.verbose)
    stream = sys.stdout if report.exit_code != 78 or args.json else sys.stderr
    print(report.text, file=stream)
    return report.exit_code


def cmd_keygen(args) -> int:
    from auditd.enrich.pseudonym import create_key_file

    args.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        create_key_file(args.path)
    except FileExistsError:
        # a new key would silently change every pseudonym: never overwrite
        print(f"error: {args.path} exists; keeping it (a new key would change every pseudonym)", file=sys.stderr)
        return 1
    print(f"wrote a new 256-bit pseudonym key to {args.path} (mode 0600)")
    return 0


def _settings_and_store_path(args):
    """The config alone (not its rules, key or directory) and where its store is: reading
    incidents or status must work while, say, a rule file is broken."""
    from auditd.config.located import Problems
    from auditd.settings import load_settings

    problems = Problems()
    settings, _ = load_settings(args.config, problems)
    if settings is None:
        raise SystemExit(_config_error(ConfigError(problems.items), getattr(args, "json", False)))
    return settings, (args.state_dir / "neo-auditd.db") if args.state_dir else settings.store_path


def _incident_conn(args):
    """The store, and the zone its times are shown in (the config's `timezone`)."""
    from auditd.store.sqlite import Store

    settings, path = _settings_and_store_path(args)
    return Store(path).open(), settings.zone


def cmd_incidents_list(args) -> int:
    from auditd.correlate import CorrelateError, list_incidents, render_incident_table

    store, zone = _incident_conn(args)
    try:
        rows = list_incidents(store.conn, status=args.status, tier=args.tier, limit=args.limit)
    except CorrelateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if args.json:
        _json_out(rows)
    else:
        print(render_incident_table(rows, zone))
    return 0


def cmd_incidents_show(args) -> int:
    import msgspec

    from auditd.correlate import UnknownIncident, get_incident, render_incident_detail
    from auditd.correlate.evidence import readable_evidence

    store, zone = _incident_conn(args)
    try:
        detail = get_incident(store.conn, args.id)
        detail = msgspec.structs.replace(detail, evidence=readable_evidence(store.evidence(detail.evidence_event_ids)))
    except UnknownIncident:
        print(f"error: no incident {args.id}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        _json_out(detail)
    else:
        print(render_incident_detail(detail, zone))
    return 0


def _parse_expiry(text: str, now, zone):
    """'2026-12-31' (the end of that day in the company's zone), an ISO time, or a
    duration from now ('7d', '12h')."""
    import datetime as dt

    from auditd.config.typed import Duration

    try:
        return now + Duration.from_config(text).timedelta
    except ValueError:
        pass
    try:
        day = dt.date.fromisoformat(text)
        return dt.datetime(day.year, day.month, day.day, tzinfo=zone) + dt.timedelta(days=1)
    except ValueError:
        pass
    value = dt.datetime.fromisoformat(text)  # ValueError: reported by the caller
    return value if value.tzinfo else value.replace(tzinfo=zone)


def _rule_ids(settings):
    """The ids of the configured rules, or None when they do not load (then any id is taken)."""
    from auditd.config.located import Problems
    from auditd.detect import load_rules

    problems = Problems()
    ruleset = load_rules(settings.rule_paths(), problems, categories=settings.categories, zone=settings.zone)
    return None if problems else [r.id for r in ruleset.rules], (None if problems else ruleset)


def cmd_suppress_add(args) -> int:
    import datetime as dt

    from auditd.detect.suppressions import EVERY_RULE, SuppressionError, add

    settings, path = _settings_and_store_path(args)
    now = dt.datetime.now(dt.timezone.utc)
    match = {}
    for item in args.match:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"error: --match {item!r}: expected FIELD=VALUE, e.g. user.id=E10011", file=sys.stderr)
            return 2
        match[name.strip()] = value
    try:
        expires = _parse_expiry(args.expires, now, settings.zone)
    except ValueError:
        print(f"error: --expires {args.expires!r}: expected a date (2026-12-31), an ISO time or a duration (7d)",
              file=sys.stderr)
        return 2
    known, _ = _rule_ids(settings) if args.rule != EVERY_RULE else (None, None)
    from auditd.store.sqlite import Store

    store = Store(path).open()
    try:
        sid = add(store.conn, rule_id=args.rule, match=match, owner=args.owner, reason=args.reason,
                  expires_at=expires, now=now, known_rules=known)
    except SuppressionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if args.json:
        _json_out({"id": sid, "expires_at": expires.astimezone(dt.timezone.utc).isoformat()})
    else:
        print(f"suppression {sid} added: rule {args.rule}, {', '.join(f'{k}={v}' for k, v in match.items())}, "
              f"until {expires.astimezone(settings.zone).isoformat(timespec='minutes')} (owner {args.owner})")
    return 0


def cmd_suppress_list(args) -> int:
    import datetime as dt

    from auditd.detect.suppressions import read_all

    now = dt.datetime.now(dt.timezone.utc)
    store, zone = _incident_conn(args)
    try:
        rows = [s for s in read_all(store.conn) if args.all or s.active(now)]
    finally:
        store.close()
    if args.json:
        _json_out([{"id": s.id, "rule_id": s.rule_id, "match": dict(zip(s.fields, s.values)), "owner": s.owner,
                    "reason": s.reason, "created_at": s.created_at, "expires_at": s.expires_at,
                    "active": s.active(now), "removed_at": s.removed_at, "removed_by": s.removed_by}
                   for s in rows])
        return 0
    if not rows:
        print("no suppressions in force" + ("" if args.all else " (--all lists expired and removed ones)"))
        return 0
    for s in rows:
        state = "active" if s.active(now) else (f"removed by {s.removed_by}" if s.removed_at else "expired")
        print(f"{s.id:>4}  {s.rule_id}  {', '.join(f'{f}={v}' for f, v in zip(s.fields, s.values))}  "
              f"until {s.expires_at.astimezone(zone).isoformat(timespec='minutes')}  "
              f"owner {s.owner}  [{state}]  {s.reason}")
    return 0


def cmd_suppress_remove(args) -> int:
    import datetime as dt

    from auditd.detect.suppressions import remove

    store, _ = _incident_conn(args)
    try:
        done = remove(store.conn, args.id, by=args.by, now=dt.datetime.now(dt.timezone.utc))
    finally:
        store.close()
    if not done:
        print(f"error: no suppression {args.id} in force", file=sys.stderr)
        return 1
    print(f"suppression {args.id} removed by {args.by}")
    return 0


def _who(args) -> str:
    import getpass

    return (args.who or getpass.getuser()).strip()


# `incidents ACTION`: the person's verbs and the correlate action each one applies
_TRANSITIONS = {"ack": "triaged", "contain": "contained", "resolve": "resolved", "close": "closed"}


def cmd_incidents_act(args) -> int:
    """ack|assign|contain|resolve|close|dismiss|merge|note|loss|cii|tier: one action through the seam."""
    import datetime as dt

    from auditd.correlate import (
        Assign, CorrelateError, Dismiss, Merge, Note, SetCII, SetLoss, SetTier, Transition, act,
    )

    settings, _ = _settings_and_store_path(args)
    who, verb = _who(args), args.incidents_command
    why = getattr(args, "why", None) or ""
    if verb in _TRANSITIONS:
        action = Transition(incident_id=args.id, who=who, status=_TRANSITIONS[verb], why=why)
    elif verb == "assign":
        action = Assign(incident_id=args.id, who=who, assignee=args.assignee)
    elif verb == "dismiss":
        action = Dismiss(incident_id=args.id, who=who, reason=args.reason.replace("-", "_"), why=why)
    elif verb == "merge":
        action = Merge(incident_id=args.id, who=who, into=args.into, why=why)
    elif verb == "note":
        action = Note(incident_id=args.id, who=who, text=args.text)
    elif verb == "loss":
        action = SetLoss(incident_id=args.id, who=who, yuan=args.yuan, why=why)
    elif verb == "cii":
        action = SetCII(incident_id=args.id, who=who, cii=args.flag == "on", why=why)
    else:
        action = SetTier(incident_id=args.id, who=who, tier=args.tier, why=why)
    store, _ = _incident_conn(args)
    try:
        summary = act(store.conn, action, settings=settings.correlate,
                      clock=lambda: dt.datetime.now(dt.timezone.utc))
    except CorrelateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        _json_out(summary)
    else:
        print(f"{summary.incident_id}: {summary.status}, {summary.tier}"
              f"{', assigned to ' + summary.assignee if summary.assignee else ''}")
    return 0


def cmd_incidents_verify(args) -> int:
    from auditd.correlate import UnknownIncident, list_incidents, verify_timeline

    store, _ = _incident_conn(args)
    try:
        ids = [args.id] if args.id else [i.incident_id for i in list_incidents(store.conn, limit=1_000_000)]
        results = {incident: verify_timeline(store.conn, incident) for incident in ids}
    except UnknownIncident as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    bad = {i: seq for i, (ok, seq) in results.items() if not ok}
    if args.json:
        _json_out({"verified": len(results) - len(bad), "broken": [{"incident_id": i, "first_bad_seq": s}
                                                                    for i, s in bad.items()]})
    else:
        for incident, seq in bad.items():
            print(f"{incident}: timeline BROKEN at entry {seq} (edited, removed or re-chained)")
        print(f"{len(results) - len(bad)} of {len(results)} timelines verified")
    return 1 if bad else 0


def _respond_runtime(args):
    """The whole runtime (playbooks, templates, contacts) and the store, for respond commands."""
    from auditd.runtime import load_runtime
    from auditd.store.sqlite import Store

    runtime = load_runtime(args.config)
    path = (args.state_dir / "neo-auditd.db") if args.state_dir else runtime.settings.store_path
    return runtime, Store(path).open()


def cmd_playbook(args) -> int:
    import datetime as dt

    from auditd.correlate import UnknownIncident
    from auditd.respond import people
    from auditd.respond import steps as step_table
    from auditd.respond.view import render_steps

    try:
        runtime, store = _respond_runtime(args)
    except ConfigError as exc:
        return _config_error(exc, getattr(args, "json", False))
    now = dt.datetime.now(dt.timezone.utc)
    conn, verb = store.conn, args.playbook_command
    try:
        if verb == "run-due":
            report = runtime.responder.run(conn, now)
            out = {"changes": report.changes, "planned": report.planned, "fired": report.fired,
                   "late": report.late, "failed": report.failed, "escalated": report.escalated}
            if args.json:
                _json_out(out)
            else:
                print(f"{report.changes} change(s) read, {report.planned} step(s) planned, {len(report.fired)} fired "
                      f"({len(report.late)} late), {len(report.failed)} failed, {len(report.escalated)} escalation(s)")
                print(f"rendered files: {runtime.responder.out_dir}")
            return 0
        if verb == "show":
            if conn.execute("SELECT 1 FROM incidents WHERE incident_id = ?", (args.id,)).fetchone() is None:
                raise UnknownIncident(args.id)
            rows = step_table.of_incident(conn, args.id)
            if args.json:
                _json_out([r.to_json() for r in rows])
            else:
                print(render_steps(args.id, rows, now, runtime.settings.zone))
            return 0
        who, correlator = _who(args), runtime.correlator
        if verb == "done":
            row = people.done(conn, correlator, args.id, args.step, who, now, note=args.note)
        elif verb == "approve":
            row = people.approve(conn, correlator, args.id, args.step, who, now)
        else:
            row = people.skip(conn, correlator, args.id, args.step, who, now, args.reason or "")
    except (UnknownIncident, people.StepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        _json_out(row.to_json())
    else:
        print(f"{args.id} {row.step_id}: {row.state} by {row.closed_by}")
    return 0


def cmd_report(args) -> int:
    import datetime as dt

    from auditd.correlate import UnknownIncident
    from auditd.respond.reports import ReportError, render_report, set_finding
    from auditd.store.sqlite import immediate

    try:
        runtime, store = _respond_runtime(args)
    except ConfigError as exc:
        return _config_error(exc, args.json)
    responder, now, who = runtime.responder, dt.datetime.now(dt.timezone.utc), _who(args)
    try:
        with immediate(store.conn):
            for item in args.set or []:
                name, sep, text = item.partition("=")
                if not sep or not text.strip():
                    raise ReportError(f"--set takes FIELD=TEXT, got {item!r}")
                set_finding(store.conn, args.id, name.strip(), text, who, now)
            people_count = len(responder.affected(store.conn, args.id)[0])
            rendered = render_report(store.conn, args.id, args.kind, templates=responder.templates,
                                     organisation=responder.settings.organisation, zone=runtime.settings.zone,
                                     out_dir=responder.out_dir, now=now, who=who, people=people_count)
    except (UnknownIncident, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        _json_out({"incident_id": rendered.incident_id, "kind": rendered.kind, "revision": rendered.revision,
                   "cause_known": rendered.cause_known, "paths": rendered.paths, "sha256": rendered.sha256})
    else:
        print(f"{rendered.incident_id}: {rendered.kind} report r{rendered.revision}"
              f"{'' if rendered.cause_known else ' (cause not yet known: marked so)'}")
        for name, path in rendered.paths.items():
            print(f"  {name:<12} {path}")
    return 0


def cmd_register(args) -> int:
    from auditd.respond.register import register, render_register

    settings, _ = _settings_and_store_path(args)
    store, _ = _incident_conn(args)
    try:
        entries = register(store.conn, settings.zone)
    finally:
        store.close()
    if args.json:
        _json_out(entries)
    else:
        print(render_register(entries, settings.zone), end="")
    return 0


def cmd_outbox(args) -> int:
    """outbox list|show|retry|send: what the deliver stage sent, failed or holds."""
    import datetime as dt

    from auditd.deliver import outbox, view

    if args.outbox_command == "send":
        try:
            runtime, store = _respond_runtime(args)
        except ConfigError as exc:
            return _config_error(exc, args.json)
        from auditd.deliver.lock import DeliverLock

        lock = DeliverLock(store.path)
        try:
            if not lock.try_acquire():  # a second sender would take the first one's messages in flight
                print(f"error: the daemon's deliver process (pid {lock.holder()}) is sending from this store; it "
                      "sends what is due every deliver.check_every", file=sys.stderr)
                return 75
            report = runtime.deliverer.run(store.conn)
        finally:
            lock.release()
            store.close()
        if args.json:
            _json_out(report.as_dict())
        else:
            print(f"{report.delivered} delivered, {report.retried} to retry, {report.failed} failed "
                  f"({report.escalated} escalation(s)), {report.suppressed} suppressed, {report.fleet} delivered by "
                  f"the fleet, {report.recovered} possible repeat(s) after a crash")
        return 0
    store, zone = _incident_conn(args)
    try:
        if args.outbox_command == "list":
            rows = view.list_messages(store.conn, state=args.state, incident=args.incident, limit=args.limit)
            if args.json:
                _json_out(rows)
            else:
                print(view.render_list(rows, zone), end="")
            return 0
        if args.outbox_command == "show":
            try:
                row = view.show_message(store.conn, args.id)
            except view.UnknownMessage as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            if args.json:
                _json_out(row)
            else:
                print(view.render_show(row, zone), end="")
            return 0
        if not args.ids and not args.failed:
            print("error: name the messages to retry (IDs), or --failed for every failed one", file=sys.stderr)
            return 2
        n = outbox.retry_failed(store.conn, None if args.failed else args.ids, dt.datetime.now(dt.timezone.utc))
    finally:
        store.close()
    if args.json:
        _json_out({"queued": n})
    else:
        print(f"{n} failed message(s) queued again with a fresh retry budget; the deliver job sends them")
    return 0 if n or args.failed else 1


def cmd_review_grants(args) -> int:
    import datetime as dt

    from auditd.config.typed import Duration
    from auditd.entitlement import render_grant_review, review_grants
    from auditd.runtime import load_runtime
    from auditd.service import open_store

    try:
        period = Duration.from_config(args.since).timedelta
        until = dt.datetime.fromisoformat(args.until) if args.until else dt.datetime.now(dt.timezone.utc)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        runtime = load_runtime(args.config)
    except ConfigError as exc:
        return _config_error(exc, args.json)
    if runtime.directory is None:
        print("error: the config names no directory, so there are no grants to review", file=sys.stderr)
        return 2
    if until.tzinfo is None:
        until = until.replace(tzinfo=runtime.settings.zone)
    store, _ = open_store(runtime, args.state_dir)
    try:
        review = review_grants(store, runtime.directory, until - period, until)
    finally:
        store.close()
    print(render_grant_review(review, as_json=args.json, zone=runtime.settings.zone))
    return 0


def cmd_store_check(args) -> int:
    import sqlite3

    from auditd.store import health
    from auditd.store.migrations import LATEST, check_version

    _, path = _settings_and_store_path(args)
    result: dict = {"store": str(path), "ok": False}
    try:
        health.preflight(path)
        if not path.exists():
            raise health.StoreMissing(f"{path}: no store there (has the daemon run with this config?)")
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
        try:
            result["schema_version"] = check_version(conn, path)
            result["schema_latest"] = LATEST
            report = health.check(conn, full=args.full)
        except sqlite3.DatabaseError as exc:
            raise health.damaged(exc, path) from exc
        finally:
            conn.close()
    except health.StoreDamaged as exc:
        result["error"] = str(exc)
        _store_result(result, args.json)
        return health.EX_DATAERR
    result.update(ok=report.ok, check="integrity_check" if args.full else "quick_check",
                  seconds=report.seconds, problems=report.problems)
    _store_result(result, args.json)
    return 0 if report.ok else health.EX_DATAERR


def cmd_store_backup(args) -> int:
    from auditd.store import health

    _, path = _settings_and_store_path(args)
    try:
        size, seconds = health.backup(path, args.target)
    except (FileExistsError, health.StoreDamaged, health.BackupFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, health.BackupFailed):
            return 74  # EX_IOERR: the target, not the store, is the problem
        return 1 if isinstance(exc, FileExistsError) else health.EX_DATAERR
    result = {"store": str(path), "backup": str(args.target), "bytes": size, "seconds": seconds, "ok": True}
    _store_result(result, args.json)
    return 0


def _store_result(result: dict, as_json: bool) -> None:
    if as_json:
        _json_out(result)
    elif result.get("error"):
        print(f"neo-auditd: {result['error']}", file=sys.stderr)
    elif "backup" in result:
        print(f"backed up {result['store']} to {result['backup']} ({result['bytes']:,} bytes, "
              f"{result['seconds']} s, checked)")
    else:
        verdict = "ok" if result["ok"] else "DAMAGED: " + "; ".join(result["problems"][:5])
        print(f"{result['store']}: schema {result['schema_version']} of {result['schema_latest']}, "
              f"{result['check']} {verdict} ({result['seconds']} s)")


# -- parser ------------------------------------------------------------------------------------
def _date_arg(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date such as 2027-01-15, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neo-auditd", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"neo-auditd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def config_arg(p, required=True):
        p.add_argument("-c", "--config", type=Path, required=required,
                       help="the daemon's YAML config file, e.g. examples/config.yaml (paths in it are relative "
                            "to it)")

    def state_arg(p):
        p.add_argument("--state-dir", type=Path, metavar="DIR",
                       help="use the store in DIR instead of the config's state_dir (e.g. a copy for a trial)")

    def store_reader(p, json_help: str):
        """A command that reads the store: its config, another store, and --json."""
        config_arg(p)
        state_arg(p)
        p.add_argument("--json", action="store_true", help=json_help)

    p = sub.add_parser("run", help="run the daemon in the foreground (SIGHUP reloads, SIGTERM drains)",
                       description="Run the daemon in the foreground: tail every configured source, store events, "
                                   "raise alerts and incidents, run the playbooks' jobs, until SIGTERM or Ctrl-C "
                                   "(it drains and checkpoints). SIGHUP reloads config, directory and rules (a bad "
                                   "set is reported and the old one keeps running). Exit 0 after a clean stop, 78 "
                                   "for a configuration error, 65 when the store is missing, not ours or damaged "
                                   "(README, 'Backups and restore'), 75 when a stage stuck mid-batch was abandoned "
                                   "at stop.")
    config_arg(p)
    state_arg(p)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="the least important log lines written (JSON lines on stdout; default INFO)")
    p.add_argument("--new-store", action="store_true",
                   help="start an empty store even though one was kept here before and is now missing, empty "
                        "or damaged (it is set aside, not deleted); every alert in the logs still on disk is "
                        "raised again -- restore a backup instead if you have one")
    p.add_argument("--workers", type=_workers_arg, metavar="N",
                   help="worker processes for decode, enrich and the rules' conditions; the store, the stateful "
                        "rules and the checkpoints stay in this process, which commits in the order read, so "
                        "alerts and incidents are the same for every N (default: the config's pipeline.workers, "
                        "1; 0: one per core)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate config, directory, key, formats and rules; exit 78 on errors",
                       description="Validate everything the daemon loads; exit 78 with every problem located "
                                   "(file:line:column: key). Also asks Elasticsearch, when configured, whether "
                                   "it takes the index templates, and warns about working-day years ahead that "
                                   "no calendar knows.")
    config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--offline", action="store_true", help="do not contact Elasticsearch")
    p.add_argument("--as-of", type=_date_arg, metavar="DATE",
                   help="check the working-day calendar as if today were DATE (YYYY-MM-DD), e.g. to see "
                        "whether next year's holidays are in the override file yet")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("replay", help="run the pipeline over log files from their start, then exit",
                       description="Run the daemon's pipeline over log files from their start into the config's "
                                   "store (or --state-dir's), then exit: events, quarantined lines, alerts and "
                                   "incidents, as the daemon would have made them. Files already replayed into "
                                   "that store are not read twice. A progress bar on a terminal; a summary at the "
                                   "end. Exit 2 when a path is missing or not a regular file.")
    config_arg(p)
    state_arg(p)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="log files to replay (gzip files and CloudTrail documents too); a symlink given is "
                        "followed, but FIFOs, devices and the daemon's own files are refused")
    p.add_argument("--source", help="the configured source whose format applies (default: the first)")
    p.add_argument("--json", action="store_true", help="print a summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--no-ship", action="store_true", help="do not ship to Elasticsearch even if configured")
    p.add_argument("--workers", type=_workers_arg, metavar="N",
                   help="worker processes for decode, enrich and the rules' conditions; the store, the "
                        "stateful rules and the checkpoints stay in this process, so the result is the same "
                        "for every N (default: the config's pipeline.workers, 1; 0: one per core)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("test-rules", help="run every rule's samples; a rule without a positive sample fails")
    config_arg(p, required=False)
    p.add_argument("--rules", type=Path, nargs="*", default=[],
                   help="rule files or folders to test, besides the config's (without -c and --rules: the shipped "
                        "rules)")
    p.add_argument("--json", action="store_true", help="print every rule's result as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="list every sample, not only failures")
    p.set_defaults(func=cmd_test_rules)

    p = sub.add_parser("keygen", help="create the HMAC-SHA-256 pseudonym key file (mode 0600; never overwrites)")
    p.add_argument("path", type=Path, metavar="PATH",
                   help="where to write the key, e.g. /etc/neo-auditd/pseudonym.key (the config's "
                        "pseudonym.key_file); its folder is created if missing")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("status", help="per-source lag and last event, rules, open incidents, "
                                      "Elasticsearch shipping, working days ahead")
    store_reader(p, "print the status as JSON (times in UTC)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("review", help="periodic reviews of access (grants not exercised)")
    rsub = p.add_subparsers(dest="review_command", metavar="WHAT", required=True)
    q = rsub.add_parser("grants", help="per role and per employee, grants not exercised in the period")
    config_arg(q)
    state_arg(q)
    q.add_argument("--since", default="90d", help="the period before --until, e.g. 90d, 12w (default 90d)")
    q.add_argument("--until", help="the end of the period, ISO 8601 (default: now)")
    q.add_argument("--json", action="store_true", help="print the review as JSON")
    q.set_defaults(func=cmd_review_grants)

    p = sub.add_parser("incidents", help="list, show, act on and verify incidents")
    isub = p.add_subparsers(dest="incidents_command", metavar="ACTION", required=True)
    q = isub.add_parser("list", help="incidents, newest first")
    config_arg(q)
    state_arg(q)
    q.add_argument("--status", help="only incidents in this status: open, triaged, contained, notified, resolved, "
                                    "closed or dismissed")
    q.add_argument("--tier", help="only incidents of this tier, T1 (the gravest) to T6")
    q.add_argument("--limit", type=int, default=50, help="list at most this many (default 50)")
    q.add_argument("--json", action="store_true", help="print the incidents as JSON (times in UTC)")
    q.set_defaults(func=cmd_incidents_list)
    q = isub.add_parser("show", help="one incident: rules, categories, affected count, alerts, evidence in words, "
                                     "and its hash-chained timeline")
    config_arg(q)
    state_arg(q)
    q.add_argument("id", metavar="ID", help="the incident's id, as `incidents list` shows it (INC-...)")
    q.add_argument("--json", action="store_true", help="print the incident as JSON (times in UTC)")
    q.set_defaults(func=cmd_incidents_show)
    q = isub.add_parser("verify", help="check the hash chain of one incident's timeline (or all); exit 1 if broken")
    config_arg(q)
    state_arg(q)
    q.add_argument("id", nargs="?", metavar="ID", help="the incident to verify (default: every incident)")
    q.add_argument("--json", action="store_true", help="print how many verified and which are broken, as JSON")
    q.set_defaults(func=cmd_incidents_verify)
    verbs = {
        "ack": "acknowledge the incident: someone is on it (status triaged)",
        "contain": "mark the incident contained: the leak or misuse is stopped",
        "resolve": "mark the handling ended (starts the 30-day closing-report clock)",
        "close": "close the incident for good, after resolve",
        "dismiss": "dismiss with a reason: false-positive, duplicate or accepted-risk",
        "merge": "fold this incident into another (timelines kept, clocks from the earlier discovery)",
        "assign": "give the incident to a responder", "note": "add a note to the timeline (pseudonyms only)",
        "loss": "record the economic loss in yuan (may raise the tier)",
        "cii": "mark whether critical information infrastructure is hit (1 h regulator clock)",
        "tier": "set the tier by hand (raising it adds the new tier's steps on the original clocks)",
    }
    for verb, text in verbs.items():
        q = isub.add_parser(verb, help=text)
        config_arg(q)
        state_arg(q)
        q.add_argument("id", metavar="ID", help="the incident's id, as `incidents list` shows it (INC-...)")
        if verb == "assign":
            q.add_argument("assignee", metavar="NAME", help="who handles the incident from now on")
        elif verb == "note":
            q.add_argument("text", metavar="TEXT", help="the note; pseudonyms only, never a customer's name, "
                                                        "phone or id")
        elif verb == "merge":
            q.add_argument("--into", required=True, help="the incident that absorbs this one")
        elif verb == "dismiss":
            q.add_argument("--reason", required=True, choices=["false-positive", "duplicate", "accepted-risk"],
                           help="why it is no incident: a false alarm, a duplicate of another, or a risk accepted")
        elif verb == "loss":
            q.add_argument("yuan", type=float, metavar="YUAN", help="the economic loss so far, in yuan")
        elif verb == "cii":
            q.add_argument("flag", choices=["on", "off"], metavar="on|off",
                           help="on: critical information infrastructure is hit; off: it is not")
        elif verb == "tier":
            q.add_argument("tier", choices=["T1", "T2", "T3", "T4", "T5", "T6"], metavar="TIER",
                           help="the new tier, T1 (the gravest) to T6")
        if verb not in ("assign", "note"):
            q.add_argument("--why", required=True, help="why (goes on the hash-chained timeline)")
        q.add_argument("--who", help="who acts (default: your login name)")
        q.add_argument("--json", action="store_true", help="print the incident's status, tier and assignee as JSON")
        q.set_defaults(func=cmd_incidents_act)

    p = sub.add_parser("playbook", help="an incident's playbook steps: show, done, approve, skip; run-due")
    psub = p.add_subparsers(dest="playbook_command", metavar="ACTION", required=True)
    helps = {"show": "the steps of an incident, their clocks and states",
             "done": "mark a step done (a task, a reviewed report: you become its requester)",
             "approve": "approve a step (four eyes: never the person who did what it approves)",
             "skip": "skip a step with --reason (for customer notices: a PIPL art. 57(2) exemption)",
             "run-due": "plan from the change log, fire ready steps, escalate overdue ones, once"}
    for verb, text in helps.items():
        q = psub.add_parser(verb, help=text)
        config_arg(q)
        state_arg(q)
        if verb != "run-due":
            q.add_argument("id", metavar="INCIDENT", help="the incident's id, as `incidents list` shows it (INC-...)")
        if verb in ("done", "approve", "skip"):
            q.add_argument("step", metavar="STEP", help="the step's id, as `playbook show` lists it")
            q.add_argument("--who", help="who acts (default: your login name)")
        if verb == "done":
            q.add_argument("--note", help="what was done")
        if verb == "skip":
            q.add_argument("--reason", required=True, help="why the step is skipped (goes on the timeline)")
        q.add_argument("--json", action="store_true", help="print the result as JSON (times in UTC)")
        q.set_defaults(func=cmd_playbook)

    p = sub.add_parser("report", help="render a regulator report (Markdown, HTML, JSON) of an incident now")
    config_arg(p)
    state_arg(p)
    p.add_argument("id", metavar="INCIDENT", help="the incident's id, as `incidents list` shows it (INC-...)")
    p.add_argument("--kind", required=True, choices=["initial", "followup", "closing", "notice-draft"],
                   help="which report: the initial one, a follow-up, the closing report, or the draft of the "
                        "customers' notice")
    p.add_argument("--set", action="append", metavar="FIELD=TEXT",
                   help="record a finding first: cause, leads, planned, support, other, harm, accountability, "
                        "remediation, lessons, advice")
    p.add_argument("--who", help="who renders (default: your login name)")
    p.add_argument("--json", action="store_true", help="print the rendered files and their SHA-256 as JSON")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("register", help="the breach register: every T1-T4 incident, its clocks, decisions, outputs")
    store_reader(p, "print the register as JSON (times in UTC)")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("outbox", help="the messages the deliver stage sends: list, show, retry failed ones, send now")
    osub = p.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)
    q = osub.add_parser("list", help="messages, newest first, with their state, route, receipt or error")
    store_reader(q, "print the result as JSON (times in UTC)")
    q.add_argument("--state", choices=["held", "pending", "retrying", "sending", "delivered", "failed", "suppressed",
                                       "digested", "fleet"],
                   help="only messages in this state (failed: out of retries, escalated; fleet: another daemon "
                        "of the fleet delivered it)")
    q.add_argument("--incident", metavar="ID", help="only this incident's messages")
    q.add_argument("--limit", type=int, default=50, help="at most this many messages (default 50)")
    q.set_defaults(func=cmd_outbox)
    q = osub.add_parser("show", help="one message: its key, route, receipt and every attempt")
    store_reader(q, "print the result as JSON (times in UTC)")
    q.add_argument("id", type=int, metavar="ID", help="the message's number, as `outbox list` shows it")
    q.set_defaults(func=cmd_outbox)
    q = osub.add_parser("retry", help="queue failed messages again with a fresh retry budget (after fixing the cause)")
    store_reader(q, "print the result as JSON (times in UTC)")
    q.add_argument("ids", type=int, nargs="*", metavar="ID", help="the failed messages to queue again (or --failed)")
    q.add_argument("--failed", action="store_true", help="every failed message")
    q.set_defaults(func=cmd_outbox)
    q = osub.add_parser("send", help="send what is due now, once, as the deliver job does every deliver.check_every "
                        "(refused, exit 75, while a running daemon's deliver process sends from the same store)")
    store_reader(q, "print the result as JSON (times in UTC)")
    q.set_defaults(func=cmd_outbox)

    p = sub.add_parser("suppress", help="hold back a rule's alerts for some actor or address until a date, "
                                        "in the store (beside the rule files' exceptions)")
    ssub = p.add_subparsers(dest="suppress_command", metavar="ACTION", required=True)
    q = ssub.add_parser("add", help="add a suppression: which rule, which field values, owner, reason, expiry",
                        epilog="example: neo-auditd suppress add -c config.yaml --rule records_far_above_usual "
                               "--match user.id=E10011 --owner secops@example.com --reason 'stock-take, "
                               "ticket OPS-12' --expires 3d")
    config_arg(q)
    state_arg(q)
    q.add_argument("--rule", required=True, help="the rule's id, or '*' for every rule")
    q.add_argument("--match", action="append", required=True, metavar="FIELD=VALUE",
                   help="a field's value the alert's event must have (repeat for several: all must hold)")
    q.add_argument("--owner", required=True, help="who answers for it")
    q.add_argument("--reason", required=True, help="why (a ticket, a change)")
    q.add_argument("--expires", required=True,
                   help="when it stops: a date (the end of that day), an ISO time, or a duration such as 7d")
    q.add_argument("--json", action="store_true", help="print the new suppression's id and expiry as JSON")
    q.set_defaults(func=cmd_suppress_add)
    q = ssub.add_parser("list", help="suppressions in force (--all: expired and removed ones too)")
    config_arg(q)
    state_arg(q)
    q.add_argument("--all", action="store_true", help="expired and removed suppressions too")
    q.add_argument("--json", action="store_true", help="print the suppressions as JSON (times in UTC)")
    q.set_defaults(func=cmd_suppress_list)
    q = ssub.add_parser("remove", help="end a suppression now (its row stays, with who removed it)")
    config_arg(q)
    state_arg(q)
    q.add_argument("id", type=int, metavar="ID", help="the suppression's number, as `suppress list` shows it")
    q.add_argument("--by", required=True, help="who removes it")
    q.set_defaults(func=cmd_suppress_remove)

    p = sub.add_parser("store", help="check the store's integrity, or back it up while the daemon runs")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    q = ssub.add_parser("check", help="check the store's header, schema version and PRAGMA quick_check; "
                                      "exit 0, or 65 if damaged")
    config_arg(q)
    state_arg(q)
    q.add_argument("--full", action="store_true", help="PRAGMA integrity_check: slower, checks every index entry")
    q.add_argument("--json", action="store_true", help="print the verdict, schema version and problems as JSON")
    q.set_defaults(func=cmd_store_check)
    q = ssub.add_parser("backup", help="a consistent copy of the store (SQLite online backup), checked; "
                                       "safe while the daemon runs")
    config_arg(q)
    state_arg(q)
    q.add_argument("target", type=Path, metavar="PATH", help="the new file (never overwritten)")
    q.add_argument("--json", action="store_true", help="print the backup's path, size and time taken as JSON")
    q.set_defaults(func=cmd_store_backup)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """A subcommand's own --help opens with what it does: its one-line help from the
    parent's list, where no longer description was written."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                if not subparser.description and helps.get(name):
                    subparser.description = helps[name][0].upper() + helps[name][1:] + "."
                _describe(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Everything this program creates (store, WAL, quarantine, keys, reviews) holds or
    # guards personal information: its user's alone, also outside systemd's UMask=0077.
    make_private()
    try:
        return args.func(args)
    except StoreFormatError as exc:  # a newer version's store: restarting will not help
        print(f"neo-auditd: {exc}", file=sys.stderr)
        return EX_CONFIG
    except StoreDamaged as exc:  # missing, not ours, or damaged: restarting will not help either
        print(f"neo-auditd: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
