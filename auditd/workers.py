"""Worker processes for the per-event stages, so that a replay uses every core.

The main process keeps reading and framing (sources, checkpoints and rotation stay
where they are proven) and hands each batch, numbered by its place in the stream, to a
pool of worker processes. A worker loads the same configuration and runs what needs no
store: decode, enrich, the rules' conditions and the encoding for the store
(`pipeline.prepare`). The main process is the one writer: it takes the prepared
batches back in their order and confirms the conditions that held (exceptions,
stateful kinds with their state, suppressions), correlates and commits each batch with
its checkpoint, exactly as one process would (`Pipeline.handle(batch, prepared)`).

Each worker has a pipe of its own and at most one batch at a time; the batches go to
the workers in turn, so batch k is always worker k mod N's, and the writer reads the
results in batch order. (A shared result queue, as `concurrent.futures` has, is left
unreadable by a worker killed while writing to it.) A worker that dies (killed, out of
memory) is noticed by its pipe's end, started afresh, and handed the same batch again;
nothing of that batch was committed, so nothing is lost or done twice. A batch that
kills its worker `MAX_TRIES` times is done in the main process instead (a poison
record costs speed, never the replay). A worker's next batch is sent before the
writer commits the one it returned, so the workers work while the writer writes.

Workers start by `spawn`: the main process has threads (the WAL checkpointer), which
a fork would copy in an unknown state.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

from auditd.pipeline import Prepared, prepare
from auditd.sources.base import Batch

log = logging.getLogger("neo_auditd.workers")

MAX_TRIES = 3  # times one batch may kill its worker before the main process does it


def resolve_workers(requested: int) -> int:
    """The number of worker processes: 0 means one per core the process may use."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _serve(conn: Connection, config_path: str, scopes: frozenset[str] | None = None) -> None:
    """A worker process: load the config, then prepare each batch the pipe brings.
    `scopes` are the rule scopes the main process evaluates (a replay adds `cluster`).
    The first message back names the rules in force, so the writer can tell a worker
    that loaded other rules (files changed in between) from one it can trust."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    import dataclasses

    from auditd.runtime import load_runtime

    runtime = load_runtime(Path(config_path))
    if scopes is not None and scopes != runtime.ruleset.scopes:
        runtime = dataclasses.replace(runtime, ruleset=runtime.ruleset.with_scopes(scopes))
    conn.send(rules_in_force(runtime.ruleset))
    gc.freeze()  # the loaded rules, directory and formats never die
    while True:
        try:
            batch = conn.recv()
        except EOFError:  # the main process is gone
            return
        if batch is None:
            return
        conn.send(prepare(runtime, batch))


def rules_in_force(ruleset) -> tuple[tuple[str, str, bool], ...]:
    """What a worker's conditions are computed for: each rule's id, scope and whether it is
    enabled, in the set's order (the order the prepared results are indexed by)."""
    return tuple((r.id, r.spec.scope, r.spec.enabled) for r in ruleset.rules)


class WorkerMismatch(RuntimeError):
    """A worker loaded other rules than the writer's (a file changed in between)."""


class _Worker:
    def __init__(self, config_path: Path, scopes: frozenset[str] | None = None, expected=None):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, str(config_path), scopes), daemon=True,
                                       name="neo-auditd-worker")
        self.process.start()
        child.close()
        self.expected = expected
        self.checked = expected is None

    def check(self) -> None:
        """Read the worker's first message: the rules it loaded must be the writer's."""
        if self.checked:
            return
        loaded = self.conn.recv()
        self.checked = True
        if loaded != self.expected:
            raise WorkerMismatch("a worker process loaded other rules than this process (a rule file changed "
                                 "while the replay started?): run it again, or with --workers 1")

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class WorkerPool:
    """`workers` processes that prepare batches; results come back in batch order."""

    def __init__(self, config_path: Path, workers: int, *, ruleset=None):
        """`ruleset`, the writer's: the workers evaluate its scopes and must have loaded
        the same rules (checked on each worker's first answer)."""
        self.config_path = Path(config_path)
        self.workers = workers
        self.scopes = ruleset.scopes if ruleset is not None else None
        self.expected = rules_in_force(ruleset) if ruleset is not None else None
        self.restarts = 0  # workers started again after one died
        self._pool: list[_Worker | None] = [None] * workers

    def pids(self) -> list[int]:
        """The worker processes now running (for tests and status)."""
        return [w.process.pid for w in self._pool if w is not None and w.process.is_alive()]

    def close(self) -> None:
        for i, worker in enumerate(self._pool):
            if worker is not None:
                worker.stop()
                self._pool[i] = None

    def ordered(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Prepared | None]]:
        """(batch, prepared) in the batches' order. Prepared is None for a batch the
        main process must do itself (it killed its worker `MAX_TRIES` times)."""
        window: deque[tuple[Batch, int]] = deque()  # (batch, worker slot), oldest first
        feed = iter(batches)
        slot = 0
        try:
            for batch in feed:  # fill every worker once
                self._send(slot, batch)
                window.append((batch, slot))
                slot = (slot + 1) % self.workers
                if len(window) == self.workers:
                    break
            while window:
                batch, at = window.popleft()
                prepared = self._receive(at, batch)
                following = next(feed, None)
                if following is not None:  # the worker starts on it while the writer commits this one
                    self._send(at, following)
                    window.append((following, at))
                yield batch, prepared
        finally:
            self.close()

    def _worker(self, slot: int) -> _Worker:
        worker = self._pool[slot]
        if worker is None:
            worker = self._pool[slot] = _Worker(self.config_path, self.scopes, self.expected)
        return worker

    def _send(self, slot: int, batch: Batch) -> None:
        try:
            self._worker(slot).conn.send(batch)
        except OSError:  # died before it took the batch: _receive notices and sends again
            pass

    def _receive(self, slot: int, batch: Batch) -> Prepared | None:
        for tries in range(1, MAX_TRIES + 1):
            worker = self._worker(slot)
            try:
                worker.check()
                return worker.conn.recv()
            except (EOFError, OSError) as exc:
                self.restarts += 1
                log.error("a worker process died; it is started again and its batch done again",
                          extra={"error": repr(exc), "exitcode": worker.process.exitcode, "tries": tries})
                worker.conn.close()
                worker.process.join(timeout=5)
                self._pool[slot] = None
                if tries < MAX_TRIES:
                    self._send(slot, batch)
        log.error("a batch killed its worker every time; the main process does it",
                  extra={"tries": MAX_TRIES, "path": batch.path, "offset": batch.offsets[0] if batch.offsets else None})
        return None
