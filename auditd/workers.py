"""Worker processes for the per-event stages, so that a replay uses every core.

The main process keeps reading and framing (sources, checkpoints and rotation stay
where they are proven) and hands each batch, numbered by its place in the stream, to a
pool of worker processes. A worker loads the same configuration and runs what needs no
store: decode, enrich, the rules' conditions and the encoding for the store
(`pipeline.prepare`). The main process is the one writer: it takes the prepared
batches back in their order and confirms the conditions that held (exceptions,
stateful kinds with their state, suppressions), correlates and commits each batch with
its checkpoint, exactly as one process would (`Pipeline.handle(batch, prepared)`).

A worker that dies (killed, out of memory) breaks the pool: it is started afresh and
every batch not yet committed is handed out again, in order; nothing was committed
from them, so nothing is lost or done twice. A batch that breaks the pool
`MAX_TRIES` times in a row is done in the main process instead (a poison record
costs speed, never the replay).

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
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from auditd.pipeline import Prepared, prepare
from auditd.sources.base import Batch

log = logging.getLogger("neo_auditd.workers")

MAX_TRIES = 3  # times one batch may break the pool before the main process does it
AHEAD = 2  # batches in flight per worker: one being worked on, one waiting

_runtime = None  # the worker process's own Runtime


def resolve_workers(requested: int) -> int:
    """The number of worker processes: 0 means one per core the process may use."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _start(config_path: str) -> None:
    global _runtime
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    from auditd.runtime import load_runtime

    _runtime = load_runtime(Path(config_path))
    gc.freeze()  # the loaded rules, directory and formats never die


def _prepare(batch: Batch) -> Prepared:
    return prepare(_runtime, batch)


class WorkerPool:
    """`workers` processes that prepare batches; results come back in batch order."""

    def __init__(self, config_path: Path, workers: int):
        self.config_path = Path(config_path)
        self.workers = workers
        self.restarts = 0  # times a dead worker broke the pool
        self._executor: ProcessPoolExecutor | None = None

    def pids(self) -> list[int]:
        """The worker processes now running (for tests and status)."""
        processes = getattr(self._executor, "_processes", None) or {}
        return [p.pid for p in processes.values() if p.is_alive()]

    def _open(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start, initargs=(str(self.config_path),))
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def ordered(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Prepared | None]]:
        """(batch, prepared) in the batches' order, `AHEAD` per worker in flight. Prepared
        is None for a batch the main process must do itself (it broke the pool)."""
        window: deque[tuple[Batch, Future | None]] = deque()
        limit = AHEAD * self.workers
        try:
            for batch in batches:
                window.append((batch, self._submit(batch)))
                while len(window) >= limit:
                    yield self._next(window)
            while window:
                yield self._next(window)
        finally:
            self.close()

    def _submit(self, batch: Batch) -> Future | None:
        try:
            return self._open().submit(_prepare, batch)
        except BrokenProcessPool:  # broke between results: _next restarts it
            return None

    def _next(self, window: deque[tuple[Batch, Future | None]]) -> tuple[Batch, Prepared | None]:
        tries = 0
        while True:
            batch, future = window[0]
            try:
                if future is None:
                    raise BrokenProcessPool("the pool broke before this batch was handed out")
                prepared = future.result()
            except BrokenProcessPool as exc:
                tries += 1
                self.restarts += 1
                log.error("a worker process died; the pool restarts and batches not yet committed are done again",
                          extra={"error": str(exc), "batches": len(window), "tries": tries})
                self._abandon()
                if tries >= MAX_TRIES:
                    window.popleft()
                    self._resubmit(window)
                    return batch, None
                self._resubmit(window)
                continue
            window.popleft()
            return batch, prepared

    def _abandon(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _resubmit(self, window: deque[tuple[Batch, Future | None]]) -> None:
        batches = [b for b, _ in window]
        window.clear()
        window.extend((b, self._submit(b)) for b in batches)
