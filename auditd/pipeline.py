"""One batch through the stages: decode → normalise → enrich → detect → correlate → store.

The batch's results and its source checkpoint are committed in one transaction; the
quarantine file mirror is appended only after the commit.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from auditd.decode.quarantine import Quarantined
from auditd.decode.normalise import UNMAPPED_LABEL
from auditd.detect import suppressions
from auditd.detect.alert import Alert
from auditd.event import OTHER_ACTION
from auditd.runtime import Runtime
from auditd.sources.base import NO_FILE, Batch
from auditd.store.quarantine_file import QuarantineFile
from auditd.store.pressure import MirrorBehind, StorageUnavailable, hold_reason
from auditd.store.sqlite import Segment, Store, decode_chunk

CHUNK_RECORDS = 256  # records a chunk takes through the stages: its events stay in the CPU caches


@dataclass(slots=True)
class Totals:
    """Running counts, for replay summaries and metrics."""

    records: int = 0
    events: int = 0
    quarantined: int = 0
    skipped: int = 0
    alerts: int = 0
    incidents_opened: int = 0
    incidents_updated: int = 0
    seconds: float = 0.0
    shipped_lag: int | None = None  # events not yet in the cluster when a replay ended
    seconds_with_shipping: float | None = None
    unfinished: list[str] = field(default_factory=list)  # replayed files whose last line was still being written
    already_read: list[str] = field(default_factory=list)  # replayed files this store had read to their end before
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    alerts_by_rule: dict[str, int] = field(default_factory=dict)
    unmapped_actions: dict[str, int] = field(default_factory=dict)  # operation name -> events mapped to `other`

    def add_source(self, source: str, events: int, quarantined: int, skipped: int) -> None:
        row = self.by_source.setdefault(source, {"events": 0, "quarantined": 0, "skipped": 0})
        row["events"] += events
        row["quarantined"] += quarantined
        row["skipped"] += skipped


class Pipeline:
    def __init__(self, runtime: Runtime, store: Store, quarantine_file: QuarantineFile, metrics=None):
        self.store = store
        self.runtime = runtime  # swapped whole on reload; a batch uses one runtime throughout
        self.quarantine_file = quarantine_file
        self.metrics = metrics
        self.totals = Totals()
        self._suppressions_seen: tuple[object, tuple[int, int]] | None = None
        # called after each chunk went through the stages: proof of life for the watchdog
        self.on_progress: Callable[[], None] | None = None

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        """Swap in a runtime (start, reload); its rules' state reads and writes this store."""
        runtime.state.bind(self.store.conn)
        self._runtime = runtime

    def refresh_suppressions(self, runtime: Runtime) -> None:
        """Give the rules the store's suppressions when they changed (`suppress add`
        or `remove` by another process) or the rules were reloaded."""
        conn = self.store.conn
        seen = (runtime.ruleset, suppressions.version(conn))
        if self._suppressions_seen is None or seen[0] is not self._suppressions_seen[0] \
                or seen[1] != self._suppressions_seen[1]:
            runtime.ruleset.set_suppressions(suppressions.compile_suppressions(suppressions.read_all(conn)))
            self._suppressions_seen = seen

    def handle(self, batch: Batch, prepared: "Prepared | None" = None) -> None:
        """The batch through every stage, committed in one transaction. `prepared` is
        what a worker process made of it (decode, enrich, conditions: `prepare`); only
        the rules' confirmation, state and the commit are then left to do here."""
        runtime = self.runtime
        self.refresh_suppressions(runtime)
        segment = Segment(encode=self.store.keep_events)
        try:
            if prepared is None:
                cited, quarantined, skipped, alerts, eval_seconds, unmapped = self._stages(
                    runtime, batch, segment, self.on_progress)
            else:
                segment = prepared.segment
                cited, quarantined, skipped, alerts, eval_seconds, unmapped = self._confirm_prepared(
                    runtime, prepared)
            alerts = runtime.scrubbed(alerts)  # a raw customer id where none belongs
            detected = time.perf_counter()
            latest, n_events = segment.last, segment.count
            with self.store.transaction() as conn:
                self.store.insert_segment(conn, batch.source, segment)
                self.store.insert_quarantine(conn, quarantined)
                changes = []
                if alerts:
                    self.store.insert_evidence(conn, cited)
                    changes = runtime.correlator.apply(conn, alerts)
                runtime.state.flush(conn)  # the rules' state moves with the checkpoint
                checkpoints = [c for c in (batch.checkpoint, *batch.extra_checkpoints) if c.fingerprint != NO_FILE]
                if checkpoints:
                    self.store.save_checkpoints(conn, checkpoints)
                if batch.report is not None:
                    self.store.save_source_report(conn, batch.source, batch.report)
                if batch.forget:
                    self.store.forget_checkpoints(conn, batch.source, batch.forget)
                self.store.bump_stats(
                    conn, batch.source, events=n_events, quarantined=len(quarantined),
                    skipped=skipped, last_event_at=latest,
                )
        except BaseException as exc:
            runtime.state.discard()  # the batch will be handled again, against the stored state
            reason = hold_reason(exc)
            if reason is not None:  # a full or read-only disk: nothing of the batch was kept
                raise StorageUnavailable(reason) from exc
            raise
        committed = time.perf_counter()
        self._count(batch, n_events, quarantined, skipped, alerts, changes, unmapped)
        self._observe(batch, n_events, quarantined, skipped, alerts, eval_seconds, committed - detected, latest,
                      unmapped)
        try:
            self.quarantine_file.append(quarantined)
        except OSError as exc:  # committed already: the file catches up from the table later
            reason = hold_reason(exc)
            if reason is None:
                raise
            raise MirrorBehind(f"the quarantine file cannot be written: {reason}") from exc

    def _observe(self, batch: Batch, n_events: int, quarantined: list[Quarantined], skipped: int,
                 alerts: list[Alert], eval_seconds: float, commit_seconds: float, latest, unmapped: Counter) -> None:
        if self.metrics is not None:
            self.metrics.observe_batch(
                batch.source, events=n_events, quarantined=len(quarantined), skipped=skipped,
                alerts_by_rule=Counter(a.rule_id for a in alerts), eval_seconds=eval_seconds,
                commit_seconds=commit_seconds, last_event_ts=latest,
            )
            if batch.report is not None:
                self.metrics.observe_source_report(batch.source, batch.report)
            if unmapped:
                self.metrics.unmapped_actions(batch.source, unmapped)

    @staticmethod
    def _stages(runtime: Runtime, batch: Batch, segment: Segment, progress: Callable[[], None] | None = None,
                ) -> tuple[list, list[Quarantined], int, list[Alert], float, Counter]:
        """Normalise, enrich, detect and encode for the store, a chunk of the batch at a
        time: every stage walks the events, and a chunk's events stay in the CPU's caches
        from one stage to the next (a whole batch's do not). The events' order, and so
        every result, is the batch's.

        Once encoded into the segment, a chunk's events are let go, so that the next
        chunk is built in the memory they held (still cached) rather than in new memory;
        only the events that alerts cite are kept, for the evidence table. An alert
        cites events of its own chunk (a windowed kind that cites earlier events of its
        window must keep those itself).

        What the source could not cut into records (`batch.rejected`) is quarantined
        first; a format that maps unknown operations to ``other`` has them counted
        by name (`unmapped`).
        """
        normaliser = runtime.normaliser(batch.source)
        enrich = batch.source not in runtime.pre_enriched
        cited: list = []  # events that alerts cite
        quarantined = [Quarantined.of(batch.source, batch.path, r.offset, r.reason, r.data) for r in batch.rejected]
        unmapped: Counter = Counter()
        count_other = getattr(normaliser, "counts_unmapped", False)
        alerts: list[Alert] = []
        skipped, eval_seconds = 0, 0.0
        for start in range(0, len(batch.records), CHUNK_RECORDS):
            chunk, chunk_quarantined, chunk_skipped = normaliser.process(
                batch, start=start, stop=start + CHUNK_RECORDS)
            if count_other:
                unmapped.update(e.labels.get(UNMAPPED_LABEL, "") for e in chunk if e.action == OTHER_ACTION)
            if enrich:
                runtime.enricher.enrich(chunk)
            started = time.perf_counter()
            chunk_alerts = runtime.ruleset.evaluate_all(chunk)
            eval_seconds += time.perf_counter() - started
            segment.add(chunk)
            if chunk_alerts:
                alerts += chunk_alerts
                cited += _cited(chunk, chunk_alerts)
            quarantined += chunk_quarantined
            skipped += chunk_skipped
            if progress is not None:
                progress()
        return cited, quarantined, skipped, alerts, eval_seconds, unmapped

    @staticmethod
    def _confirm_prepared(runtime: Runtime, prepared: "Prepared",
                          ) -> tuple[list, list[Quarantined], int, list[Alert], float, Counter]:
        """What `_stages` gives, from a worker's `Prepared`: the conditions that held are
        confirmed chunk by chunk (exceptions, stateful kinds, suppressions), so alerts
        and the events they cite are those of the serial path."""
        started = time.perf_counter()
        alerts: list[Alert] = []
        cited: list = []
        for body, count, held in zip(prepared.segment.bodies(), prepared.chunk_counts, prepared.held):
            if not held:
                continue
            events = decode_chunk(body, count)
            chunk_alerts = runtime.ruleset.confirm_held(events, held)
            if chunk_alerts:
                alerts += chunk_alerts
                cited += _cited(events, chunk_alerts)
        eval_seconds = prepared.eval_seconds + time.perf_counter() - started
        return cited, list(prepared.quarantined), prepared.skipped, alerts, eval_seconds, Counter(prepared.unmapped)

    def tick(self, now: dt.datetime) -> list[Alert]:
        """Time passed: stateful rules may close windows and alert, in one transaction."""
        runtime = self.runtime
        self.refresh_suppressions(runtime)
        try:
            with self.store.transaction() as conn:
                alerts = runtime.scrubbed(runtime.ruleset.tick(now))
                changes = runtime.correlator.apply(conn, alerts) if alerts else []
                runtime.state.flush(conn)
        except BaseException as exc:
            runtime.state.discard()
            reason = hold_reason(exc)
            if reason is not None:
                raise StorageUnavailable(reason) from exc
            raise
        self.totals.alerts += len(alerts)
        for alert in alerts:
            self.totals.alerts_by_rule[alert.rule_id] = self.totals.alerts_by_rule.get(alert.rule_id, 0) + 1
        self.totals.incidents_opened += sum(1 for c in changes if c.opened)
        self.totals.incidents_updated += sum(1 for c in changes if not c.opened)
        return alerts

    def _count(self, batch: Batch, events: int, quarantined: list[Quarantined], skipped: int,
               alerts: list[Alert], changes: list, unmapped: Counter) -> None:
        t = self.totals
        for name, count in unmapped.items():
            t.unmapped_actions[name] = t.unmapped_actions.get(name, 0) + count
        t.records += len(batch.records)
        t.events += events
        t.quarantined += len(quarantined)
        t.skipped += skipped
        t.alerts += len(alerts)
        t.add_source(batch.source, events, len(quarantined), skipped)
        for alert in alerts:
            t.alerts_by_rule[alert.rule_id] = t.alerts_by_rule.get(alert.rule_id, 0) + 1
        for change in changes:
            if getattr(change, "opened", False):
                t.incidents_opened += 1
            else:
                t.incidents_updated += 1


@dataclass(slots=True)
class Prepared:
    """A batch as a worker process leaves it for the writer: its events encoded as the
    store keeps them (one body per chunk), and per chunk the (event, rule) pairs whose
    condition held."""

    segment: Segment
    chunk_counts: list[int]  # events of each chunk
    held: list  # per chunk: array of (event position in the chunk, rule index) pairs, flat
    quarantined: list[Quarantined]
    skipped: int
    unmapped: dict[str, int]
    eval_seconds: float

    def extend(self, other: "Prepared") -> None:
        """Add what was prepared of the records that follow (a batch cut at a multiple of
        `CHUNK_RECORDS` and prepared in parts): the chunks, and so every result, are the
        whole batch's."""
        self.segment.extend(other.segment)
        self.chunk_counts += other.chunk_counts
        self.held += other.held
        self.quarantined += other.quarantined
        self.skipped += other.skipped
        for name, count in other.unmapped.items():
            self.unmapped[name] = self.unmapped.get(name, 0) + count
        self.eval_seconds += other.eval_seconds


def prepare(runtime: Runtime, batch: Batch) -> Prepared:
    """The stages a worker process runs on a batch: decode, enrich, the rules'
    conditions and the encoding for the store, a chunk of `CHUNK_RECORDS` at a time as
    `Pipeline._stages` does. Nothing here reads or writes the store."""
    normaliser = runtime.normaliser(batch.source)
    enrich = batch.source not in runtime.pre_enriched
    count_other = getattr(normaliser, "counts_unmapped", False)
    segment = Segment(encode=True)
    quarantined = [Quarantined.of(batch.source, batch.path, r.offset, r.reason, r.data) for r in batch.rejected]
    unmapped: Counter = Counter()
    counts: list[int] = []
    held: list = []
    skipped, eval_seconds = 0, 0.0
    for start in range(0, len(batch.records), CHUNK_RECORDS):
        chunk, chunk_quarantined, chunk_skipped = normaliser.process(batch, start=start, stop=start + CHUNK_RECORDS)
        if count_other:
            unmapped.update(e.labels.get(UNMAPPED_LABEL, "") for e in chunk if e.action == OTHER_ACTION)
        if enrich:
            runtime.enricher.enrich(chunk)
        if chunk:  # a chunk of only quarantined or skipped records adds no body
            started = time.perf_counter()
            held.append(runtime.ruleset.held(chunk))
            eval_seconds += time.perf_counter() - started
            segment.add(chunk)
            counts.append(len(chunk))
        quarantined += chunk_quarantined
        skipped += chunk_skipped
    return Prepared(segment, counts, held, quarantined, skipped, dict(unmapped), eval_seconds)


def _cited(events: list, alerts: list[Alert]) -> list:
    wanted = {eid for alert in alerts for eid in alert.event_ids}
    return [e for e in events if e.event_id in wanted]

