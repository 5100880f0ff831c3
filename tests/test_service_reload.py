"""A SIGHUP is read on a thread of its own, while the lines go on: a real daemon with a
directory of 20,000 employees, changed before the SIGHUP so that the reload must parse
it (seconds), keeps committing lines and alerts during the load, swaps the new set in
when it is read, and stops promptly when told to in the middle of one."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from auditd.enrich.pseudonym import create_key_file
from auditd.ops import runstate

REPO = Path(__file__).resolve().parents[1]
EMPLOYEES = 20_000
RULE = """- rule: order_read
  desc: any read of an order, for the test
  condition: event.action = read and neo.resource.type = order
  severity: low
  tags: [sandbox]
  samples:
    match: [{'@timestamp': '2026-11-02T10:00:00+08:00', event.action: read, neo.resource.type: order}]
    no_match: [{'@timestamp': '2026-11-02T10:00:00+08:00', event.action: export}]
"""


def line(n: int) -> str:
    return json.dumps({
        "ts": f"2026-11-02T10:{n // 60 % 60:02d}:{n % 60:02d}.000+08:00", "app": "crm", "host": "crm-web-01",
        "req": f"r-{n:08d}", "emp": {"id": "E10002", "name": "x"}, "ip": "10.20.1.5",
        "op": "order.view", "res": {"type": "order", "id": f"O{n:09d}", "store": "S011"},
        "subjects": [f"C{n:08d}"], "count": 1, "fields": ["items"], "masked": True, "result": "ok",
    }) + "\n"


def write_directory(path: Path, version: int) -> None:
    """The example directory and 20,000 more clerks; `version` renames the last one."""
    doc = yaml.safe_load((REPO / "examples" / "directory.yaml").read_text(encoding="utf-8"))
    model = next(e for e in doc["employees"] if e["id"] == "E10002")
    doc["employees"] += [dict(model, id=f"E2{n:06d}", name=f"clerk {n}") for n in range(EMPLOYEES)]
    doc["employees"][-1]["name"] = f"clerk v{version}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.dump(doc, Dumper=yaml.CSafeDumper, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)


def query(db: Path, sql: str):
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(sql).fetchone()
    except sqlite3.Error:
        return None


def events(db: Path) -> int:
    row = query(db, "SELECT COALESCE(SUM(count), 0) FROM event_segments")
    return row[0] if row else 0


def alerts(db: Path) -> int:
    row = query(db, "SELECT COUNT(*) FROM alerts")
    return row[0] if row else 0


def last_reload(db: Path) -> dict | None:
    row = query(db, "SELECT value FROM meta WHERE key = 'last_reload'")
    return json.loads(row[0]) if row else None


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def write_setup(tmp_path: Path, directory_settings: str = "") -> tuple[Path, Path]:
    """Key, log folder, the rule and config.yaml in `tmp_path`, naming directory.yaml
    (written by the caller) with `directory_settings` added; (config, directory)."""
    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "logs").mkdir()
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "a.yaml").write_text(RULE)
    directory = tmp_path / "directory.yaml"
    config = tmp_path / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n    poll_interval_s: 0.1\n"
        "pseudonym:\n  key_file: pseudonym.key\n"
        f"directory:\n  path: {directory}\n{directory_settings}"
        "rules:\n  include_shipped: false\n  paths: [rules.d]\n"
        "ops:\n  metrics: {enabled: false}\n"
    )
    return config, directory


@pytest.fixture
def big(tmp_path: Path):
    # the watcher would notice the change by itself: here only the SIGHUP reads it
    _, directory = write_setup(tmp_path, "  reload_check_s: 3600\n")
    write_directory(directory, 0)
    out = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(tmp_path / "config.yaml"),
                             "--workers", "1"], stdout=out, stderr=subprocess.STDOUT)
    db = tmp_path / "state" / "neo-auditd.db"
    try:
        wait_for(lambda: last_reload(db), "the daemon to start")
        yield {"dir": tmp_path, "proc": proc, "db": db, "log": tmp_path / "logs" / "access.log",
               "directory": directory}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def append(ctx, first: int, count: int) -> None:
    with open(ctx["log"], "a") as fh:
        fh.writelines(line(n) for n in range(first, first + count))


@pytest.mark.slow
def test_lines_are_committed_and_alerted_while_a_sighup_reads_a_changed_directory(big):
    db = big["db"]
    append(big, 0, 10)
    wait_for(lambda: alerts(db) == 10, "the first alerts")
    started = last_reload(db)

    write_directory(big["directory"], 1)  # the HR export changed: this SIGHUP must parse it again
    big["proc"].send_signal(signal.SIGHUP)
    append(big, 10, 10)
    assert wait_for(lambda: (runstate.read(db) or {}).get("reloading_since"), "status to say a reload is read")
    # committed, alerts included, before the reload is done: the load did not hold the lines up
    wait_for(lambda: alerts(db) == 20, "the alerts of the lines written during the reload", timeout=30)
    assert last_reload(db) == started, "the lines waited for the reload"

    record = wait_for(lambda: (r := last_reload(db)) != started and r, "the reload to be swapped in")
    assert record["ok"] is True, record
    assert wait_for(lambda: (r := runstate.read(db)) and r.get("reloading_since") is None and r, "the end of it")
    log = (big["dir"] / "daemon.log").read_text(encoding="utf-8")
    reloaded = json.loads(next(x for x in log.splitlines() if '"message":"reloaded"' in x))
    assert reloaded["directory_read"] is True  # the changed file was parsed again, not the old one kept
    append(big, 20, 10)  # under the new set: nothing lost, nothing twice
    wait_for(lambda: events(db) == 30 and alerts(db) == 30, "every line after the swap")


@pytest.mark.slow
def test_a_stop_in_the_middle_of_a_reload_is_prompt_and_clean(big):
    db = big["db"]
    append(big, 0, 10)
    wait_for(lambda: events(db) == 10, "the first events")
    write_directory(big["directory"], 1)
    big["proc"].send_signal(signal.SIGHUP)
    # the deliver process, and the child parsing the directory (seconds of work ahead of it)
    children = wait_for(lambda: (c := children_of(big["proc"].pid)) and any(b"spawn_main" in cmdline(p) for p in c)
                        and c, "the child parsing the directory")
    append(big, 10, 10)
    asked = time.monotonic()
    big["proc"].send_signal(signal.SIGTERM)
    assert big["proc"].wait(timeout=30) == 0
    took = time.monotonic() - asked
    assert events(db) == 20  # drained before it stopped
    assert took < 2, f"the stop waited {took:.1f} s for a reload it no longer needs"
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), "no child left behind", 10)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


# -- the load's thread, alone ---------------------------------------------------------------

def test_a_load_wakes_the_loop_when_done_and_a_slow_one_is_said_once_per_period():
    import threading

    from auditd.service import ConfigLoad, Loaded

    gate, wake = threading.Event(), threading.Event()
    expected = Loaded(None, ValueError("refused"), None, 1.5)
    load = ConfigLoad(lambda: (gate.wait(10), expected)[1], wake)
    time.sleep(0.05)
    assert not load.done and not wake.is_set()
    assert load.overdue(0.01) and not load.overdue(60)  # said, then not again within the period
    gate.set()
    assert wake.wait(10) and wait_for(lambda: load.done, "the load's end", 10)
    assert load.take() is expected and not load.overdue(0.0)


def test_a_load_whose_thread_dies_is_a_refused_reload_not_a_hang():
    import threading

    from auditd.service import ConfigLoad

    def broken():
        raise SystemExit("a bug in the loader")  # not an Exception: `_loader` does not catch it

    wake = threading.Event()
    load = ConfigLoad(broken, wake)
    assert wake.wait(10) and wait_for(lambda: load.done, "the thread's end", 10)
    loaded = load.take()
    assert loaded.runtime is None and str(loaded.error) == \
        "the configuration load ended without a result: SystemExit('a bug in the loader')"


# -- in one process: what a load keeps, and a directory swapped in during a load ------------

@pytest.fixture
def small(tmp_path: Path):
    """A daemon object (not running) with the example directory, and its config."""
    from auditd.opening import open_store
    from auditd.runtime import load_runtime
    from auditd.service import Daemon

    config, directory = write_setup(tmp_path)
    directory.write_bytes((REPO / "examples" / "directory.yaml").read_bytes())
    runtime = load_runtime(config)
    store, quarantine = open_store(runtime)
    daemon = Daemon(config, runtime, store, quarantine)
    try:
        yield daemon, config, directory
    finally:
        store.close()


def test_a_reload_keeps_an_unchanged_directory_and_reads_a_changed_one(small):
    daemon, _, path = small
    before = daemon.pipeline.runtime
    daemon._do_reload()
    assert daemon.last_reload_ok and daemon.pipeline.runtime is not before
    assert daemon.pipeline.runtime.directory is before.directory  # not parsed again

    path.write_text(path.read_text(encoding="utf-8").replace("name:", "name: x", 1), encoding="utf-8")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    daemon._do_reload()
    assert daemon.last_reload_ok and daemon.pipeline.runtime.directory is not before.directory


def test_a_load_that_kept_the_directory_the_watcher_has_since_replaced_is_loaded_again(small):
    """An HR export taken in by the watcher while a SIGHUP's load was reading must not be
    undone by that load's swap."""
    from auditd.config.located import Problems
    from auditd.directory import load_directory

    daemon, _, path = small
    before = daemon.pipeline.runtime
    loaded = daemon._loader()()  # read (on this thread here) with the directory in force kept
    assert loaded.kept is before.directory and loaded.error is None
    newer = load_directory(path, Problems())  # what the watcher swapped in meanwhile
    daemon.directory_watcher.directory = newer
    daemon._apply_reload(loaded)
    assert daemon.pipeline.runtime is before and daemon._reload.is_set()  # not swapped: read again
    daemon._do_reload()
    assert daemon.last_reload_ok and daemon.pipeline.runtime.directory is newer


def test_a_worker_keeps_its_unchanged_directory_or_takes_the_writer_s_packed_one(small):
    from auditd.config.located import Problems
    from auditd.directory import load_directory
    from auditd.directory.packed import pack
    from auditd.workers import Reload, _reload

    _, config, path = small
    from auditd.runtime import load_runtime

    runtime = load_runtime(config)
    fresh, directory = _reload(runtime, runtime.directory, Reload("config"), str(config))
    assert fresh is not runtime and directory is runtime.directory  # unchanged files: kept

    writers = load_directory(path, Problems())
    fresh, directory = _reload(runtime, runtime.directory, Reload("config", None, pack(writers)), str(config))
    assert directory == writers and directory is not writers and fresh.directory is directory  # the writer's


# -- a reload that restarts a source: what was read and not committed is not read again ----

def _rotated_files(tmp_path: Path, files: int = 6, lines: int = 5) -> list[str]:
    """access.log.N ... access.log.1 and access.log, `lines` each: one poll reads a batch
    of each file. The request ids written, in order."""
    n = 0
    for number in [*range(files, 0, -1), None]:
        name = "access.log" if number is None else f"access.log.{number}"
        with open(tmp_path / "logs" / name, "w") as fh:
            fh.writelines(line(k) for k in range(n, n + lines))
        n += lines
    return [f"r-{k:08d}" for k in range(n)]


def _change_the_source(config: Path) -> None:
    config.write_text(config.read_text().replace("poll_interval_s: 0.1", "poll_interval_s: 0.2"))


def _read_everything(daemon) -> list[str]:
    for _ in range(10):
        while daemon._pump():
            pass
        time.sleep(0.05)
    daemon._settle(queued=True)
    return sorted(e.request_id for e in daemon.store.iter_events())


def _stop(daemon) -> None:
    if daemon.pool is not None:
        daemon.pool.close()
    for tailer in daemon.tailers.values():
        tailer.stop()


def test_a_reload_restarting_a_source_commits_the_batches_read_for_the_workers_first(small, tmp_path):
    """With workers, a poll's batches beyond the free workers wait in a queue; a reload
    that changed the source restarted its tailer from the committed checkpoints while
    they waited, and they were committed as well: read twice (2,500 of 240,500 lines
    end to end)."""
    from auditd.service import Daemon

    old, config, _ = small
    written = _rotated_files(tmp_path)
    daemon = Daemon(config, old.pipeline.runtime, old.store, old.pipeline.quarantine_file, workers=2)
    try:  # its workers are not started: this process prepares the batches, the queue is the same
        daemon._start_tailers(daemon.pipeline.runtime, first_start=True)
        daemon._pump()
        assert daemon._queued, "the scenario needs batches read and waiting for a worker"
        _change_the_source(config)
        daemon._do_reload()
        assert daemon.last_reload_ok
        assert _read_everything(daemon) == written
    finally:
        _stop(daemon)


def test_a_reload_restarting_a_source_while_holding_back_reads_nothing_twice(small, tmp_path, monkeypatch):
    """Storage refused a batch (full disk, the size cap): the batches read are held; a
    reload that changed the source restarted its tailer from the committed checkpoints,
    and the held batches were committed as well once storage took writes again."""
    from auditd.store.pressure import StorageUnavailable

    daemon, config, _ = small
    written = _rotated_files(tmp_path)
    try:
        daemon._start_tailers(daemon.pipeline.runtime, first_start=True)
        handle = daemon.pipeline.handle

        def refuse(*args, **kwargs):
            raise StorageUnavailable("disk full (test)")

        monkeypatch.setattr(daemon.pipeline, "handle", refuse)
        daemon._pump()
        assert daemon.holding_back and daemon._held
        _change_the_source(config)
        daemon._do_reload()
        assert daemon.last_reload_ok
        monkeypatch.setattr(daemon.pipeline, "handle", handle)
        assert _read_everything(daemon) == written
        assert daemon.holding_back is None
        assert daemon.tailers["crm"].settings.poll_interval_s == 0.2  # the new settings, once the held are in
    finally:
        _stop(daemon)
