"""The deliver job's work: intake, digests, claims, sending, outcomes, escalation.

``Deliverer.run(conn, ...)`` is what the ``deliver`` job does every
``deliver.check_every`` (and ``neo-auditd outbox send`` once). One run drains what is
due: per route, claim a batch (committed ``sending``), send it over one connection,
record the outcomes every ``RECORD_EVERY`` messages, and go on until nothing is due, a
rate limit holds the rest back, or the daemon stops.

Across a crash: a message is sent at least once; a repeat can only be one that was
``sending`` (claimed, committed) when the process died; it is sent again and marked a
possible repeat, and its idempotency key lets receivers drop it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from auditd.deliver import outbox
from auditd.deliver.backoff import RateLimiter, RetryPolicy
from auditd.deliver.channels.base import Channel, Result
from auditd.respond.render import write_private
from auditd.deliver.message import BodyError, Outgoing, read_body
from auditd.deliver.outbox import Notice, Outcome, Planned, Row
from auditd.deliver.settings import DeliverSettings, Route
from auditd.store.sqlite import immediate
from auditd.store.times import from_db, to_db

log = logging.getLogger("neo_auditd.deliver")

RECORD_EVERY = 50  # outcomes per transaction: at most this many are re-sent after a crash mid-batch
RECORD_EVERY_S = 1.0
OWN_KINDS = ("digest", "delivery-failed")
ESCALATION_LINES = 50  # failed messages an escalation lists one by one


class Fleet(Protocol):
    """Several daemons on one Elasticsearch: who may send, and what the fleet delivered."""

    def may_send(self) -> bool: ...

    def delivered_elsewhere(self, rows: Sequence[Row]) -> dict[int, dict[str, Any]]: ...

    def record(self, delivered: Sequence[tuple[Row, dict[str, Any]]]) -> None: ...


@dataclass
class DeliveryReport:
    read: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    suppressed: int = 0
    fleet: int = 0
    recovered: int = 0
    digests: int = 0
    escalated: int = 0
    bodies_deleted: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class Channels(Protocol):
    def for_route(self, route: str, channel: str) -> Channel: ...

    def route(self, route: str) -> Route | None: ...

    def per_minute(self, route: str, channel: str) -> float | None: ...

    def close(self) -> None: ...


class Deliverer:
    """Built once per runtime (settings and channels as loaded); no I/O here."""

    def __init__(self, settings: DeliverSettings, channels: Channels, *, spool: Path, zone: dt.tzinfo,
                 escalate_to: str | None, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
                 monotonic: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.channels = channels
        self.spool = Path(spool)
        self.zone = zone
        self.escalate_to = escalate_to
        self.clock = clock
        self.monotonic = monotonic  # the rate limits' clock
        self.retry = RetryPolicy(settings.retry)
        self.worker = f"{uuid.uuid4().hex[:12]}"
        self._limiters: dict[str, RateLimiter] = {}

    # -- the job ---------------------------------------------------------------------------
    def run(self, conn: sqlite3.Connection, *, should_stop: Callable[[], bool] = lambda: False,
            fleet: Fleet | None = None) -> DeliveryReport:
        try:
            return self._run(conn, should_stop, fleet)
        finally:
            self.channels.close()

    def _run(self, conn: sqlite3.Connection, should_stop: Callable[[], bool], fleet: Fleet | None) -> DeliveryReport:
        report = DeliveryReport()
        report.recovered = outbox.recover(conn, self.clock())
        self._intake(conn, report)
        if fleet is not None and not fleet.may_send():
            self._reconcile(conn, fleet, report)  # another daemon holds the deliver lease: learn what it sent
            return report
        self._release_digests(conn, report)
        while not should_stop():
            progressed, waits = False, []
            for route in outbox.due_routes(conn, self.clock()):
                progressed |= self._drain_route(conn, route, report, should_stop, fleet)
                limiter = self._limiters.get(route)
                if limiter is not None and limiter.allowance() == 0:
                    waits.append(limiter.wait_s())
                if should_stop():
                    break
            self._intake(conn, report)
            if not progressed:
                # a route held back by its rate limit: wait here if it frees before the next run would come
                wait = min(waits, default=None)
                if wait is None or wait > self.settings.check_every.seconds:
                    break
                _pause(wait, should_stop)
        if self.settings.delete_delivered:
            report.bodies_deleted = self.delete_delivered_bodies(conn, should_stop=should_stop)
        return report

    def _reconcile(self, conn: sqlite3.Connection, fleet: Fleet, report: DeliveryReport, page: int = 1000) -> None:
        last = 0
        while True:
            rows = [Row.of(r) for r in conn.execute(
                f"SELECT {outbox._COLUMNS} FROM outbox WHERE state = 'pending' AND id > ? ORDER BY id LIMIT ?",
                (last, page))]
            if not rows:
                return
            last = rows[-1].id
            found = fleet.delivered_elsewhere(rows)
            if found:
                now = self.clock()
                with immediate(conn):
                    outbox.record(conn, [Outcome(r, "fleet", now, now, receipt=found[r.id]) for r in rows
                                         if r.id in found])
                report.fleet += len(found)

    # -- intake ----------------------------------------------------------------------------
    def _intake(self, conn: sqlite3.Connection, report: DeliveryReport) -> None:
        while True:
            n = outbox.intake(conn, self.plan, self.clock())
            report.read += n
            if n == 0:
                return

    def plan(self, notice: Notice) -> list[Planned]:
        """The outbox rows of a notice: one per route of its recipient."""
        held = self.settings.digest is not None and notice.step_id in self.settings.digest.steps
        state, due = ("held", self.next_digest(self.clock())) if held else ("pending", None)
        kind, _, rest = notice.contact_ref.partition(":")
        if kind == "contact":  # a customer: the channel on file, the address in the rendered file
            return [Planned(route=notice.channel, channel=notice.channel, state=state, next_attempt_at=due)]
        name = rest or notice.recipient
        routes = self.settings.to.get(name)
        if routes:
            return [Planned(route=r.label(name, i), channel=r.channel, state=state, next_attempt_at=due)
                    for i, r in enumerate(routes)]
        if notice.channel == "portal":  # the public announcement: the default portal folder
            return [Planned(route="portal", channel="portal", state=state, next_attempt_at=due)]
        return [Planned(route=f"unrouted:{name}", channel=notice.channel, state="failed",
                        error=f"no route for {notice.contact_ref}: add deliver.to.{name}")]

    def next_digest(self, now: dt.datetime) -> dt.datetime:
        assert self.settings.digest is not None
        local = now.astimezone(self.zone)
        at = dt.datetime.combine(local.date(), self.settings.digest.time, tzinfo=self.zone)
        if at <= local:
            at += dt.timedelta(days=1)
        return at.astimezone(dt.timezone.utc)

    # -- sending ---------------------------------------------------------------------------
    def _drain_route(self, conn: sqlite3.Connection, route: str, report: DeliveryReport,
                     should_stop: Callable[[], bool], fleet: Fleet | None) -> bool:
        limiter = self._limiter(route, conn)
        progressed = False
        while not should_stop():
            limit = self.settings.claim_batch if limiter is None else min(self.settings.claim_batch,
                                                                          limiter.allowance())
            if limit <= 0:
                break
            claimed, suppressed = outbox.claim(conn, route, self.clock(), limit, self.worker, self._suppressor())
            report.suppressed += len(suppressed)
            if not claimed:
                if suppressed:
                    progressed = True
                    continue
                break
            progressed = True
            if limiter is not None:
                limiter.take(len(claimed))
            self._send(conn, claimed, report, fleet)
        return progressed

    def _limiter(self, route: str, conn: sqlite3.Connection) -> RateLimiter | None:
        if route not in self._limiters:
            row = conn.execute("SELECT channel FROM outbox WHERE route = ? LIMIT 1", (route,)).fetchone()
            per_minute = self.channels.per_minute(route, row[0] if row else route)
            self._limiters[route] = RateLimiter(per_minute, self.monotonic) if per_minute else None  # type: ignore[assignment]
        return self._limiters[route]

    def _suppressor(self) -> Callable[[sqlite3.Connection, Row], str | None]:
        windows = self.settings.realert
        now = self.clock()

        def suppress(conn: sqlite3.Connection, row: Row) -> str | None:
            window = windows.get(row.audience)
            if window is None or row.kind in OWN_KINDS or row.notice_seq is None:
                return None
            return outbox.delivered_within(conn, row, now - window.timedelta)

        return suppress

    def _send(self, conn: sqlite3.Connection, rows: list[Row], report: DeliveryReport, fleet: Fleet | None) -> None:
        recorder = _Recorder(self, conn, report, fleet)
        claimed_at = self.clock()
        if fleet is not None:
            elsewhere = fleet.delivered_elsewhere(rows)
            for row in [r for r in rows if r.id in elsewhere]:
                recorder.add(Outcome(row, "fleet", claimed_at, self.clock(), receipt=elsewhere[row.id]))
            rows = [r for r in rows if r.id not in elsewhere]
        messages: list[Outgoing] = []
        by_id: dict[int, Row] = {}
        for row in rows:
            try:
                messages.append(self.outgoing(row))
                by_id[row.id] = row
            except BodyError as exc:
                recorder.add(self._outcome(row, Result.failed(str(exc)), claimed_at))
        if messages:
            channel = self.channels.for_route(rows[0].route, rows[0].channel)

            def on_result(message: Outgoing, result: Result) -> None:
                recorder.add(self._outcome(by_id[message.outbox_id], result, claimed_at))

            try:
                channel.send_batch(messages, on_result)
            except Exception as exc:  # noqa: BLE001 - a channel's bug must not leave rows `sending`
                log.exception("channel failed", extra={"route": rows[0].route})
                for message in messages:
                    if not recorder.has(message.outbox_id):
                        recorder.add(self._outcome(by_id[message.outbox_id],
                                                   Result.retry(f"channel error: {type(exc).__name__}"), claimed_at))
        recorder.flush()

    def outgoing(self, row: Row) -> Outgoing:
        body = read_body(row.body_path)
        to = body.get("to") if isinstance(body.get("to"), dict) else {}
        address = name = None
        if row.contact_ref.startswith("contact:"):
            address, name = _text(to.get("address")), _text(to.get("name"))
        else:
            route = self.channels.route(row.route)
            if route is not None:
                address, name = route.address, route.name
        return Outgoing(outbox_id=row.id, wire_key=row.wire_key, route=row.route, channel=row.channel,
                        audience=row.audience, kind=row.kind, incident_id=row.incident_id,
                        language=_text(body.get("language")) or "zh-CN", subject=_text(body.get("subject")) or "",
                        text=body["text"], html=_text(body.get("html")) or "",
                        attachments=tuple(expand_attachments(body.get("attachments") or [])),
                        address=address, name=name)

    def _outcome(self, row: Row, result: Result, claimed_at: dt.datetime) -> Outcome:
        now = self.clock()
        if result.outcome == "delivered":
            return Outcome(row, "delivered", claimed_at, now, receipt=result.receipt,
                           message_sha256=result.message_sha256)
        if result.outcome == "retry" and row.attempts < self.settings.retry.attempts:
            return Outcome(row, "pending", claimed_at, now, error=result.error,
                           next_attempt_at=now + self.retry.wait(row.attempts), maybe_sent=result.maybe_sent)
        error = result.error if result.outcome == "failed" else \
            f"gave up after {row.attempts} attempts: {result.error}"
        return Outcome(row, "failed", claimed_at, now, error=error, maybe_sent=result.maybe_sent)

    # -- digests ---------------------------------------------------------------------------
    def _release_digests(self, conn: sqlite3.Connection, report: DeliveryReport) -> None:
        now = self.clock()
        if conn.execute("SELECT 1 FROM outbox WHERE state = 'held' AND next_attempt_at <= ? LIMIT 1",
                        (to_db(now),)).fetchone() is None:
            return  # the usual case: no write lock taken
        with immediate(conn):
            held = [Row.of(r) for r in conn.execute(
                f"SELECT {outbox._COLUMNS} FROM outbox WHERE state = 'held' AND next_attempt_at <= ?"
                " ORDER BY route, id", (to_db(now),))]
            groups: dict[tuple[str, str], list[Row]] = {}
            for row in held:
                groups.setdefault((row.route, row.contact_ref), []).append(row)
            for (route, contact_ref), members in groups.items():
                day = now.astimezone(self.zone).date().isoformat()
                key = f"digest/{contact_ref}/{route}/{day}/{members[0].id}"
                path = self.spool / "digests" / f"{_safe(route)}-{day}-{members[0].id}.json"
                write_private(path, json.dumps(self._digest_body(conn, members, day), ensure_ascii=False).encode())
                outbox.add_own(conn, route=route, channel=members[0].channel, key=key, kind="digest",
                               audience=members[0].audience, recipient=members[0].recipient,
                               contact_ref=contact_ref, body_path=str(path), now=now)
                conn.executemany("UPDATE outbox SET state = 'digested', covered_by = ? WHERE id = ?",
                                 [(key, m.id) for m in members])
                report.digests += 1

    def _digest_body(self, conn: sqlite3.Connection, members: list[Row], day: str) -> dict[str, Any]:
        lines, language = [], "zh-CN"
        for m in members:
            try:
                body = read_body(m.body_path)
            except BodyError:
                body = {"subject": f"{m.incident_id} ({m.kind})"}
            language = _text(body.get("language")) or language
            lines.append(f"- {_text(body.get('subject')) or m.incident_id}  "
                         f"(neo-auditd incidents show {m.incident_id})")
        subject = f"neo-auditd digest {day}: {len(members)} anomal{'y' if len(members) == 1 else 'ies'} (T6)"
        text = subject + "\n\n" + "\n".join(lines) + "\n"
        return {"to": {"audience": members[0].audience}, "language": language, "subject": subject, "text": text,
                "html": "", "attachments": []}

    # -- escalation ------------------------------------------------------------------------
    def escalation_file(self, failed: list[tuple[Row, str | None]], now: dt.datetime) -> Path | None:
        """The message telling the escalation audience which messages failed, written
        (and synced) before the write lock is taken: one per flush, so a route that fails
        for 50,000 customers pages the security team once, not 50,000 times. None when
        there is nobody to tell, or only escalations failed (never about its own)."""
        told = [(row, error) for row, error in failed if row.kind != "delivery-failed"]
        if not told or self.escalate_to is None:
            return None
        first = told[0][0]
        if len(told) == 1:
            path = self.spool / "escalations" / f"{first.id}.json"
            subject = f"[delivery failed] {first.kind} to {first.audience} ({first.incident_id or '-'})"
            text = (f"A message could not be delivered after {first.attempts} attempt(s).\n\n"
                    f"- key: {first.wire_key}\n- route: {first.route}\n- recipient: {first.recipient}\n"
                    f"- error: {told[0][1]}\n\nDetails: neo-auditd outbox show {first.id}\n"
                    f"Send it again: neo-auditd outbox retry {first.id}\n")
        else:
            path = self.spool / "escalations" / f"{first.id}+{len(told) - 1}.json"
            incidents = sorted({row.incident_id or "-" for row, _ in told})
            subject = (f"[delivery failed] {len(told)} messages ({', '.join(incidents[:3])}"
                       f"{', ...' if len(incidents) > 3 else ''})")
            lines = [f"- {row.id}: {row.kind} to {row.audience} ({row.incident_id or '-'}) via {row.route}, "
                     f"recipient {row.recipient}: {error}" for row, error in told[:ESCALATION_LINES]]
            if len(told) > ESCALATION_LINES:
                lines.append(f"- ... and {len(told) - ESCALATION_LINES} more")
            text = (f"{len(told)} messages could not be delivered after their retry budget.\n\n"
                    + "\n".join(lines) + "\n\nAll of them: neo-auditd outbox list --state failed\n"
                    f"Send them again: neo-auditd outbox retry {' '.join(str(r.id) for r, _ in told[:5])}"
                    f"{' ...' if len(told) > 5 else ''}\n")
        write_private(path, json.dumps({"to": {"audience": "security"}, "language": "en", "subject": subject,
                                        "text": text, "html": "", "attachments": []}, ensure_ascii=False).encode())
        return path

    def escalate(self, conn: sqlite3.Connection, failed: list[tuple[Row, str | None]], path: Path | None,
                 now: dt.datetime) -> int:
        """Mark the failed messages escalated and queue `path` (from `escalation_file`) to
        the escalation audience, not through a route that just failed; in the caller's
        transaction. Returns the messages queued."""
        conn.executemany("UPDATE outbox SET escalated_at = ? WHERE id = ?", [(to_db(now), row.id) for row, _ in failed])
        for row, error in failed:
            log.error("message failed", extra={"outbox_id": row.id, "key": row.wire_key, "route": row.route,
                                               "audience": row.audience, "error": error})
        told = [row for row, _ in failed if row.kind != "delivery-failed"]
        if path is None or not told:
            return 0
        failing = {row.route for row in told}
        key = (f"delivery-failed/{told[0].wire_key}/{told[0].route}" if len(told) == 1
               else f"delivery-failed/{told[0].wire_key}/+{len(told) - 1}")
        incidents = {row.incident_id for row in told}
        added = 0
        for i, route in enumerate(self.settings.to.get(self.escalate_to) or []):
            label = route.label(self.escalate_to, i)
            if label in failing:
                continue  # not through a route that just failed
            outbox.add_own(conn, route=label, channel=route.channel, key=key, kind="delivery-failed",
                           audience="security", recipient=self.escalate_to,
                           contact_ref=f"audience:{self.escalate_to}", body_path=str(path), now=now,
                           incident_id=told[0].incident_id if len(incidents) == 1 else None,
                           fleet_key=told[0].fleet_key if len(told) == 1 else None)
            added += 1
        return added

    # -- raw contact data ------------------------------------------------------------------
    def delete_delivered_bodies(self, conn: sqlite3.Connection, limit: int = 500,
                                should_stop: Callable[[], bool] = lambda: False) -> int:
        """Delete customers' rendered files (their name and address) once every route of the
        notice is delivered. What stays as proof: the notice row (its body's SHA-256), the
        outbox row (the SHA-256 of what went out, the receipt), every attempt. One pass in
        id order (100,000 files after a large drain: no chunk scans what an earlier one did),
        stopping between chunks when the daemon stops; the next run goes on."""
        deleted, last = 0, 0
        while not should_stop():
            rows = conn.execute(
                "SELECT o.id, o.body_path FROM outbox o WHERE o.id > ? AND o.audience = 'customers' AND o.state IN"
                " ('delivered', 'fleet') AND o.body_deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM outbox p WHERE"
                " p.notice_seq = o.notice_seq AND p.state NOT IN ('delivered', 'fleet')) ORDER BY o.id LIMIT ?",
                (last, limit)).fetchall()
            if not rows:
                return deleted
            last = rows[-1][0]
            for _, path in rows:
                try:
                    Path(path).unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cannot delete a delivered message's file", extra={"error": exc.strerror})
            with immediate(conn):
                conn.executemany("UPDATE outbox SET body_deleted_at = ? WHERE id = ?",
                                 [(to_db(self.clock()), i) for i, _ in rows])
            deleted += len(rows)
        return deleted


class _Recorder:
    """Outcomes of one batch, committed every RECORD_EVERY messages or RECORD_EVERY_S."""

    def __init__(self, deliverer: Deliverer, conn: sqlite3.Connection, report: DeliveryReport, fleet: Fleet | None):
        self.deliverer = deliverer
        self.conn = conn
        self.report = report
        self.fleet = fleet
        self.pending: list[Outcome] = []
        self.seen: set[int] = set()
        self.last_flush = time.monotonic()

    def has(self, outbox_id: int) -> bool:
        return outbox_id in self.seen

    def add(self, outcome: Outcome) -> None:
        if outcome.row.id in self.seen:
            return  # a channel that reports twice: the first word stands
        self.seen.add(outcome.row.id)
        self.pending.append(outcome)
        if len(self.pending) >= RECORD_EVERY or time.monotonic() - self.last_flush >= RECORD_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        outcomes, self.pending = self.pending, []
        report, now = self.report, self.deliverer.clock()
        rows = outbox.outcome_rows(outcomes)  # computed before the write lock is taken
        failed = [(o.row, o.error) for o in outcomes if o.state == "failed"]
        escalation = self.deliverer.escalation_file(failed, now) if failed else None
        with immediate(self.conn):
            outbox.record(self.conn, rows)
            for o in outcomes:
                if o.row.kind == "digest":
                    self._digest_members(o, now)
            if failed:
                report.escalated += self.deliverer.escalate(self.conn, failed, escalation, now)
        for o in outcomes:
            if o.state == "delivered":
                report.delivered += 1
                report.by_channel[o.row.channel] = report.by_channel.get(o.row.channel, 0) + 1
            elif o.state == "pending":
                report.retried += 1
            elif o.state == "failed":
                report.failed += 1
            elif o.state == "fleet":
                report.fleet += 1
        if self.fleet is not None:
            delivered = [(o.row, o.receipt or {}) for o in outcomes if o.state == "delivered"]
            if delivered:
                try:
                    self.fleet.record(delivered)
                except Exception:  # noqa: BLE001 - the local record stands; the fleet learns later
                    log.warning("cannot record deliveries in the fleet", exc_info=True)

    def _digest_members(self, o: Outcome, now: dt.datetime) -> None:
        if o.state == "delivered":
            self.conn.execute("UPDATE outbox SET state = 'delivered', delivered_at = ?, receipt = ? WHERE"
                              " covered_by = ? AND state = 'digested'",
                              (to_db(now), json.dumps({"digest": o.row.wire_key, **(o.receipt or {})}),
                               o.row.wire_key))
        elif o.state == "failed":  # a failed digest uses up nothing: its entries go in the next one
            self.conn.execute("UPDATE outbox SET state = 'held', covered_by = NULL, next_attempt_at = ? WHERE"
                              " covered_by = ? AND state = 'digested'",
                              (to_db(self.deliverer.next_digest(now)), o.row.wire_key))


def _pause(seconds: float, should_stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not should_stop() and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def expand_attachments(paths: list[Any]) -> list[Path]:
    """A report's JSON brings its rendered siblings (Markdown and HTML in each language)."""
    out: list[Path] = []
    for item in paths:
        if not isinstance(item, str):
            continue
        path = Path(item)
        if path.suffix == ".json":
            out += sorted(p for p in path.parent.glob(f"{path.stem}.*.html") if p.is_file())
        out.append(path)
    return out


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


__all__ = ["Deliverer", "DeliveryReport", "Fleet", "expand_attachments", "from_db"]
