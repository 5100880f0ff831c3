"""A job's work in a process of its own.

A job that decodes weeks of stored events (the grant review reads its whole period,
90 days by default) is pure Python: on the scheduler's thread it would take the
interpreter from the pipeline for as long as it runs, minutes to hours on a busy
system, and alerts would wait. Run apart, in a spawned process below the pipeline's
priority, it uses another core; the job's thread only waits for it.

    run_apart(grant_review_job, args, kwargs, should_stop=context.should_stop)

The arguments cross as a pickle (the directory in force included, so the process works
on what the daemon holds, not on whatever the file says now). The process logs as the
daemon does (JSON lines on standard output), stops when the daemon stops, and a failure
is the job's failure (recorded, logged, run again at its next time).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import auditd.directory.packed  # noqa: F401 - how the directory's frozen mappings pickle

# Below the pipeline's priority, for work apart and the deliver process alike: where they
# meet on one busy core, the pipeline (events must not lag) wins; delivery still gets a
# tenth of a contended core (~500 messages/s of e-mail here), and a whole idle one.
NICE = 10
POLL_S = 0.5


class StoppedWithTheDaemon(Exception):
    """The daemon stopped while the work ran apart: it was ended, and runs again later."""


def run_apart(target: Callable[..., Any], args: tuple = (), kwargs: dict | None = None, *,
              should_stop: Callable[[], bool] = lambda: False, poll_s: float = POLL_S) -> None:
    """Run `target(*args, **kwargs)` (a module-level function) in a spawned process and
    wait for it; raise if it fails, or StoppedWithTheDaemon if `should_stop` says so first."""
    context = multiprocessing.get_context("spawn")  # never fork a process with threads
    name = getattr(target, "__name__", "job")
    if should_stop():
        raise StoppedWithTheDaemon(f"{name}: not started, the daemon is stopping")
    process = context.Process(target=_child, args=(target, args, kwargs or {}, logging.getLogger().level),
                              name=f"neo-auditd-{name}", daemon=True)
    process.start()
    try:
        while process.exitcode is None:
            process.join(poll_s)
            if process.exitcode is None and should_stop():
                raise StoppedWithTheDaemon(f"{name}: stopped with the daemon; it runs again after the start")
        code = process.exitcode
    finally:
        if process.exitcode is None:
            process.terminate()
            process.join(5)
    if code != 0:
        raise RuntimeError(f"{name} ran apart and failed (exit {code}): see its log lines")


def _child(target: Callable[..., Any], args: tuple, kwargs: dict, level: int) -> None:
    from auditd.logs import setup_logging

    os.nice(NICE)
    setup_logging(logging.getLevelName(level) if level else "INFO")
    try:
        target(*args, **kwargs)
    except Exception:
        logging.getLogger("neo_auditd.jobs").exception("job failed in its own process", extra={"job": target.__name__})
        raise SystemExit(1) from None
