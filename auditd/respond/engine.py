"""The respond stage: the change log in, playbook steps and rendered outputs out.

``Responder.run(conn, now)`` is what the ``respond-due`` job does every
``respond.check_every`` (and ``neo-auditd playbook run-due`` once):

1. **plan** — read the incident change log after the ``respond`` cursor; for each
   change add the steps of the incident's tier's playbook that it lacks (clocks from
   the incident's discovery, so a re-grade upward adds the new tier's steps with the
   original clocks), the police step once a criminal band is reached, the resolution
   clocks (closing report) when it is resolved, a follow-up report when an important
   fact changes after the initial report; move clocks when the discovery moves earlier
   (a merge) or the CII flag changes; cancel the open steps of a dismissed incident. The
   steps and the cursor move commit together: each change is planned exactly once.
2. **fire** — each open step that is ready (its waits finished) is done by kind, one
   transaction per step: reports and notices are rendered and recorded with the step's
   new state, so a crash leaves either both or neither (the files are rewritten under
   the same names); a contain action is claimed in its own committed transaction
   before it runs, so it never runs twice: one found still ``running`` after a crash
   is marked failed (its outcome unknown) and escalated. A step fired after its due
   time is marked late.
3. **escalate** — every open step past its due time escalates to the next audience of
   its playbook's ladder, once per ``escalation.every``.

Every step event also goes on the incident's hash-chained timeline, through the
correlate seam (``StepTrace``), in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from auditd.correlate import Correlator, StepTrace, changelog
from auditd.correlate.model import IncidentChange
from auditd.respond import steps as table
from auditd.respond.contacts import ContactBook, ContactError, read_manifests
from auditd.respond.contain import payload, run_action
from auditd.respond.due import Due
from auditd.respond.notices import RenderingStopped, render_announcement, render_customers, render_internal
from auditd.respond.playbook import Playbook, PlaybookSet, Step
from auditd.respond.render import Output, Staged, Templates
from auditd.respond.reports import context, latest, render_report
from auditd.respond.settings import AudienceSettings, RespondSettings
from auditd.store.pressure import StorageUnavailable, hold_reason
from auditd.store.sqlite import immediate, snapshot
from auditd.workdays import WorkingCalendar

log = logging.getLogger("neo_auditd.respond")

CONSUMER = "respond"
WHO = "respond"  # the `who` of what the stage does by itself
REPORTED_TIERS = ("T1", "T2", "T3", "T4")  # report to the regulator, follow-ups, closing report
# besides a tier raised or a criminal band reached: the changes a follow-up report tells
IMPORTANT_CAUSES = ("loss_set", "cii_set", "merged")
INTERRUPTED_AFTER = dt.timedelta(seconds=60)  # beyond the action's own timeout
MAX_PASSES = 20  # over the open steps per run: longer chains of waits go on at the next run


@dataclass
class RunReport:
    planned: int = 0
    fired: list[str] = field(default_factory=list)  # "INC/step"
    late: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    escalated: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # the contact source did not answer: rendered at the next run
    changes: int = 0


class Responder:
    """Built once per runtime (playbooks, templates and contacts as loaded); no I/O here."""

    def __init__(self, settings: RespondSettings, playbooks: PlaybookSet, *, templates: Templates,
                 calendar: WorkingCalendar, zone: dt.tzinfo, out_dir: Path, correlator: Correlator,
                 contacts: ContactBook | None = None, pseudonymise: Callable[[str], str] = lambda raw: raw,
                 insider_addresses: Callable[[str], frozenset[str]] = lambda actor: frozenset()):
        self.settings = settings
        self.playbooks = playbooks
        self.templates = templates
        self.calendar = calendar
        self.zone = zone
        self.out_dir = Path(out_dir)
        self.correlator = correlator
        # not `contacts or ...`: a book that asks an HTTP service holds no rows, and so is falsy
        self.contacts = contacts if contacts is not None else ContactBook()
        self.pseudonymise = pseudonymise
        self.insider_addresses = insider_addresses
        self._should_stop: Callable[[], bool] = lambda: False  # the running job's, during `run`

    # -- the job ---------------------------------------------------------------------------
    def run(self, conn: sqlite3.Connection, now: dt.datetime, *,
            should_stop: Callable[[], bool] = lambda: False) -> RunReport:
        report = RunReport()
        self._affected: dict[str, tuple[list[str], dict[str, Any]]] = {}  # per run: manifests read once
        self._should_stop = should_stop
        Staged.clear_leftovers(self.out_dir)  # a crash mid-rendering left files of no step
        while not should_stop():
            n = self.plan(conn, now, report)
            if n == 0:
                break
        for _ in range(MAX_PASSES):  # a step that finishes may make the next one ready
            before = len(report.fired) + len(report.failed)
            if should_stop():
                break
            self.fire(conn, now, report)
            if len(report.fired) + len(report.failed) == before:
                break
        if not should_stop():
            self.escalate(conn, now, report)
        return report

    # -- 1. plan ---------------------------------------------------------------------------
    def plan(self, conn: sqlite3.Connection, now: dt.datetime, report: RunReport, limit: int = 500) -> int:
        """Deal with one page of the change log; returns how many changes it read."""
        with immediate(conn):
            logged = changelog.read(conn, CONSUMER, limit=limit)
            traces: list[StepTrace] = []
            for item in logged:
                report.planned += self._on_change(conn, item.change, now, traces)
            if traces:
                self.correlator.apply(conn, actions=traces)
            if logged:
                changelog.advance(conn, CONSUMER, logged[-1].seq)
        report.changes += len(logged)
        return len(logged)

    def _on_change(self, conn: sqlite3.Connection, change: IncidentChange, now: dt.datetime,
                   traces: list[StepTrace]) -> int:
        if change.cause in ("step", "note", "assigned"):
            return 0
        incident = change.incident_id
        if change.status == "dismissed":
            return self._cancel(conn, incident, change, now, traces)
        added = self._add_playbook_steps(conn, change, now, traces)
        if change.cause in ("merged", "cii_set"):
            self._move_clocks(conn, change, traces)
        if change.cause == "status_changed" and change.status == "resolved" and change.at is not None:
            self._start_resolution_clocks(conn, incident, change.at, traces)
        if change.tier_raised or change.band_reached or change.cause in IMPORTANT_CAUSES:
            added += self._followup(conn, change, now, traces)
        return added

    def _add_playbook_steps(self, conn: sqlite3.Connection, change: IncidentChange, now: dt.datetime,
                            traces: list[StepTrace]) -> int:
        playbook = self.playbooks.get(change.tier)
        if playbook is None or change.discovered_at is None or change.status in ("closed", "dismissed"):
            return 0
        existing = {row.step_id: row for row in table.of_incident(conn, change.incident_id)}
        added: dict[str, str | None] = {}
        for step in playbook.steps:
            if step.when == "band_reached" and change.band is None:
                continue
            due = self.due_at(step, change.discovered_at, change.cii, resolved_at=None)
            row = existing.get(step.id)
            if row is None:
                table.insert(conn, change.incident_id, playbook.playbook, step, due, now)
                added[step.id] = due.isoformat() if due else None
            elif row.open and due is not None and row.due_at is not None and due < row.due_at:
                table.update(conn, row, due_at=due)  # a higher tier's clock is shorter: it wins
        if added:
            traces.append(StepTrace(incident_id=change.incident_id, who=WHO, step_id="playbook", event="planned",
                                    detail={"playbook": playbook.playbook, "steps": added}))
        return len(added)

    def due_at(self, step: Step, discovered_at: dt.datetime, cii: bool, resolved_at: dt.datetime | None
               ) -> dt.datetime | None:
        if step.anchor == "resolution":
            return step.due.after(resolved_at, self.calendar, self.zone) if resolved_at else None
        due = step.due_cii if cii and step.due_cii is not None else step.due
        return due.after(discovered_at, self.calendar, self.zone)

    def _move_clocks(self, conn: sqlite3.Connection, change: IncidentChange, traces: list[StepTrace]) -> None:
        moved = {}
        for row in table.of_incident(conn, change.incident_id):
            if not row.open or row.anchor != "discovery" or change.discovered_at is None:
                continue
            if row.step_id.startswith("report-followup-"):
                continue
            due = self.due_at(row.spec, change.discovered_at, change.cii, None)
            if due is not None and due != row.due_at:
                table.update(conn, row, due_at=due)
                moved[row.step_id] = due.isoformat()
        if moved:
            traces.append(StepTrace(incident_id=change.incident_id, who=WHO, step_id="playbook", event="clocks_moved",
                                    detail={"cause": change.cause, "steps": moved}))

    def _start_resolution_clocks(self, conn: sqlite3.Connection, incident: str, resolved_at: dt.datetime,
                                 traces: list[StepTrace]) -> None:
        started = {}
        for row in table.of_incident(conn, incident):
            if row.open and row.anchor == "resolution" and row.due_at is None:
                due = self.due_at(row.spec, resolved_at, False, resolved_at)
                table.update(conn, row, due_at=due)
                started[row.step_id] = due.isoformat() if due else None
        if started:
            traces.append(StepTrace(incident_id=incident, who=WHO, step_id="playbook", event="resolution_clocks",
                                    detail={"resolved_at": resolved_at.isoformat(), "steps": started}))

    def _followup(self, conn: sqlite3.Connection, change: IncidentChange, now: dt.datetime,
                  traces: list[StepTrace]) -> int:
        """A follow-up report when an important fact changes after the initial one went out."""
        if change.tier not in REPORTED_TIERS or latest(conn, change.incident_id, "initial") is None:
            return 0
        n = conn.execute("SELECT COUNT(*) FROM playbook_steps WHERE incident_id = ? AND step_id LIKE"
                         " 'report-followup-%'", (change.incident_id,)).fetchone()[0] + 1
        at = change.at or now
        step = Step(id=f"report-followup-{n}", kind="report", title=f"Follow-up report {n} ({change.cause})",
                    due=Due(seconds=self.settings.followup_due.seconds), report="followup", owner="responder")
        due = (at + dt.timedelta(seconds=self.settings.followup_due.seconds)).astimezone(dt.timezone.utc)
        table.insert(conn, change.incident_id, change.tier, step, due, now)
        traces.append(StepTrace(incident_id=change.incident_id, who=WHO, step_id=step.id, event="planned",
                                detail={"due_at": due.isoformat(), "because": change.cause}))
        return 1

    def _cancel(self, conn: sqlite3.Connection, incident: str, change: IncidentChange, now: dt.datetime,
                traces: list[StepTrace]) -> int:
        cancelled = []
        for row in table.of_incident(conn, incident):
            if row.open:
                reason = f"incident {change.status}" + (f" ({change.dismissal_reason})" if change.dismissal_reason else "")
                if change.merged_into:
                    reason += f", merged into {change.merged_into}"
                table.update(conn, row, state="cancelled", closed_at=now, closed_by=WHO, reason=reason)
                cancelled.append(row.step_id)
        if cancelled:
            traces.append(StepTrace(incident_id=incident, who=WHO, step_id="playbook", event="cancelled",
                                    detail={"steps": cancelled}))
        return 0

    # -- 2. fire ---------------------------------------------------------------------------
    def fire(self, conn: sqlite3.Connection, now: dt.datetime, report: RunReport) -> None:
        for row in table.open_steps(conn):
            if row.state == "running":
                self._interrupted(conn, row, now, report)
                continue
            if row.state != "pending" or not row.spec.automatic or row.due_at is None:
                continue
            if row.kind == "escalate" and row.due_at > now:
                continue  # an escalation acts at its time; the others as soon as they are ready
            if row.kind == "contain" and (row.spec.action or "") not in self.settings.contain:
                continue  # not configured: a person does it by hand (`playbook done`)
            if not self._ready(conn, row):
                continue
            try:
                self._fire_one(conn, row, now, report)
            except RenderingStopped:
                return  # the daemon stops; the step stays pending and renders again at the next run
            except ContactError as exc:
                # the contact source is down, slow or answered an error for one of the customers:
                # that is not the step's failure (a failed step is never rendered again, and every
                # customer would go without a notice); nothing of the rendering is kept, the step
                # stays pending, renders again at the next run, and escalates if it falls overdue
                log.warning("contact source did not answer; the step renders again at the next run",
                            extra={"incident": row.incident_id, "step": row.step_id, "error": str(exc)})
                report.waiting.append(f"{row.incident_id}/{row.step_id}")
            except Exception as exc:  # one step's failure must not stop the others
                if hold_reason(exc) is not None:
                    # the store or the disk is full: the step did not fail, it could not be
                    # recorded; nothing of it committed, and the next run fires it (late)
                    raise StorageUnavailable(hold_reason(exc) or str(exc)) from exc
                log.exception("playbook step failed", extra={"incident": row.incident_id, "step": row.step_id})
                self._fail(conn, row, now, {"error": f"{type(exc).__name__}: {exc}"[:500]}, report)

    def _ready(self, conn: sqlite3.Connection, row: table.StepRow) -> bool:
        for other in row.waits_for:
            found = table.get(conn, row.incident_id, other)
            if found is not None and found.state not in table.FINISHED:
                return False
        return True

    def _fire_one(self, conn: sqlite3.Connection, row: table.StepRow, now: dt.datetime, report: RunReport) -> None:
        if row.kind == "contain":
            self._contain(conn, row, now, report)
            return
        # Rendered first, on one snapshot of the store and without its write lock (the
        # pipeline's batches wait for that lock, and a step may render thousands of
        # customer notices or ask a contact service for each); then one short
        # transaction puts the files in place with the step's rows, unless another
        # runner fired the step meanwhile.
        with Staged(self.out_dir) as staged:
            try:
                with snapshot(conn):
                    fresh = table.get(conn, row.incident_id, row.step_id)
                    if fresh is None or fresh.state != "pending":
                        return  # another runner got there first
                    rendered = self._render_step(conn, fresh, now, staged)
                # what needs no store (customer notices: a contact look-up and a file each)
                # is rendered after the snapshot is let go: a long read keeps the WAL from
                # being checkpointed, and it grows meanwhile
                state, result = rendered() if callable(rendered) else rendered
                late = row.due_at is not None and now > row.due_at
                closed = state in ("done", "skipped")
                with immediate(conn):
                    fresh = table.get(conn, row.incident_id, row.step_id)
                    if fresh is None or fresh.state != "pending":
                        return
                    staged.commit(conn)
                    table.update(conn, fresh, state=state, fired_at=now, late=late, result=result,
                                 closed_at=now if closed else None, closed_by=WHO if closed else None,
                                 reason=result.pop("reason", None) if state == "skipped" else None)
                    self._trace(conn, fresh, "fired" if state != "skipped" else "skipped",
                                {"late": late, "state": state, **_summary(result)})
            except sqlite3.IntegrityError:
                # a person rendered the same report revision meanwhile (`report`): the next
                # run renders the step again, as the revision after theirs
                log.info("playbook step rendered again later",
                         extra={"incident": row.incident_id, "step": row.step_id})
                return
        key = f"{row.incident_id}/{row.step_id}"
        report.fired.append(key)
        if late:
            report.late.append(key)

    def _render_step(self, conn: sqlite3.Connection, row: table.StepRow, now: dt.datetime, out: Output,
                     ) -> tuple[str, dict[str, Any]] | Callable[[], tuple[str, dict[str, Any]]]:
        """What the step renders (written to `out`): its state after and its result, or,
        where the rest needs no store, a function that renders it and returns those."""
        spec = row.spec
        incident = self._incident(conn, row.incident_id)
        if spec.kind == "report":
            people = self._people_count(conn, row.incident_id)
            rendered = render_report(conn, row.incident_id, spec.report or "initial", templates=self.templates,
                                     organisation=self.settings.organisation, zone=self.zone, out_dir=self.out_dir,
                                     now=now, who=WHO, people=people, out=out)
            return "review", {"report": spec.report, "revision": rendered.revision, "paths": rendered.paths,
                              "cause_known": rendered.cause_known}
        ctx = context(conn, row.incident_id, self.settings.organisation, self.zone, now,
                      people=self._people_count(conn, row.incident_id))
        if spec.kind == "notify" and spec.audience == "customers":
            recipients, manifest = self.affected(conn, row.incident_id)
            insiders = self.insider_addresses(incident["actor"]) if incident["actor"] else frozenset()

            def notices() -> tuple[str, dict[str, Any]]:
                result = render_customers(
                    conn, self.templates, self.out_dir, ctx, incident_id=row.incident_id, step_id=row.step_id,
                    template=spec.template or "customer-notice", recipients=recipients, contacts=self.contacts,
                    insider_addresses=insiders, default_language=self.settings.default_language, now=now, out=out,
                    should_stop=self._should_stop)
                return "done", {**result.as_dict(), **manifest}

            return notices
        if spec.kind == "notify":
            attachments = []
            if spec.attach:
                attached = table.get(conn, row.incident_id, spec.attach)
                kind = attached.spec.report if attached else None
                found = latest(conn, row.incident_id, kind) if kind else None
                if found:
                    attachments.append(found[1])
            path = render_internal(conn, self.templates, self.out_dir, ctx, incident_id=row.incident_id,
                                   step_id=row.step_id, revision=1, kind=spec.audience or "notice",
                                   audience=spec.audience or "security", settings=self._audience(spec.audience),
                                   channel=spec.channel, template=spec.template or "internal-alert", now=now,
                                   attachments=attachments, extra={"step": spec.title}, out=out)
            return "done", {"path": path, "attachments": attachments}
        if spec.kind == "announce":
            unresolved = self._unresolved(conn, row)
            if unresolved == 0:
                return "skipped", {"reason": "every affected person was told one by one", "unresolved": 0}
            paths = render_announcement(conn, self.templates, self.out_dir, ctx, incident_id=row.incident_id,
                                        step_id=row.step_id, template=spec.template or "announcement",
                                        channel=spec.channel or "portal", unresolved=unresolved, now=now,
                                        out=out)
            return "done", {"paths": paths, "unresolved": unresolved}
        if spec.kind == "escalate":
            still_open = [s for s in spec.watch if (r := table.get(conn, row.incident_id, s)) is not None and r.open]
            if not still_open:
                return "skipped", {"reason": "the steps it watches are finished"}
            path = render_internal(conn, self.templates, self.out_dir, ctx, incident_id=row.incident_id,
                                   step_id=row.step_id, revision=1, kind="escalation",
                                   audience=spec.audience or "management", settings=self._audience(spec.audience),
                                   channel=spec.channel, template=spec.template or "escalation", now=now,
                                   extra={"step": spec.title, "overdue_steps": still_open}, out=out)
            return "done", {"path": path, "watched_open": still_open}
        raise ValueError(f"no automatic action for a {spec.kind} step")

    def _incident(self, conn: sqlite3.Connection, incident_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT actor, tier, categories, status FROM incidents WHERE incident_id = ?",
                           (incident_id,)).fetchone()
        actor, tier, categories, status = row
        return {"actor": actor, "tier": tier, "categories": tuple(json.loads(categories)), "status": status}

    def _audience(self, audience: str | None) -> AudienceSettings:
        return self.settings.audiences.get(audience or "security") or AudienceSettings(
            channel="email", contact_ref=audience or "security", language=self.settings.default_language)

    def affected(self, conn: sqlite3.Connection, incident_id: str) -> tuple[list[str], dict[str, Any]]:
        """The affected customers' pseudonyms: those the incident recorded, and those the
        export manifests list for its evidence events' requests (and those of the
        incidents merged into it)."""
        cache = getattr(self, "_affected", None)
        if cache is not None and incident_id in cache:
            return cache[incident_id]
        found = self._read_affected(conn, incident_id)
        if cache is not None:
            cache[incident_id] = found
        return found

    def _read_affected(self, conn: sqlite3.Connection, incident_id: str) -> tuple[list[str], dict[str, Any]]:
        people = {r[0] for r in conn.execute("SELECT subject_id FROM incident_subjects WHERE incident_id = ?",
                                             (incident_id,))}
        info: dict[str, Any] = {}
        if self.settings.export_manifests:
            requests = self._requests(conn, incident_id)
            read = read_manifests(self.settings.export_manifests, requests, self.pseudonymise)
            for customers in read.customers.values():
                people |= customers
            info = {"manifest_requests": len(read.customers), "manifest_bad_lines": read.bad_lines,
                    "manifest_unreadable_files": read.unreadable_files}
        return sorted(people), info

    def _people_count(self, conn: sqlite3.Connection, incident_id: str) -> int:
        people, _ = self.affected(conn, incident_id)
        return len(people)

    @staticmethod
    def _requests(conn: sqlite3.Connection, incident_id: str) -> set[str]:
        from auditd.correlate import get_incident
        from auditd.store.encoding import decode_event

        merged = [r[0] for r in conn.execute("SELECT incident_id FROM incidents WHERE merged_into = ?",
                                             (incident_id,))]
        ids = [e for i in (incident_id, *merged) for e in get_incident(conn, i, limit=10_000).evidence_event_ids]
        requests: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for (doc,) in conn.execute(f"SELECT doc FROM evidence WHERE event_id IN ({','.join('?' * len(chunk))})",
                                       chunk):
                try:
                    event = decode_event(doc)
                except Exception:
                    continue
                if event.request_id:
                    requests.add(event.request_id)
        return requests

    def _unresolved(self, conn: sqlite3.Connection, row: table.StepRow) -> int:
        """People the customer notices could not reach (from the notify step it waits for)."""
        total = 0
        for other in row.waits_for:
            found = table.get(conn, row.incident_id, other)
            if found is None:
                continue
            if found.kind == "notify" and found.audience == "customers":
                if found.state == "skipped":  # an art. 57(2) exemption: nobody is told one by one
                    return 0
                total += int(found.result.get("unresolved", 0))
        return total

    def _contain(self, conn: sqlite3.Connection, row: table.StepRow, now: dt.datetime, report: RunReport) -> None:
        action = self.settings.contain.get(row.spec.action or "")
        incident = self._incident(conn, row.incident_id)
        with immediate(conn):  # the claim commits before the action starts: it never runs twice
            fresh = table.get(conn, row.incident_id, row.step_id)
            if fresh is None or fresh.state != "pending":
                return
            table.update(conn, fresh, state="running", started_at=now)
            self._trace(conn, fresh, "started", {"action": row.spec.action})
        if action is None:
            outcome_ok, detail = False, {"error": f"contain action {row.spec.action!r} is not configured"}
        else:
            outcome = run_action(action, payload(row.incident_id, row.step_id, incident["actor"], incident["tier"],
                                                 incident["categories"]))
            outcome_ok, detail = outcome.ok, outcome.detail
        late = row.due_at is not None and now > row.due_at
        key = f"{row.incident_id}/{row.step_id}"
        if outcome_ok:
            with immediate(conn):
                table.update(conn, fresh, state="done", fired_at=now, late=late, result=detail, closed_at=now,
                             closed_by=WHO)
                self._trace(conn, fresh, "done", {"late": late, **_summary(detail)})
            report.fired.append(key)
            if late:
                report.late.append(key)
        else:
            self._fail(conn, fresh, now, detail, report, late=late)

    def _fail(self, conn: sqlite3.Connection, row: table.StepRow, now: dt.datetime, detail: dict[str, Any],
              report: RunReport, *, late: bool = False) -> None:
        """Failed: the step stays open (a person finishes or skips it) and escalates at once.
        The escalation renders first, without the write lock (as steps do, `_fire_one`)."""
        with Staged(self.out_dir) as staged:
            with snapshot(conn):
                audience = self._render_escalation(conn, row, now, staged, because="failed")
            with immediate(conn):
                table.update(conn, row, state="failed", fired_at=now, late=late, result=detail,
                             reason=_reason(detail))
                self._trace(conn, row, "failed", _summary(detail))
                staged.commit(conn)
                self._record_escalation(conn, row, now, report, audience, because="failed")
        report.failed.append(f"{row.incident_id}/{row.step_id}")

    def _interrupted(self, conn: sqlite3.Connection, row: table.StepRow, now: dt.datetime, report: RunReport) -> None:
        action = self.settings.contain.get(row.spec.action or "")
        limit = dt.timedelta(seconds=action.timeout_s if action else 0) + INTERRUPTED_AFTER
        if row.started_at is not None and now - row.started_at < limit:
            return  # still running elsewhere (e.g. the daemon's job while a person runs run-due)
        self._fail(conn, row, now, {"error": "interrupted: the daemon stopped while the action ran; its outcome is"
                                             " unknown, and it is not run again by itself"}, report)

    # -- 3. escalate -------------------------------------------------------------------------
    def escalate(self, conn: sqlite3.Connection, now: dt.datetime, report: RunReport) -> None:
        for row in table.open_steps(conn):
            if row.due_at is None or row.due_at >= now or row.state == "running":
                continue
            if row.next_escalation_at is not None and row.next_escalation_at > now:
                continue
            playbook = self.playbooks.get(row.playbook)
            ladder = self._ladder(row, playbook)
            if row.escalations >= len(ladder):
                continue  # every rung has been told; status and the metric keep showing it
            with Staged(self.out_dir) as staged:
                with snapshot(conn):
                    fresh = table.get(conn, row.incident_id, row.step_id)
                    if fresh is None or not fresh.open or fresh.escalations != row.escalations:
                        continue
                    audience = self._render_escalation(conn, fresh, now, staged, because="overdue")
                with immediate(conn):
                    fresh = table.get(conn, row.incident_id, row.step_id)
                    if fresh is None or not fresh.open or fresh.escalations != row.escalations:
                        continue  # a person acted meanwhile: nothing of the rendering is kept
                    staged.commit(conn)
                    self._record_escalation(conn, fresh, now, report, audience, because="overdue")

    def _ladder(self, row: table.StepRow, playbook: Playbook | None) -> tuple[str, ...]:
        ladder = tuple(playbook.escalation.ladder) if playbook else ("security",)
        if row.spec.escalate_to:
            ladder = (row.spec.escalate_to,) + tuple(a for a in ladder if a != row.spec.escalate_to)
        return ladder

    def _render_escalation(self, conn: sqlite3.Connection, row: table.StepRow, now: dt.datetime, out: Output, *,
                           because: str) -> str:
        """The escalation of an overdue or failed step to the next rung, written to `out`;
        returns the audience told."""
        playbook = self.playbooks.get(row.playbook)
        ladder = self._ladder(row, playbook)
        audience = ladder[min(row.escalations, len(ladder) - 1)]
        channel = playbook.escalation.channel if playbook else "chat"
        ctx = context(conn, row.incident_id, self.settings.organisation, self.zone, now)
        render_internal(conn, self.templates, self.out_dir, ctx, incident_id=row.incident_id,
                        step_id=f"{row.step_id}.escalation", revision=row.escalations + 1, kind="escalation",
                        audience=audience, settings=self._audience(audience), channel=channel,
                        template="escalation", now=now, out=out,
                        extra={"step": row.title, "overdue_steps": [row.step_id], "because": because,
                               "due_at": row.due_at.astimezone(self.zone).strftime("%Y-%m-%d %H:%M")
                               if row.due_at else None})
        return audience

    def _record_escalation(self, conn: sqlite3.Connection, row: table.StepRow, now: dt.datetime, report: RunReport,
                           audience: str, *, because: str) -> None:
        playbook = self.playbooks.get(row.playbook)
        every = playbook.escalation.every.seconds if playbook else 3600.0
        table.update(conn, row, escalations=row.escalations + 1,
                     next_escalation_at=now + dt.timedelta(seconds=every))
        self._trace(conn, row, "escalated", {"to": audience, "level": row.escalations, "because": because})
        report.escalated.append(f"{row.incident_id}/{row.step_id}->{audience}")

    # -- timeline ----------------------------------------------------------------------------
    def _trace(self, conn: sqlite3.Connection, row: table.StepRow, event: str, detail: dict[str, Any],
               who: str = WHO) -> None:
        self.correlator.apply(conn, actions=[StepTrace(incident_id=row.incident_id, who=who, step_id=row.step_id,
                                                       event=event, detail=detail)])


def _reason(detail: dict[str, Any]) -> str:
    if detail.get("timed_out"):
        return f"timed out after {detail.get('timeout_s')} s and was killed"
    if "exit_status" in detail:
        return f"exit status {detail['exit_status']}"
    if "http_status" in detail:
        return f"HTTP {detail['http_status']}"
    return str(detail.get("error", "failed"))[:500]


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """What of a step's result goes on the timeline: statuses and counts, no output text."""
    keep = ("exit_status", "timed_out", "http_status", "error", "recipients", "unresolved", "insider_excluded",
            "revision", "report", "cause_known", "late", "state", "reason")
    return {k: v for k, v in result.items() if k in keep}
