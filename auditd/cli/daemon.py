"""The commands that run the pipeline or check what it loads: `run`, `check`, `replay`,
`test-rules`, `keygen`, `status`."""

from __future__ import annotations

import sys
from pathlib import Path

from auditd.cli.common import (
    config_arg, config_error, date_arg, json_out, print_warnings, rule_ids, settings_and_store_path,
    state_arg, store_despite_problems, store_reader, workers_arg,
)
from auditd.errors import EX_CONFIG, ConfigError


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


def cmd_check(args) -> int:
    import datetime as dt

    from auditd.runtime import load_runtime

    try:
        runtime = load_runtime(args.config)
    except ConfigError as exc:
        return config_error(exc, args.json)
    today = args.as_of or dt.datetime.now(runtime.settings.zone).date()
    problems, warnings = _environment_checks(runtime, today, cluster=not args.offline)
    if problems:
        return config_error(ConfigError(problems.items), args.json, warnings)
    summary = {
        "ok": True,
        "config": str(args.config),
        "sources": [s.name for s in runtime.settings.sources],
        "rules": len(runtime.ruleset),
        "employees": len(runtime.directory) if runtime.directory is not None else 0,
        "warnings": [str(w) for w in (*runtime.warnings, *warnings)],
    }
    print_warnings([*runtime.warnings, *warnings])
    if args.json:
        json_out(summary)
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
        return config_error(exc, False)


def cmd_status(args) -> int:
    import datetime as dt

    from auditd.config.located import Problems
    from auditd.ops.status import StatusError, collect_status
    from auditd.ops.status_text import render_status
    from auditd.settings import load_settings

    problems = Problems()
    settings, doc = load_settings(args.config, problems)
    if settings is None:
        return _status_despite_problems(args, doc, ConfigError(problems.items))
    store_path = (args.state_dir / "neo-auditd.db") if args.state_dir else settings.store_path
    _, ruleset = rule_ids(settings)  # their exceptions, listed beside the store's suppressions
    try:
        status = collect_status(store_path, settings, dt.datetime.now(dt.timezone.utc), ruleset=ruleset)
    except StatusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json_out(status)
    else:
        print(render_status(status, settings.zone))
    return 0


def _status_despite_problems(args, doc, error: ConfigError) -> int:
    """`status` after a bad edit of the config: what the store says (the running daemon
    goes on with the configuration it last loaded), then the problems; exit 78 all the
    same, so that a script sees the file must be fixed before a reload."""
    import datetime as dt

    import msgspec

    from auditd.config.typed import DEFAULT_ZONE
    from auditd.ops.status import StatusError, collect_status
    from auditd.ops.status_text import render_status

    store_path = store_despite_problems(args, doc)
    outcome = ("the store it names was not read (a running daemon keeps the configuration it last loaded; "
               "fix this file, then reload)")
    try:
        # the broken file's own path: too long, or in a folder this user may not enter
        found = store_path is not None and store_path.is_file()
    except (OSError, ValueError):
        found = False
    if not found:
        return config_error(error, args.json, outcome=outcome)
    try:
        status = collect_status(store_path, None, dt.datetime.now(dt.timezone.utc))
    except StatusError:
        return config_error(error, args.json, outcome=outcome)
    if args.json:
        json_out(msgspec.to_builtins(status) | {"config_problems": [str(p) for p in error.problems]})
    else:
        print(render_status(status, DEFAULT_ZONE))
    for problem in error.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{len(error.problems)} problem(s) in {args.config}: the status above is the store's at {store_path}, "
          f"as the running daemon keeps it with the configuration it last loaded (times in "
          f"{DEFAULT_ZONE.key}); fix this file, then reload", file=sys.stderr)
    return EX_CONFIG


def cmd_replay(args) -> int:
    from auditd.runtime import load_runtime
    from auditd.opening import open_store
    from auditd.replay import replay
    from auditd.workers import WorkerMismatch

    try:
        runtime = load_runtime(args.config, state_dir=args.state_dir)
    except ConfigError as exc:
        return config_error(exc, args.json)
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
            return config_error(ConfigError(problems.items), args.json, warnings)
        print_warnings(warnings)
    # the rules with scope: cluster run here too: the replayed events' windows are evaluated
    # (the running daemons evaluate only what reaches the cluster within the settle horizon)
    cluster_rules = [r.id for r in runtime.ruleset.scoped("cluster")]
    if cluster_rules:
        import dataclasses

        runtime = dataclasses.replace(runtime, ruleset=runtime.ruleset.with_scopes(frozenset({"local", "cluster"})))
    try:
        store, quarantine = open_store(runtime, args.state_dir)
    except ConfigError as exc:  # the folder is not one a store can be opened in
        return config_error(exc, args.json)
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
        json_out(summary)
    else:
        print(f"{summary['events']} events, {summary['quarantined']} quarantined, {summary['skipped']} skipped, "
              f"{summary['alerts']} alerts, {summary['incidents']} incidents open in the store "
              f"({summary['seconds']:.1f} s, {summary['events_per_second']:,.0f} events/s)")
        if summary["cluster_rules"]:
            print(summary["cluster_rules"]["note"])
        for path in summary["already_read"]:
            print(f"{path}: read into this store before, to its end; nothing new in it (its checkpoint; "
                  "--state-dir DIR replays it into another store)")
        for path in summary["unfinished"]:
            print(f"{path}: its last line was still being written; replay it again to read that line")
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
        "already_read": t.already_read,  # files this store had read to their end before: nothing new in them
        "unfinished": t.unfinished,  # files whose last line was still being written: read at the next replay
    }


class _ProgressBar:
    def __init__(self) -> None:
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if pct != self._last:
            self._last = pct
            bar = "#" * (pct // 4)
            getattr(sys.stderr, "write_own", sys.stderr.write)(f"\rreplay [{bar:<25}] {pct:3d}%")
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
            return config_error(ConfigError(problems.items), args.json)
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

    try:
        args.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder of the path should be, /proc, a name too long
        print(f"error: cannot write {args.path}: cannot make its folder: {exc.strerror or exc}", file=sys.stderr)
        return 73  # EX_CANTCREAT
    try:
        create_key_file(args.path)
    except FileExistsError:
        # a new key would silently change every pseudonym: never overwrite
        print(f"error: {args.path} exists; keeping it (a new key would change every pseudonym)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write {args.path}: {exc.strerror or exc}", file=sys.stderr)
        return 73  # EX_CANTCREAT
    print(f"wrote a new 256-bit pseudonym key to {args.path} (mode 0600)")
    return 0


def add_parsers(sub) -> None:
    """The run, check, replay, test-rules, keygen, status commands."""
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
    p.add_argument("--workers", type=workers_arg, metavar="N",
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
    p.add_argument("--as-of", type=date_arg, metavar="DATE",
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
    p.add_argument("--workers", type=workers_arg, metavar="N",
                   help="worker processes for decode, enrich and the rules' conditions; the store, the "
                        "stateful rules and the checkpoints stay in this process, so the result is the same "
                        "for every N (default: the config's pipeline.workers, 1; 0: one per core)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("test-rules", help="run every rule's samples; a rule without a positive sample fails")
    config_arg(p, required=False)
    p.add_argument("--rules", type=Path, nargs="*", default=[],
                   help="rule files or folders to test, besides the config's (without -c and --rules: the shipped "
                        "rules)")
    p.add_argument("--json", action="store_true", help="print the counts and the failed samples as JSON (with -v: every sample)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every sample, not only failures (in --json too)")
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
