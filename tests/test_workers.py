"""`replay --workers N` (issue 19): worker processes prepare batches, the main process
stays the one writer; the store is the same for every N, and a worker that dies costs
nothing."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.detect.resolve import FieldTest
from auditd.detect.state import rule_state_hash, stable_repr

REPO = Path(__file__).resolve().parents[1]


def _same_output():
    spec = importlib.util.spec_from_file_location("same_output", REPO / "scripts" / "same_output.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_replay_with_two_workers_leaves_the_same_store_as_one(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "same_output.py"), "--lines", "6000",
                           "--batch-records", "500", "--workers", "2", "--workdir", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    result = json.loads(proc.stdout)
    assert result["identical"] and result["alerts"] > 0 and result["incidents"] > 0
    assert result["tables"]["detector_state"]["rows"] > 0  # the stateful rules ran in the writer


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_nothing_is_lost_or_done_twice(tmp_path):
    from auditd.runtime import load_runtime
    from auditd.opening import open_store
    from auditd.replay import replay

    same = _same_output()
    config, log = same.example(tmp_path, 6000, 500)

    def run(state: Path, workers: int, on_batch=None) -> None:
        runtime = load_runtime(config)
        store, quarantine = open_store(runtime, state)
        try:
            replay(runtime, store, quarantine, [log], "crm", workers=workers, config_path=config, on_batch=on_batch)
        finally:
            store.close()

    killed: list[int] = []
    restarts: list[int] = []

    def kill_one(pipeline, pool) -> None:
        if pool is not None and not killed:
            pids = pool.pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)  # mid-replay: other batches are in flight
                killed.append(pids[0])
        if pool is not None:
            restarts.append(pool.restarts)

    run(tmp_path / "serial", 1)
    run(tmp_path / "parallel", 2, kill_one)
    assert killed and max(restarts) >= 1  # the pool noticed and started afresh
    assert same.store_digest(tmp_path / "parallel" / "neo-auditd.db") == \
        same.store_digest(tmp_path / "serial" / "neo-auditd.db")


@pytest.mark.slow
def test_hostile_lines_are_quarantined_alike_with_workers(tmp_path):
    """Broken, binary and mistyped lines go through the workers' decode: quarantined
    and counted exactly as in one process."""
    import random

    from auditd.runtime import load_runtime
    from auditd.opening import open_store
    from auditd.replay import replay

    same = _same_output()
    config, log = same.example(tmp_path, 3000, 300)
    rnd = random.Random(1)
    lines = log.read_bytes().split(b"\n")
    for i in range(5, len(lines), 97):
        lines[i] = lines[i][: len(lines[i]) // 2]  # cut short
    for i in range(7, len(lines), 131):
        lines[i] = bytes(rnd.randrange(256) for _ in range(60)).replace(b"\n", b".")  # binary
    for i in range(9, len(lines), 151):
        lines[i] = lines[i].replace(b'"count":', b'"count":"many","x":')  # a count that is text
    log.write_bytes(b"\n".join(lines))
    totals = {}
    for workers in (1, 2):
        runtime = load_runtime(config)
        store, quarantine = open_store(runtime, tmp_path / f"state-{workers}")
        try:
            totals[workers] = replay(runtime, store, quarantine, [log], "crm", workers=workers,
                                     config_path=config).totals
        finally:
            store.close()
    assert totals[1].quarantined > 40 and totals[1].quarantined == totals[2].quarantined
    assert totals[1].events == totals[2].events and totals[1].alerts == totals[2].alerts
    assert same.store_digest(tmp_path / "state-2" / "neo-auditd.db") == \
        same.store_digest(tmp_path / "state-1" / "neo-auditd.db")


def test_rule_state_hash_is_the_same_in_every_process():
    """A set in a condition is hashed in sorted order: the hash (and so the rule's
    stored state) survives a restart, whatever the process's hash seed."""
    code = ("from auditd.detect.resolve import FieldTest; from auditd.detect.state import rule_state_hash; "
            "print(rule_state_hash('threshold', FieldTest(field='event.action', attr='action', kind='str', op='in', "
            "value=frozenset({'read', 'export', 'search', 'list', 'unmask', 'share', 'print'})), {'gte': 5}))")
    hashes = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(1, 6)}
    assert len(hashes) == 1


def test_a_set_free_rule_keeps_its_stored_hash():
    value = ("threshold", FieldTest(field="user.id", attr="user_id", kind="str", op="=", value="E1"),
             {"gte": 5, "group_by": ("a",), "k": 1.5, "x": None, "l": [1, 2]})
    assert stable_repr(value) == repr(value)
    assert stable_repr(frozenset({"b", "a"})) == "frozenset({'a', 'b'})" and stable_repr(frozenset()) == "frozenset()"
    assert rule_state_hash("threshold", value[1], None) == rule_state_hash("threshold", value[1], None)


def test_workers_must_be_a_sane_number(tmp_path):
    same = _same_output()
    config, log = same.example(tmp_path, 2000, 500)
    bad = subprocess.run([sys.executable, "-m", "auditd.cli", "replay", "-c", str(config), "--workers", "-1",
                          str(log)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--workers" in bad.stderr
    config.write_text(config.read_text().replace("pipeline: {batch_records: 500}",
                                                 "pipeline: {batch_records: 500, workers: 1000}"))
    check = subprocess.run([sys.executable, "-m", "auditd.cli", "check", "-c", str(config)], capture_output=True,
                           text=True)
    assert check.returncode == 78 and "workers" in check.stdout + check.stderr


CLUSTER_AND_LOCAL = """- rule: many_reads_cluster
  desc: many customers read across hosts
  kind: threshold
  scope: cluster
  params: {gte: 50, distinct: neo.data.subject_ids, timespan: 1h}
  condition: event.action in (read, search)
  severity: high
  tags: [incubating]
- rule: many_reads_local
  desc: many customers read here
  kind: threshold
  params: {gte: 50, distinct: neo.data.subject_ids, timespan: 1h}
  condition: event.action in (read, search)
  severity: high
  tags: [incubating]
"""


def _cluster_replay_setup(tmp_path: Path) -> Path:
    import json

    from auditd.enrich.pseudonym import create_key_file

    create_key_file(tmp_path / "k.key")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "c.yaml").write_text(CLUSTER_AND_LOCAL)
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\nsources:\n  - {name: crm, paths: [access.log], format: neo-crm}\n"
                      "pseudonym: {key_file: k.key}\nrules: {include_shipped: false, paths: [rules]}\n"
                      "ops: {metrics: {enabled: false}}\npipeline: {batch_records: 64}\n"
                      "elastic:\n  hosts: ['http://127.0.0.1:9']\n  events_data_stream: logs-neo_auditd.access-default\n")
    with open(tmp_path / "access.log", "w") as f:
        for n in range(400):
            f.write(json.dumps({
                "ts": f"2026-11-02T10:{n // 60 % 60:02d}:{n % 60:02d}.000+08:00", "app": "crm", "host": f"h{n % 5}",
                "req": f"r-{n:08d}", "emp": {"id": "E10001", "name": "x"}, "ip": "10.20.1.5", "op": "customer.view",
                "res": {"type": "customer", "id": f"C{n:08d}", "store": "S011"}, "subjects": [f"C{n:08d}"],
                "count": 1, "fields": ["name"], "masked": True, "result": "ok"}) + "\n")
    return config


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_replay_evaluates_cluster_rules_with_any_number_of_workers(tmp_path, workers):
    """The workers evaluate the scopes the writer does: a replay's cluster rules too
    (with two workers they were silently left out before)."""
    import json

    config = _cluster_replay_setup(tmp_path)
    done = subprocess.run([sys.executable, "-m", "auditd.cli", "replay", "-c", str(config), "--no-ship",
                           "--workers", str(workers), "--json", str(tmp_path / "access.log")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["alerts_by_rule"] == {"many_reads_cluster": 1, "many_reads_local": 1}
    assert summary["cluster_rules"]["rules"] == {"many_reads_cluster": 1}


@pytest.mark.slow
def test_a_worker_that_loaded_other_rules_is_refused(tmp_path):
    """A rule file that changes while the workers start would shift the rules' order
    under the writer: the worker's first answer names its rules, and a mismatch stops
    the replay with the reason instead of misattributing alerts."""
    from auditd.runtime import load_runtime
    from auditd.workers import WorkerMismatch, WorkerPool

    config = _cluster_replay_setup(tmp_path)
    runtime = load_runtime(config)
    (tmp_path / "rules" / "c.yaml").write_text(CLUSTER_AND_LOCAL.replace("many_reads_local", "renamed_local"))
    pool = WorkerPool(config, 2, ruleset=runtime.ruleset)
    pool.start()
    try:
        with pytest.raises(WorkerMismatch, match="loaded other rules"):
            pool.wait_ready()
    finally:
        pool.close()


@pytest.mark.slow
def test_a_batch_cut_between_idle_workers_leaves_the_same_store_as_one_process(tmp_path):
    """The daemon cuts a live batch between its idle workers (at whole chunks): the
    parts, joined, are the whole batch's chunks, so the store is one process's."""
    from auditd.pipeline import Pipeline
    from auditd.runtime import load_runtime
    from auditd.opening import open_store
    from auditd.sources.tail import ReplaySource
    from auditd.workers import WorkerPool, fingerprint

    same = _same_output()
    config, log = same.example(tmp_path, 4000, 1100)  # batches of 1100 records: parts of 512, 512 and 76

    def run(state: Path, pool: WorkerPool | None) -> None:
        runtime = load_runtime(config)
        store, quarantine = open_store(runtime, state)
        try:
            pipeline = Pipeline(runtime, store, quarantine)
            reader = ReplaySource("crm", [log], runtime.framers["crm"](), store.load_checkpoints("crm"))
            for batch in reader.batches(runtime.settings.pipeline.batch_records):
                if pool is None:
                    pipeline.handle(batch)
                    continue
                pool.submit(batch)
                batch, prepared = pool.take()
                assert prepared is not None and len(prepared.chunk_counts) == -(-len(batch.records) // 256)
                pipeline.handle(batch, prepared)
        finally:
            store.close()

    run(tmp_path / "serial", None)
    runtime = load_runtime(config)
    pool = WorkerPool(config, 3, ruleset=runtime.ruleset, expected=fingerprint(runtime), split=True)
    pool.start()
    pool.wait_ready()
    try:
        run(tmp_path / "parts", pool)
    finally:
        pool.close()
    assert pool.prepared > 0 and pool.done_here == 0
    assert same.store_digest(tmp_path / "parts" / "neo-auditd.db") == \
        same.store_digest(tmp_path / "serial" / "neo-auditd.db")


@pytest.mark.slow
def test_a_reload_does_not_wait_for_the_workers_and_they_take_batches_again_once_they_agree(tmp_path, caplog):
    """The writer asks the workers to load again and goes on at once: batches read
    meanwhile are done in the main process, then the workers take them again, and the
    log says so once every worker answered."""
    import logging
    import time

    from auditd.runtime import load_runtime
    from auditd.sources.tail import ReplaySource
    from auditd.workers import WorkerPool, fingerprint

    same = _same_output()
    config, log = same.example(tmp_path, 2000, 500)
    runtime = load_runtime(config)
    pool = WorkerPool(config, 2, ruleset=runtime.ruleset, expected=fingerprint(runtime), strict=False)
    pool.start()
    pool.wait_ready()
    batches = list(ReplaySource("crm", [log], runtime.framers["crm"](), {}).batches(500))
    caplog.set_level(logging.INFO, logger="neo_auditd.workers")
    try:
        started = time.monotonic()
        pool.reload("config", fingerprint(runtime))
        asked_in = time.monotonic() - started
        assert pool.trusted() == 0 and not [r for r in caplog.records if r.message == "workers reloaded"]
        pool.submit(batches[0])
        assert pool.take() == (batches[0], None)  # loading: the main process does it
        deadline = time.monotonic() + 60
        while pool.ready() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        waited = time.monotonic() - started
        pool.submit(batches[1])
        batch, prepared = pool.take()
        assert batch is batches[1] and prepared is not None  # agreeing again: a worker prepared it
    finally:
        pool.close()
    reloaded = [r for r in caplog.records if r.message == "workers reloaded"]
    assert len(reloaded) == 1 and reloaded[0].what == "config" and reloaded[0].workers_agreeing == 2
    assert asked_in < waited / 4, (asked_in, waited)  # asked in a fraction of the time they took to load
