"""`neo-auditd replay`: the daemon's pipeline over files from their start, then done.

The same stages, store and transactions as `run` (`pipeline.py`), fed by a
`ReplaySource` instead of tailers; with workers, the same `WorkerPool` prepares the
batches. A replay into a store that already holds some of the files goes on past
what it did (the checkpoints), so nothing is counted twice.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from auditd.ops.memory import keep_buffers_in_heap
from auditd.pipeline import Pipeline
from auditd.runtime import Runtime
from auditd.sources.tail import ReplaySource
from auditd.store.quarantine_file import QuarantineFile
from auditd.store.sqlite import Store
from auditd.workers import WorkerPool, fingerprint, resolve_workers

if TYPE_CHECKING:
    from auditd.elastic.daemon import Cluster

REPLAY_DRAIN_S = 3600.0  # a replay waits for its events to reach the cluster


def replay(runtime: Runtime, store: Store, quarantine: QuarantineFile, paths: list[Path], source_name: str,
           *, progress: Callable[[int, int], None] | None = None, cluster: Cluster | None = None,
           workers: int = 1, config_path: Path | None = None,
           on_batch: Callable[[Pipeline, WorkerPool | None], None] | None = None) -> Pipeline:
    """Run the pipeline over files from their start (or past what an earlier replay already did).

    With a cluster, its shipper runs alongside and is drained before this returns.
    With `workers` other than 1 (0: one per core) and the config's path, worker
    processes that load the same config prepare the batches (`auditd.workers`); this
    process stays the one writer. `on_batch` is called after each commit.
    """
    pipeline = Pipeline(runtime, store, quarantine)
    gc.freeze()  # the loaded rules, directory and formats never die: keep the collector off them
    keep_buffers_in_heap()
    framer = runtime.framers[source_name]()
    reader = ReplaySource(source_name, [Path(p) for p in paths], framer, store.load_checkpoints(source_name),
                          **_reading_limits(runtime, source_name))
    batch_records = runtime.settings.pipeline.batch_records
    total = reader.total_bytes()
    started = time.monotonic()
    n = resolve_workers(workers)
    pool = None
    if n > 1 and config_path is not None:
        pool = WorkerPool(config_path, n, ruleset=runtime.ruleset, expected=fingerprint(runtime))
        pool.start()
        pool.wait_ready()  # a replay's batches are large: the workers, not this process, should take the first
    batches = reader.batches(batch_records)
    for batch, prepared in (pool.ordered(batches) if pool is not None else ((b, None) for b in batches)):
        pipeline.handle(batch, prepared)
        if on_batch is not None:
            on_batch(pipeline, pool)
        if cluster is not None:
            cluster.wake()
        if progress:
            progress(reader.bytes_done(), total)
    if progress:
        progress(total, total)  # every byte read: the bar ends at 100 %, whatever the last batch was
    pipeline.totals.seconds = time.monotonic() - started
    pipeline.totals.unfinished = list(reader.unfinished)
    pipeline.totals.already_read = list(reader.already_read)
    if cluster is not None and cluster.shipper is not None:
        cluster.shipper.stop(drain_timeout=REPLAY_DRAIN_S)
        pipeline.totals.shipped_lag = cluster.shipper.lag()
        pipeline.totals.seconds_with_shipping = time.monotonic() - started
    return pipeline


def _reading_limits(runtime: Runtime, source_name: str) -> dict[str, int]:
    """The source's own limits, and its fingerprint length: a replayed file keeps the key the
    daemon's tailer gives it, so neither reads again what the other has read."""
    for source in runtime.settings.sources:
        if source.name == source_name:
            return {"fingerprint_bytes": source.fingerprint_bytes, "max_record_bytes": source.max_record_bytes,
                    "max_document_bytes": source.max_document_bytes,
                    "max_decompressed_bytes": source.max_decompressed_bytes}
    return {}  # an Elasticsearch source: no file reading of its own
