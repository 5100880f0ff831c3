"""Job: the outbox worker. Sends what respond rendered, through the configured channels,
with retries, rate limits, receipts and escalation (``auditd.deliver``).

It runs in the daemon's deliver process (``deliver_process.py``), never on the daemon's
own scheduler, so composing and sending never take the interpreter lock from the
pipeline; its SQLite connection is its own, and claims and outcomes are short
transactions of a few hundred rows, so the pipeline's batches wait for the write lock
no longer than one of them. One run drains everything due and returns; the next comes
``deliver.check_every`` later. With rules with ``scope: cluster`` in a fleet, only the
daemon holding the fleet's deliver lease sends (``context.fleet``).
"""

from __future__ import annotations

import contextlib
import logging

from auditd.jobs.context import JobContext
from auditd.jobs.respond_due import connect

log = logging.getLogger("neo_auditd.deliver")


def run(context: JobContext) -> None:
    runtime = context.runtime()
    deliverer = runtime.deliverer
    if deliverer is None or not runtime.settings.deliver.enabled:
        return
    with contextlib.closing(connect(context.store_path)) as conn:
        # the store's durability, not SQLite's default FULL: an fsync per claim and per
        # slice of outcomes, each under the write lock, would stall the pipeline's batches
        conn.execute(f"PRAGMA synchronous={runtime.settings.store.synchronous}")
        report = deliverer.run(conn, should_stop=context.should_stop, fleet=context.fleet())
    if report.delivered or report.failed or report.recovered or report.fleet or report.suppressed:
        log.info("outbox", extra={"delivered": report.delivered, "retried": report.retried,
                                  "failed": report.failed, "suppressed": report.suppressed,
                                  "fleet": report.fleet, "possible_repeats": report.recovered,
                                  "escalated": report.escalated, "by_channel": report.by_channel})
