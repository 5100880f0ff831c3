"""A job's work in a spawned process (`auditd/jobs/apart.py`): it ends when the daemon
stops, and its failure is the job's."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from auditd.jobs.apart import StoppedWithTheDaemon, run_apart


def test_work_apart_is_ended_when_the_daemon_stops():
    stopping = threading.Event()
    threading.Timer(0.5, stopping.set).start()
    started = time.monotonic()
    with pytest.raises(StoppedWithTheDaemon, match="sleep: stopped with the daemon"):
        run_apart(time.sleep, (60,), should_stop=stopping.is_set, poll_s=0.1)
    assert time.monotonic() - started < 30  # not the minute the work would have taken
    assert multiprocessing.active_children() == []  # ended, not left behind


def test_work_apart_that_fails_fails_the_job_and_a_stopping_daemon_starts_none(tmp_path):
    with pytest.raises(RuntimeError, match=r"remove ran apart and failed \(exit 1\)"):
        run_apart(os.remove, (str(tmp_path / "missing"),))
    run_apart(os.mkdir, (str(tmp_path / "made"),))  # the work happens, in the other process
    assert (tmp_path / "made").is_dir()
    with pytest.raises(StoppedWithTheDaemon, match="not started"):
        run_apart(os.mkdir, (str(tmp_path / "never"),), should_stop=lambda: True)
    assert not (tmp_path / "never").exists()
