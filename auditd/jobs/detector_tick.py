"""Job: let stateful rules act when time passes without events (a window closes, an
expected event stays away). The rules' state belongs to the pipeline's transaction,
so the job only asks; the pipeline's thread runs ``Pipeline.tick`` between batches."""

from __future__ import annotations

from auditd.jobs.context import JobContext


def run(context: JobContext) -> None:
    context.request_tick()
