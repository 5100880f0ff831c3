"""The commands a responder works incidents with: `incidents`, `suppress`, `review`."""

from __future__ import annotations

import sys

from auditd.cli.common import (
    config_arg, config_error, id_arg, incident_conn, json_out, limit_arg, open_store, refused_text, rule_ids,
    settings_and_store_path, shown_id_scrubber, state_arg, who_acts,
)
from auditd.errors import ConfigError


def cmd_incidents_list(args) -> int:
    from auditd.correlate import CorrelateError, list_incidents, render_incident_table

    store, zone = incident_conn(args)
    try:
        rows = list_incidents(store.conn, status=args.status, tier=args.tier, limit=args.limit + 1)
    except CorrelateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    more, rows = len(rows) > args.limit, rows[:args.limit]
    if args.json:
        json_out(rows)
    else:
        print(render_incident_table(rows, zone), end="")
        # the default 50 must not pass for all of them
        print(f"the newest {args.limit} shown; there are more (--limit N, --status, --tier)\n" if more else "")
    return 0


def cmd_incidents_show(args) -> int:
    import msgspec

    from auditd.correlate import UnknownIncident, get_incident, render_incident_detail
    from auditd.correlate.evidence import readable_evidence

    settings, path = settings_and_store_path(args)
    store, zone = open_store(path, create=False), settings.zone
    try:
        detail = get_incident(store.conn, args.id)
        evidence = readable_evidence(store.evidence(detail.evidence_event_ids), shown_id_scrubber(settings))
        detail = msgspec.structs.replace(detail, evidence=evidence)
    except UnknownIncident:
        print(f"error: no incident {args.id}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        json_out(detail)
    else:
        print(render_incident_detail(detail, zone))
    return 0


_TRANSITIONS = {"ack": "triaged", "contain": "contained", "resolve": "resolved", "close": "closed"}


def cmd_incidents_act(args) -> int:
    """ack|assign|contain|resolve|close|dismiss|merge|note|loss|cii|tier: one action through the seam."""
    import datetime as dt

    from auditd.correlate import (
        Assign, CorrelateError, Dismiss, Merge, Note, SetCII, SetLoss, SetTier, Transition, act,
    )

    settings, _ = settings_and_store_path(args)
    who, verb = who_acts(args), args.incidents_command
    why = getattr(args, "why", None) or ""
    ids = settings.pseudonym.id_patterns
    for flag, text in (("--why", why), ("the note", getattr(args, "text", None) or ""),
                       ("the assignee", getattr(args, "assignee", None) or ""), ("--who", who)):
        if refused_text(flag, text, ids):
            return 2
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
    store, _ = incident_conn(args)
    try:
        summary = act(store.conn, action, settings=settings.correlate,
                      clock=lambda: dt.datetime.now(dt.timezone.utc))
    except CorrelateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        json_out(summary)
    else:
        print(f"{summary.incident_id}: {summary.status}, {summary.tier}"
              f"{', assigned to ' + summary.assignee if summary.assignee else ''}")
    return 0


def cmd_incidents_verify(args) -> int:
    from auditd.correlate import UnknownIncident, list_incidents, verify_timeline

    store, _ = incident_conn(args)
    try:
        ids = [args.id] if args.id is not None else [i.incident_id for i in list_incidents(store.conn, limit=1_000_000)]
        results = {incident: verify_timeline(store.conn, incident) for incident in ids}
    except UnknownIncident as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    bad = {i: seq for i, (ok, seq) in results.items() if not ok}
    if args.json:
        json_out({"verified": len(results) - len(bad), "broken": [{"incident_id": i, "first_bad_seq": s}
                                                                    for i, s in bad.items()]})
    else:
        for incident, seq in bad.items():
            print(f"{incident}: timeline BROKEN at entry {seq} (edited, removed or re-chained)")
        print(f"{len(results) - len(bad)} of {len(results)} timelines verified")
    return 1 if bad else 0


def _parse_expiry(text: str, now, zone):
    """'2026-12-31' (the end of that day in the company's zone), an ISO time, or a
    duration from now ('7d', '12h')."""
    import datetime as dt

    from auditd.config.typed import Duration

    try:
        return now + Duration.from_config(text).timedelta
    except (ValueError, OverflowError):
        pass
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        day = None
    try:
        if day is not None:
            value = dt.datetime(day.year, day.month, day.day, tzinfo=zone) + dt.timedelta(days=1)
        else:
            value = dt.datetime.fromisoformat(text)  # ValueError: reported by the caller
            value = value if value.tzinfo else value.replace(tzinfo=zone)
        value = value.astimezone(dt.timezone.utc)
    except OverflowError:
        raise ValueError(text) from None
    if value.year >= 9999:  # past what a store keeps (its times are shown in zones a day away)
        raise ValueError(text)
    return value


def cmd_suppress_add(args) -> int:
    import datetime as dt

    from auditd.detect.suppressions import EVERY_RULE, SuppressionError, add

    settings, path = settings_and_store_path(args)
    now = dt.datetime.now(dt.timezone.utc)
    if refused_text("--reason", args.reason, settings.pseudonym.id_patterns):
        return 2
    match = {}
    for item in args.match:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value:
            print(f"error: --match {item!r}: expected FIELD=VALUE, e.g. user.id=E10011", file=sys.stderr)
            return 2
        # kept in the store and shown by status and `suppress list`: a customer is matched by no
        # single-valued field, so a raw id or phone here is a mistake that would spread it
        # (an employee's e-mail, user.email, is fine)
        if refused_text(f"--match {name.strip()}", value, settings.pseudonym.id_patterns, allowed=("email",)):
            return 2
        if name.strip() in match:
            print(f"error: --match {name.strip()} given twice: a suppression matches one value a field "
                  "(add one suppression for each)", file=sys.stderr)
            return 2
        match[name.strip()] = value
    try:
        expires = _parse_expiry(args.expires, now, settings.zone)
    except ValueError:
        print(f"error: --expires {args.expires!r}: expected a date (2026-12-31), an ISO time or a duration (7d), "
              "before the year 9999",
              file=sys.stderr)
        return 2
    known, _ = rule_ids(settings) if args.rule != EVERY_RULE else (None, None)
    store = open_store(path, create=True)  # a suppression may be added before the first run
    try:
        sid = add(store.conn, rule_id=args.rule, match=match, owner=args.owner, reason=args.reason,
                  expires_at=expires.astimezone(settings.zone), now=now, known_rules=known)  # said in its zone
    except SuppressionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if args.json:
        json_out({"id": sid, "expires_at": expires.astimezone(dt.timezone.utc).isoformat()})
    else:
        print(f"suppression {sid} added: rule {args.rule}, {', '.join(f'{k}={v}' for k, v in match.items())}, "
              f"until {expires.astimezone(settings.zone).isoformat(timespec='minutes')} (owner {args.owner})")
    return 0


def cmd_suppress_list(args) -> int:
    import datetime as dt

    from auditd.detect.suppressions import read_all

    now = dt.datetime.now(dt.timezone.utc)
    store, zone = incident_conn(args)
    try:
        rows = [s for s in read_all(store.conn) if args.all or s.active(now)]
    finally:
        store.close()
    if args.json:
        json_out([{"id": s.id, "rule_id": s.rule_id, "match": dict(zip(s.fields, s.values)), "owner": s.owner,
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

    if not args.by.strip():
        print("error: --by: say who removes it (the log keeps it)", file=sys.stderr)
        return 2
    store, _ = incident_conn(args)
    try:
        done = remove(store.conn, args.id, by=args.by.strip(), now=dt.datetime.now(dt.timezone.utc))
    finally:
        store.close()
    if not done:
        print(f"error: no suppression {args.id} in force", file=sys.stderr)
        return 1
    print(f"suppression {args.id} removed by {args.by}")
    return 0


def cmd_review_grants(args) -> int:
    import datetime as dt

    from auditd.config.typed import Duration
    from auditd.entitlement import render_grant_review, review_grants
    from auditd.runtime import load_runtime
    from auditd.opening import open_store

    try:
        period = Duration.from_config(args.since).timedelta
        until = dt.datetime.fromisoformat(args.until) if args.until else dt.datetime.now(dt.timezone.utc)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        runtime = load_runtime(args.config, state_dir=args.state_dir)
    except ConfigError as exc:
        return config_error(exc, args.json)
    if runtime.directory is None:
        print("error: the config names no directory, so there are no grants to review", file=sys.stderr)
        return 2
    if until.tzinfo is None:
        until = until.replace(tzinfo=runtime.settings.zone)
    try:
        store, _ = open_store(runtime, args.state_dir)
    except ConfigError as exc:
        return config_error(exc, args.json)
    try:
        review = review_grants(store, runtime.directory, until - period, until)
    finally:
        store.close()
    print(render_grant_review(review, as_json=args.json, zone=runtime.settings.zone))
    return 0


def add_review_parsers(sub) -> None:
    """`review grants`."""
    p = sub.add_parser("review", help="periodic reviews of access (grants not exercised)")
    rsub = p.add_subparsers(dest="review_command", metavar="WHAT", required=True)
    q = rsub.add_parser("grants", help="per role and per employee, grants not exercised in the period")
    config_arg(q)
    state_arg(q)
    q.add_argument("--since", default="90d", help="the period before --until, e.g. 90d, 12w (default 90d)")
    q.add_argument("--until", help="the end of the period, ISO 8601 (default: now)")
    q.add_argument("--json", action="store_true", help="print the review as JSON")
    q.set_defaults(func=cmd_review_grants)


def add_incident_parsers(sub) -> None:
    """`incidents list|show|verify` and the actions."""
    p = sub.add_parser("incidents", help="list, show, act on and verify incidents")
    isub = p.add_subparsers(dest="incidents_command", metavar="ACTION", required=True)
    q = isub.add_parser("list", help="incidents, newest first")
    config_arg(q)
    state_arg(q)
    q.add_argument("--status", help="only incidents in this status: open, triaged, contained, notified, resolved, "
                                    "closed or dismissed")
    q.add_argument("--tier", help="only incidents of this tier, T1 (the gravest) to T6")
    q.add_argument("--limit", type=limit_arg, default=50, help="list at most this many (default 50)")
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


def add_suppress_parsers(sub) -> None:
    """`suppress add|list|remove`."""
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
    q.add_argument("id", type=id_arg, metavar="ID", help="the suppression's number, as `suppress list` shows it")
    q.add_argument("--by", required=True, help="who removes it")
    q.set_defaults(func=cmd_suppress_remove)
