"""The response commands: `playbook`, `report`, `register`, `outbox`."""

from __future__ import annotations

import sys

from auditd.cli.common import (
    config_arg, config_error, id_arg, incident_conn, json_out, limit_arg, refused_text, settings_and_store_path,
    state_arg,
    store_reader,
    who_acts,
)
from auditd.errors import ConfigError


def _respond_runtime(args):
    """The whole runtime (playbooks, templates, contacts) and the store, for respond commands."""
    from auditd.runtime import load_runtime
    from auditd.store.sqlite import Store

    runtime = load_runtime(args.config, state_dir=args.state_dir)  # reports and notices under it too
    return runtime, Store(runtime.settings.store_path).open()


def cmd_playbook(args) -> int:
    import datetime as dt

    from auditd.correlate import UnknownIncident
    from auditd.respond import people
    from auditd.respond import steps as step_table
    from auditd.respond.view import render_steps

    ids = settings_and_store_path(args)[0].pseudonym.id_patterns
    if any(refused_text(flag, text, ids) for flag, text in (
            ("--note", getattr(args, "note", None) or ""), ("--reason", getattr(args, "reason", None) or ""),
            ("--who", getattr(args, "who", None) or ""))):
        return 2
    try:
        runtime, store = _respond_runtime(args)
    except ConfigError as exc:
        return config_error(exc, getattr(args, "json", False))
    now = dt.datetime.now(dt.timezone.utc)
    conn, verb = store.conn, args.playbook_command
    try:
        if verb == "run-due":
            report = runtime.responder.run(conn, now)
            out = {"changes": report.changes, "planned": report.planned, "fired": report.fired,
                   "late": report.late, "failed": report.failed, "escalated": report.escalated}
            if args.json:
                json_out(out)
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
                json_out([r.to_json() for r in rows])
            else:
                print(render_steps(args.id, rows, now, runtime.settings.zone))
            return 0
        who, correlator = who_acts(args), runtime.correlator
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
        json_out(row.to_json())
    else:
        print(f"{args.id} {row.step_id}: {row.state} by {row.closed_by}")
    return 0


def cmd_report(args) -> int:
    import datetime as dt

    from auditd.correlate import UnknownIncident
    import sqlite3

    from auditd.respond.reports import ReportError, render_report, set_finding
    from auditd.respond.render import Staged
    from auditd.store.sqlite import immediate, snapshot

    ids = settings_and_store_path(args)[0].pseudonym.id_patterns
    if any(refused_text(f"--set {item.partition('=')[0]}", item.partition("=")[2], ids) for item in args.set or []) \
            or refused_text("--who", args.who or "", ids):
        return 2
    findings = []
    for item in args.set or []:
        name, sep, text = item.partition("=")
        if not sep or not text.strip():
            print(f"error: --set takes FIELD=TEXT, got {item!r}", file=sys.stderr)
            return 1
        findings.append((name.strip(), text))
    try:
        runtime, store = _respond_runtime(args)
    except ConfigError as exc:
        return config_error(exc, args.json)
    responder, now, who = runtime.responder, dt.datetime.now(dt.timezone.utc), who_acts(args)
    try:
        if findings:
            with immediate(store.conn):
                if store.conn.execute("SELECT 1 FROM incidents WHERE incident_id = ?", (args.id,)).fetchone() is None:
                    raise UnknownIncident(args.id)
                for name, text in findings:
                    set_finding(store.conn, args.id, name, text, who, now)
        # rendered without the store's write lock, which the daemon's pipeline waits for
        # (export manifests read, templates, five files synced); put in place in one short
        # transaction, rendered again if the daemon took the same revision meanwhile
        for attempt in range(3):
            with Staged(responder.out_dir) as staged:
                with snapshot(store.conn):
                    people_count = len(responder.affected(store.conn, args.id)[0])
                    rendered = render_report(store.conn, args.id, args.kind, templates=responder.templates,
                                             organisation=responder.settings.organisation, zone=runtime.settings.zone,
                                             out_dir=responder.out_dir, now=now, who=who, people=people_count,
                                             out=staged)
                try:
                    with immediate(store.conn):
                        staged.commit(store.conn)
                    break
                except sqlite3.IntegrityError:
                    if attempt == 2:
                        raise
    except (UnknownIncident, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        json_out({"incident_id": rendered.incident_id, "kind": rendered.kind, "revision": rendered.revision,
                   "cause_known": rendered.cause_known, "paths": rendered.paths, "sha256": rendered.sha256})
    else:
        print(f"{rendered.incident_id}: {rendered.kind} report r{rendered.revision}"
              f"{'' if rendered.cause_known else ' (cause not yet known: marked so)'}")
        for name, path in rendered.paths.items():
            print(f"  {name:<12} {path}")
    return 0


def cmd_register(args) -> int:
    from auditd.respond.register import register, render_register

    settings, _ = settings_and_store_path(args)
    store, _ = incident_conn(args)
    try:
        entries = register(store.conn, settings.zone)
    finally:
        store.close()
    if args.json:
        json_out(entries)
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
            return config_error(exc, args.json)
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
            json_out(report.as_dict())
        else:
            print(f"{report.delivered} delivered, {report.retried} to retry, {report.failed} failed "
                  f"({report.escalated} escalation(s)), {report.suppressed} suppressed, {report.fleet} delivered by "
                  f"the fleet, {report.recovered} possible repeat(s) after a crash")
        return 0
    store, zone = incident_conn(args)
    try:
        if args.outbox_command == "list":
            rows = view.list_messages(store.conn, state=args.state, incident=args.incident, limit=args.limit + 1)
            more, rows = len(rows) > args.limit, rows[:args.limit]
            if args.json:
                json_out(rows)
            else:
                print(view.render_list(rows, zone), end="")
                if more:  # the default 50 must not pass for all of them
                    print(f"the newest {args.limit} shown; there are more (--limit N, --state, --incident)")
            return 0
        if args.outbox_command == "show":
            try:
                row = view.show_message(store.conn, args.id)
            except view.UnknownMessage as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            if args.json:
                json_out(row)
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
        json_out({"queued": n})
    else:
        print(f"{n} failed message(s) queued again with a fresh retry budget; the deliver job sends them")
    if not n and not args.failed:
        print(f"error: no failed message among {', '.join(map(str, args.ids))} (`outbox list --state failed` "
              "shows them)", file=sys.stderr)
    return 0 if n or args.failed else 1


def add_parsers(sub) -> None:
    """The playbook, report, register, outbox commands."""
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
    q.add_argument("--limit", type=limit_arg, default=50, help="at most this many messages (default 50)")
    q.set_defaults(func=cmd_outbox)
    q = osub.add_parser("show", help="one message: its key, route, receipt and every attempt")
    store_reader(q, "print the result as JSON (times in UTC)")
    q.add_argument("id", type=id_arg, metavar="ID", help="the message's number, as `outbox list` shows it")
    q.set_defaults(func=cmd_outbox)
    q = osub.add_parser("retry", help="queue failed messages again with a fresh retry budget (after fixing the cause)")
    store_reader(q, "print the result as JSON (times in UTC)")
    q.add_argument("ids", type=id_arg, nargs="*", metavar="ID", help="the failed messages to queue again (or --failed)")
    q.add_argument("--failed", action="store_true", help="every failed message")
    q.set_defaults(func=cmd_outbox)
    q = osub.add_parser("send", help="send what is due now, once, as the deliver job does every deliver.check_every "
                        "(refused, exit 75, while a running daemon's deliver process sends from the same store)")
    store_reader(q, "print the result as JSON (times in UTC)")
    q.set_defaults(func=cmd_outbox)
