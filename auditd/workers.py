"""Worker processes for the per-event stages, so that `replay` and `run` use every core.

The main process keeps reading and framing (sources, checkpoints and rotation stay
where they are proven) and hands each batch to a pool of worker processes. A worker
loads the same configuration and runs what needs no store: decode, enrich, the rules'
conditions and the encoding for the store (`pipeline.prepare`). The main process is
the one writer: it takes the prepared batches back in the order they were read and
confirms the conditions that held (exceptions, stateful kinds with their state,
suppressions), correlates and commits each batch with its checkpoint, exactly as one
process would (`Pipeline.handle(batch, prepared)`).

Each worker has a pipe of its own and at most one batch at a time; at most one batch
per worker is in flight, and the writer reads the results in the batches' order. (A
shared result queue, as `concurrent.futures` has, is left unreadable by a worker killed
while writing to it.) A worker that dies (killed, out of memory) is noticed by its
pipe's end, started afresh, and handed the same batch again; nothing of that batch was
committed, so nothing is lost or done twice. A batch that kills its worker `MAX_TRIES`
times is done in the main process instead (a poison record costs speed, never a line).

A worker's first message, and its answer to every reload, is the `Fingerprint` of what
it loaded: the rules (with a hash of each condition), the directory's file stamps and
the pseudonym key's check value. The writer compares it with its own. A replay stops
on a difference (`WorkerMismatch`); the daemon stops trusting that worker (its batches
are done in the main process, and the log says why) until a reload makes them agree.
Batches go only to workers that have loaded and agree, so while workers start the
daemon does its live batches itself (a replay, whose batches are large, waits for
them: `wait_ready`).

Reloads (`WorkerPool.reload`) are sent when no batch is in flight, so every batch is
prepared and committed under one set; the daemon commits what is in flight first. The
writer does not wait for the workers to load (a directory of 10,000 employees takes
each of them half a second): a reloading worker is one that is starting again, and
the main process does the live batches itself until the worker's new fingerprint has
come back and agrees.

Workers start by `spawn`: the main process has threads (the WAL checkpointer), which
a fork would copy in an unknown state. They ignore SIGINT and SIGTERM (systemd signals
the whole group at stop): they end when the main process says so or its pipe closes,
which is also how they follow a main process killed with SIGKILL.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from auditd.detect.state import rule_state_hash
from auditd.pipeline import CHUNK_RECORDS, Prepared, prepare
from auditd.sources.base import Batch

log = logging.getLogger("neo_auditd.workers")

MAX_TRIES = 3  # times one batch may kill its worker before the main process does it
STOP_WAIT_S = 5.0  # an idle worker told to stop is killed after this
RESTART_AFTER_S = 30.0  # a worker that died while loading (a file broken on disk) is not started again before
KEY_PROBE = "\x00neo-auditd worker key check"  # its pseudonym tells keys apart, and says nothing of the key


def resolve_workers(requested: int) -> int:
    """The number of worker processes: 0 means one per core the process may use."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What a process's prepared batches depend on. A part that is None (a replay that
    does not watch the directory) is not compared."""

    rules: tuple
    directory: tuple | None = None
    key: str | None = None

    def agrees(self, other: "Fingerprint") -> bool:
        return self.rules == other.rules and all(
            mine is None or mine == theirs for mine, theirs in ((self.directory, other.directory),
                                                                (self.key, other.key)))

    def difference(self, other: "Fingerprint") -> str:
        parts = [name for name, mine, theirs in (("rules", self.rules, other.rules),
                                                 ("directory", self.directory, other.directory),
                                                 ("pseudonym key", self.key, other.key))
                 if mine is not None and mine != theirs]
        return ", ".join(parts) or "nothing"


def rules_in_force(ruleset) -> tuple[tuple[str, str, bool, str], ...]:
    """What a worker's conditions are computed for: each rule's id, scope, whether it is
    enabled and a hash of its condition and parameters, in the set's order (the order
    the prepared results are indexed by)."""
    return tuple((r.id, r.spec.scope, r.spec.enabled, rule_state_hash(r.spec.kind, r.spec.condition, r.spec.params,
                                                                       ignore=()))
                 for r in ruleset.rules)


def fingerprint(runtime, directory=None) -> Fingerprint:
    """`runtime`'s fingerprint; `directory`, when given, is the one in force (the
    daemon's watcher reloads it apart from the runtime)."""
    directory = directory if directory is not None else runtime.directory
    stamps = tuple((str(s.path), s.mtime_ns, s.size, s.inode, s.ctime_ns) for s in directory.sources) \
        if directory is not None else ()
    pseudonymiser = getattr(runtime.enricher, "pseudonymiser", None)
    return Fingerprint(rules_in_force(runtime.ruleset), stamps,
                       pseudonymiser(KEY_PROBE) if pseudonymiser is not None else "")


@dataclass(frozen=True, slots=True)
class Reload:
    """Load again, between two batches: `config` (everything, as SIGHUP) or `directory`
    (the HR files changed). The worker answers with its fingerprint; a load that fails
    keeps what it had."""

    what: str  # "config" or "directory"
    scopes: frozenset[str] | None = None
    directory: bytes | None = None  # the writer's new directory, packed: taken as it is, not read again


def _load(config_path: str, scopes: frozenset[str] | None, directory_loader=None):
    import dataclasses

    from auditd.runtime import load_runtime

    runtime = load_runtime(Path(config_path), directory_loader=directory_loader)
    if scopes is not None and scopes != runtime.ruleset.scopes:
        runtime = dataclasses.replace(runtime, ruleset=runtime.ruleset.with_scopes(scopes))
    return runtime


def _reload(runtime, directory, order: Reload, config_path: str):
    """(runtime, directory) after a reload; the ones it had when the load fails."""
    if order.what == "config":
        from auditd.directory.reuse import reusing

        # the writer's directory when it read a changed one; else the one in force, unless its files changed
        loader = reusing(directory, runtime.settings.categories,
                         load_changed=(lambda *_, **__: _unpacked(order.directory)) if order.directory else None)
        try:
            fresh = _load(config_path, order.scopes, loader)
        except Exception as exc:  # noqa: BLE001 - the writer sees the old fingerprint and says why
            log.warning("worker reload failed; it keeps its set", extra={"error": str(exc)[:500]})
            return runtime, directory
        return fresh, fresh.directory
    settings = runtime.settings
    if settings.directory is None:
        return runtime, directory
    from auditd.config.located import Problems
    from auditd.directory import load_directory

    problems = Problems()
    try:
        if order.directory is not None:
            fresh = _unpacked(order.directory)
        else:
            fresh = load_directory(settings.directory.path, problems, categories=frozenset(settings.categories))
    except Exception:  # noqa: BLE001 - a loader bug is a rejected file, as in the main process
        fresh = None
    if fresh is None or problems:
        return runtime, directory
    runtime.enricher.set_directory(fresh)
    return runtime, fresh


def _unpacked(packed: bytes):
    from auditd.directory.packed import unpack

    return unpack(packed)


def _serve(conn: Connection, config_path: str, scopes: frozenset[str] | None = None) -> None:
    """A worker process: load the config, then prepare each batch the pipe brings.
    `scopes` are the rule scopes the main process evaluates (a replay adds `cluster`).
    The first message back, and the answer to each `Reload`, is the fingerprint of what
    it loaded, so the writer can tell a worker it can trust from one that loaded other
    files (changed in between)."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # stopping is the main process's to decide
        signal.signal(signum, signal.SIG_IGN)
    runtime = _load(config_path, scopes)
    directory = runtime.directory
    conn.send(fingerprint(runtime, directory))
    gc.freeze()  # the loaded rules, directory and formats never die
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the main process is gone
            return
        if message is None:
            return
        if isinstance(message, Reload):
            runtime, directory = _reload(runtime, directory, message, config_path)
            gc.freeze()
            conn.send(fingerprint(runtime, directory))
            continue
        conn.send(prepare(runtime, message))


class WorkerMismatch(RuntimeError):
    """A worker loaded other rules (or directory, or key) than the writer's."""


class _Worker:
    def __init__(self, config_path: Path, scopes: frozenset[str] | None = None):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, str(config_path), scopes), daemon=True,
                                       name="neo-auditd-worker")
        self.process.start()
        child.close()
        self.loaded: Fingerprint | None = None  # its last fingerprint read
        self.judged = False  # that fingerprint compared with the writer's
        self.due = 1  # fingerprints it sends before it takes a batch: its start's, then one per reload

    @property
    def settled(self) -> bool:
        """Loaded, and every reload it was sent answered."""
        return self.due == 0 and self.loaded is not None

    def ready(self, block: bool = False) -> bool:
        """Whether it has loaded (every fingerprint due read); raises EOFError if it died first."""
        while self.due and (block or self.conn.poll()):
            self.loaded, self.judged = self.conn.recv(), False
            self.due -= 1
        return self.settled

    def reloading(self) -> None:
        """A `Reload` was sent: it is loading again, as if starting."""
        self.due += 1
        self.judged = False

    def stop(self, *, idle: bool) -> None:
        """An idle worker is told to stop; a busy or starting one is killed (its batch is
        not the writer's any more)."""
        if idle:
            try:
                self.conn.send(None)
            except OSError:
                pass
        else:
            self.process.kill()
        self.conn.close()
        self.process.join(timeout=STOP_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class WorkerPool:
    """`workers` processes that prepare batches; results come back in the batches' order.

    `submit` a batch when `has_room`, `take` the oldest back (`None` for the prepared
    part: the main process does that batch itself). With `split`, a batch handed out
    while several workers are idle is cut at multiples of `CHUNK_RECORDS` and prepared
    by all of them at once (its chunks, and so its results, stay the whole batch's): a
    live batch is ready in a fraction of the time one worker would take."""

    def __init__(self, config_path: Path, workers: int, *, ruleset=None, expected: Fingerprint | None = None,
                 strict: bool = True, split: bool = False):
        """`ruleset`, the writer's: the workers evaluate its scopes. `expected`, the
        writer's fingerprint (default: that of `ruleset`'s rules alone); a worker whose
        own differs raises WorkerMismatch when `strict` (replay), else its batches are
        done in the main process until a reload makes them agree (the daemon)."""
        self.config_path = Path(config_path)
        self.workers = workers
        self.scopes = ruleset.scopes if ruleset is not None else None
        if expected is None and ruleset is not None:
            expected = Fingerprint(rules_in_force(ruleset))
        self.expected = expected
        self.strict = strict
        self.split = split
        self.restarts = 0  # workers started again after one died
        self.done_here = 0  # batches the main process did itself (no worker ready, trusted or alive)
        self.prepared = 0  # batches a worker prepared
        self._pool: list[_Worker | None] = [None] * workers
        self._distrusted: dict[int, str] = {}  # slot -> what differed
        self._not_before: dict[int, float] = {}  # slot -> when a worker that died loading may start again
        self._reloading: str | None = None  # what the workers were asked to load again, until all answered
        # oldest first: (batch, its parts: (worker slot, the records it prepares) -- None: this process does it)
        self._window: deque[tuple[Batch, list[tuple[int, Batch]] | None]] = deque()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every worker now (otherwise each starts with its first batch)."""
        for slot in range(self.workers):
            self._worker(slot)

    def wait_ready(self) -> None:
        """Wait until every worker has loaded, and check what it loaded (strict: raises
        WorkerMismatch when one differs). One that died while loading is started again
        with a later batch."""
        for slot in range(self.workers):
            self._check(slot, block=True)

    def pids(self) -> list[int]:
        """The worker processes now running (for tests and status)."""
        return [w.process.pid for w in self._pool if w is not None and w.process.is_alive()]

    def ready(self) -> int:
        """Workers loaded and in agreement with the writer, looking at those still starting
        (and starting again any that died idle)."""
        busy = self._busy()
        now = time.monotonic()
        return sum(1 for slot in range(self.workers)
                   if slot in busy or (self._not_before.get(slot, 0.0) <= now and self._check(slot)))

    def trusted(self) -> int:
        """Workers loaded and in agreement with the writer."""
        return sum(1 for slot, w in enumerate(self._pool)
                   if w is not None and w.settled and slot not in self._distrusted)

    def close(self) -> None:
        busy = self._busy()
        self._window.clear()
        for i, worker in enumerate(self._pool):
            if worker is not None:
                worker.stop(idle=i not in busy and worker.settled)
                self._pool[i] = None

    # -- batches --------------------------------------------------------------------------------
    def pending(self) -> int:
        return len(self._window)

    def has_room(self) -> bool:
        """Whether a batch may be submitted: fewer than `workers` in flight, and not every
        worker busy."""
        return len(self._window) < self.workers and len(self._busy()) < self.workers

    def submit(self, batch: Batch) -> None:
        """Hand `batch` to an idle worker that is ready and agrees -- with `split`, to
        every such worker, a part each (else the main process will do it)."""
        if not self.has_room():
            raise RuntimeError("submit() with no room: take() first")
        idle = self._idle_slots() if batch.records or batch.rejected else []
        parts = None
        if idle:
            parts = list(zip(idle, _cut(batch, len(idle) if self.split else 1)))
            for slot, part in parts:
                try:
                    self._pool[slot].conn.send(part)
                except OSError:  # died before it took the batch: _receive notices and sends again
                    pass
        self._window.append((batch, parts))

    def take(self, block: bool = True) -> tuple[Batch, Prepared | None] | None:
        """The oldest batch and what the workers made of it; None if `block` is false and
        it is not ready yet (or nothing is in flight)."""
        if not self._window:
            return None
        batch, parts = self._window[0]
        if parts is not None and not block and not all(self._pool[slot].conn.poll() for slot, _ in parts
                                                       if self._pool[slot] is not None):
            return None
        self._window.popleft()
        if parts is None:
            self.done_here += 1 if batch.records or batch.rejected else 0
            return batch, None
        prepared: Prepared | None = None
        whole = True
        for slot, part in parts:  # every part is taken, also after one failed: the pipes stay in step
            done = self._receive(slot, part)
            if done is None:
                whole = False
            elif prepared is None:
                prepared = done
            else:
                prepared.extend(done)
        if not whole:  # a part no worker could prepare: this process does the whole batch
            self.done_here += 1
            return batch, None
        self.prepared += 1
        return batch, prepared

    def counts(self) -> dict[str, int]:
        """For the log: batches prepared by workers and by the main process, restarts."""
        return {"workers": self.workers, "prepared": self.prepared, "done_here": self.done_here,
                "restarts": self.restarts}

    def ordered(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Prepared | None]]:
        """(batch, prepared) in the batches' order (a replay). A worker's next batch is
        sent before the writer commits the one it returned, so the workers work while the
        writer writes."""
        feed = iter(batches)
        try:
            for batch in feed:  # fill every worker once
                self.submit(batch)
                if not self.has_room():
                    break
            while self.pending():
                taken = self.take()
                following = next(feed, None)
                if following is not None:
                    self.submit(following)
                yield taken
        finally:
            self.close()

    def reload(self, what: str, expected: Fingerprint, *, directory: bytes | None = None) -> None:
        """Every worker loads again (`what`: "config" or "directory") and must then agree
        with `expected`, the writer's new fingerprint. Only between batches: nothing may be
        in flight, so no batch is prepared under one set and committed under another.

        Returns once every worker was asked, without waiting for their answers: a worker
        takes batches again when its answer agrees (see `ready`), and when the last one
        has answered the log says how many agree ("workers reloaded"). `directory`: the
        writer's new directory packed (`directory.packed`), for the workers that are idle
        (one still loading reads the files itself: the pipe would hold this process until
        it had loaded)."""
        if self._window:
            raise RuntimeError("reload() with batches in flight: take them first")
        self.expected = expected
        self._reloading = what
        for slot, worker in enumerate(self._pool):
            if worker is None:
                continue
            try:
                worker.conn.send(Reload(what, self.scopes, directory if worker.settled else None))
                worker.reloading()
            except OSError:
                self._buried(slot, "while asked to reload")
        self._reloaded()

    def _reloaded(self) -> None:
        """Say so once every worker asked to reload has answered."""
        if self._reloading is None or any(w is not None and not w.settled for w in self._pool):
            return
        log.info("workers reloaded", extra={"what": self._reloading, "workers_agreeing": self.trusted()})
        self._reloading = None

    # -- inside -------------------------------------------------------------------------------
    def _worker(self, slot: int) -> _Worker:
        worker = self._pool[slot]
        if worker is None:
            worker = self._pool[slot] = _Worker(self.config_path, self.scopes)
        return worker

    def _busy(self) -> set[int]:
        return {slot for _, parts in self._window for slot, _ in parts or ()}

    def _idle_slots(self) -> list[int]:
        busy = self._busy()
        now = time.monotonic()
        return [slot for slot in range(self.workers)
                if slot not in busy and self._not_before.get(slot, 0.0) <= now and self._check(slot)]

    def _check(self, slot: int, block: bool = False) -> bool:
        """Whether the worker in `slot` is loaded and agrees (started if it is not running)."""
        worker = self._worker(slot)
        try:
            if not worker.ready(block):
                return False
        except (EOFError, OSError):  # died while loading: a file broken on disk, out of memory, a kill
            if self._buried(slot, "while loading") > 0:  # it gave up by itself: not again right away
                self._not_before[slot] = time.monotonic() + RESTART_AFTER_S
            else:
                self._worker(slot)
            return False
        if not worker.process.is_alive():  # died idle: its successor loads while this process works
            self._buried(slot, "while idle")
            self._worker(slot)
            return False
        if not worker.judged:
            worker.judged = True
            self._judge(slot, worker.loaded)
            self._reloaded()
        return slot not in self._distrusted

    def _judge(self, slot: int, loaded: Fingerprint) -> None:
        if self.expected is None or self.expected.agrees(loaded):
            if self._distrusted.pop(slot, None) is not None:
                log.warning("a worker process agrees with this process again; it prepares batches again",
                            extra={"worker": slot})
            return
        what = self.expected.difference(loaded)
        if self.strict:
            raise WorkerMismatch(f"a worker process loaded other {what} than this process (a file changed "
                                 "while the replay started?): run it again, or with --workers 1")
        if self._distrusted.get(slot) != what:
            log.error("a worker process loaded other files than this process (changed since the last reload): "
                      "this process prepares its batches until a reload (SIGHUP) makes them agree",
                      extra={"worker": slot, "differs": what})
        self._distrusted[slot] = what

    def _buried(self, slot: int, when: str) -> int:
        """Forget the dead worker in `slot` (the next use starts another); its exit code
        (negative: the signal that killed it)."""
        worker = self._pool[slot]
        self._pool[slot] = None
        if worker is None:
            return 0
        self.restarts += 1
        worker.conn.close()
        worker.process.join(timeout=STOP_WAIT_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        exitcode = worker.process.exitcode or 0
        log.error("a worker process died; it is started again", extra={"when": when, "exitcode": exitcode})
        return exitcode

    def _receive(self, slot: int, batch: Batch) -> Prepared | None:
        for tries in range(1, MAX_TRIES + 1):
            worker = self._pool[slot]
            try:
                if worker is None:
                    raise EOFError("not running")
                return worker.conn.recv()
            except (EOFError, OSError):
                self._buried(slot, f"with a batch (try {tries})")
                if tries == MAX_TRIES or not self._check(slot, block=True):
                    break
                try:
                    self._pool[slot].conn.send(batch)
                except OSError:
                    continue
        log.error("a batch was not prepared by a worker; the main process does it",
                  extra={"tries": tries, "path": batch.path, "offset": batch.offsets[0] if batch.offsets else None})
        return None


def _cut(batch: Batch, ways: int) -> list[Batch]:
    """`batch` in at most `ways` parts of whole chunks (multiples of `CHUNK_RECORDS`
    records), for the workers: the first carries what the source rejected, none a
    checkpoint the writer would use (it commits the whole batch's)."""
    n = len(batch.records)
    chunks = -(-n // CHUNK_RECORDS)
    ways = max(1, min(ways, chunks))
    if ways == 1:
        return [batch]
    per = -(-chunks // ways) * CHUNK_RECORDS
    return [Batch(batch.source, batch.path, batch.fingerprint, batch.records[at:at + per], batch.offsets[at:at + per],
                  batch.checkpoint, rejected=batch.rejected if at == 0 else [])
            for at in range(0, n, per)]
