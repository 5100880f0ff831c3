"""What a source may open: regular files in its own directories, never a FIFO that would
stall it, a symlink out of its directories, or the daemon's own files.

Real files, FIFOs and symlinks in a temporary directory; the tailer is the daemon's.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from auditd.sources.base import NO_FILE, Batch
from auditd.sources.framing import LineFramer
from auditd.sources.guard import Protected
from auditd.sources.settings import FileSourceSettings
from auditd.sources.tail import FileTailer

SECRET = b"-----BEGIN PRIVATE KEY----- s3cr3t-bytes-that-must-go-nowhere\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tailer_for(pattern: Path, *, cls=FileTailer, protected: Protected | None = None, **options) -> FileTailer:
    settings = FileSourceSettings(name="crm", paths=(pattern,), format="lines", use_inotify=False,
                                  poll_interval_s=1.0, drain_grace_s=3.0, **options)
    if protected is not None:
        settings = settings.with_protected(protected)
    return cls(settings, LineFramer(), {}, first_start=True, clock=Clock())


def poll(tailer: FileTailer, rounds: int = 3) -> tuple[list[bytes], list[Batch]]:
    records, batches = [], []
    for _ in range(rounds):
        tailer._clock.now += 1.0
        for batch in tailer.poll(1000):
            batches.append(batch)
            records += batch.records
    return records, batches


def refused(tailer: FileTailer) -> dict[str, str]:
    return {Path(path).name: reason for path, reason, _ in tailer.report().refused}


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "access.log").write_bytes(b"live 1\nlive 2\n")
    (tmp_path / "secret.key").write_bytes(SECRET)
    return tmp_path / "logs"


def test_a_symlink_to_a_file_outside_the_source_is_refused_with_its_reason(logs, caplog):
    # main: os.stat + os.open followed the link and read the secret as log lines
    os.symlink(logs.parent / "secret.key", logs / "access.log.1")
    tailer = tailer_for(logs / "access.log")
    records, batches = poll(tailer)
    assert records == [b"live 1", b"live 2"]
    assert refused(tailer) == {"access.log.1": "symlink_outside"}
    (_, _, detail), = tailer.report().refused
    assert "outside the directories this source reads" in detail and "allow_dirs" in detail
    assert sum("not reading" in r.message for r in caplog.records) == 1  # once, not every scan
    assert all(SECRET.strip() not in record for record in records)
    tailer.stop()


def test_a_symlink_whose_target_is_in_allow_dirs_is_read(logs):
    app = logs.parent / "app"
    app.mkdir()
    (app / "old.log").write_bytes(b"old 1\n")
    os.symlink(app / "old.log", logs / "access.log.1")
    tailer = tailer_for(logs / "access.log", allow_dirs=(app,))
    records, _ = poll(tailer)
    assert sorted(records) == [b"live 1", b"live 2", b"old 1"] and refused(tailer) == {}
    tailer.stop()


def test_a_symlink_inside_the_globs_own_directory_is_followed(logs):
    (logs / "2026-11-02.log").write_bytes(b"dated\n")
    os.symlink("2026-11-02.log", logs / "current.log")
    tailer = tailer_for(logs / "*.log")
    records, _ = poll(tailer)
    assert sorted(records) == [b"dated", b"live 1", b"live 2"]  # one file, two names: read once
    tailer.stop()


def test_a_fifo_named_like_a_rotation_does_not_stall_the_live_file(logs):
    # main: os.stat said "not regular" and skipped it silently (no reason, no metric)
    os.mkfifo(logs / "access.log.2")
    tailer = tailer_for(logs / "access.log")
    records, _ = poll(tailer)
    assert records == [b"live 1", b"live 2"]
    assert refused(tailer) == {"access.log.2": "fifo"}
    with open(logs / "access.log", "ab") as fh:
        fh.write(b"live 3\n")
    assert poll(tailer)[0] == [b"live 3"]
    tailer.stop()


class SwapBeforeOpen(FileTailer):
    """Between the scan's look at a name and its open, someone replaces the file."""

    swap: dict[str, callable] = {}

    def _open(self, path, *args, **kwargs):
        action = self.swap.pop(Path(path).name, None)
        if action is not None:
            action(Path(path))
        return super()._open(path, *args, **kwargs)


def _into_symlink(target: Path):
    def swap(path: Path) -> None:
        os.unlink(path)
        os.symlink(target, path)
    return swap


def _into_fifo(path: Path) -> None:
    os.unlink(path)
    os.mkfifo(path)


def test_a_rotated_file_replaced_by_a_symlink_between_scan_and_open_is_caught(logs):
    (logs / "access.log.1").write_bytes(b"rotated 1\n")
    SwapBeforeOpen.swap = {"access.log.1": _into_symlink(logs.parent / "secret.key")}
    tailer = tailer_for(logs / "access.log", cls=SwapBeforeOpen)
    records, _ = poll(tailer, rounds=1)
    assert records == [b"live 1", b"live 2"]
    assert refused(tailer) == {"access.log.1": "replaced"}  # O_NOFOLLOW: the open refused the link
    records, _ = poll(tailer)  # the next scan sees the symlink for what it is
    assert records == [] and refused(tailer) == {"access.log.1": "symlink_outside"}
    tailer.stop()


def test_a_fifo_swapped_in_between_scan_and_open_never_blocks_the_open(logs):
    (logs / "access.log.1").write_bytes(b"rotated 1\n")
    SwapBeforeOpen.swap = {"access.log.1": _into_fifo}
    tailer = tailer_for(logs / "access.log", cls=SwapBeforeOpen)
    out: list = []
    worker = threading.Thread(target=lambda: out.append(poll(tailer, rounds=1)), daemon=True)
    worker.start()
    worker.join(timeout=30)  # without O_NONBLOCK the open waits for a writer forever
    assert not worker.is_alive(), "the tailer blocked opening a FIFO"
    assert out[0][0] == [b"live 1", b"live 2"] and refused(tailer) == {"access.log.1": "fifo"}
    tailer.stop()


def test_a_file_reached_through_a_symlinked_directory_is_judged_by_where_it_is(logs):
    elsewhere = logs.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.log").write_bytes(b"elsewhere\n")
    os.symlink(elsewhere, logs / "sub")
    tailer = tailer_for(logs / "**" / "*.log")
    records, _ = poll(tailer)
    assert records == [b"live 1", b"live 2"] and refused(tailer) == {"x.log": "outside_allowed"}
    tailer.stop()


def test_the_daemons_own_files_are_never_read_even_when_a_glob_or_a_hard_link_reaches_them(logs):
    state = logs / "state"
    state.mkdir()
    (state / "quarantine.jsonl").write_bytes(b'{"q": 1}\n')
    key = logs.parent / "secret.key"
    os.link(key, logs / "key-copy.log")  # another name, the same inode
    protected = Protected.of([state], [key])
    tailer = tailer_for(logs / "**" / "*", protected=protected)
    records, _ = poll(tailer)
    assert records == [b"live 1", b"live 2"]
    assert refused(tailer) == {"quarantine.jsonl": "daemon_file", "key-copy.log": "daemon_file"}
    tailer.stop()


def test_a_globstar_reads_the_files_of_its_own_directory(logs):
    # main: glob found logs/access.log for logs/**/*.log, then fnmatch dropped it
    (logs / "api").mkdir()
    (logs / "api" / "a.log").write_bytes(b"api 1\n")
    tailer = tailer_for(logs / "**" / "*.log")
    records, _ = poll(tailer)
    assert sorted(records) == [b"api 1", b"live 1", b"live 2"]
    tailer.stop()


def test_a_glob_that_matches_nothing_is_reported_and_so_is_its_first_file(logs):
    tailer = tailer_for(logs / "audit-*.log")
    _, batches = poll(tailer, rounds=1)
    (only,) = batches
    assert (only.fingerprint, only.records, only.report.unmatched) == (NO_FILE, [], (str(logs / "audit-*.log"),))
    assert poll(tailer)[1] == []  # unchanged: not reported again
    (logs / "audit-1.log").write_bytes(b"a\n")
    records, batches = poll(tailer, rounds=1)
    assert records == [b"a"] and batches[0].report.unmatched == () and batches[0].report.files == 1
    tailer.stop()
