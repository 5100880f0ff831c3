"""CloudTrail files through the real runtime, tailer, pipeline, store and metrics: every
record of a delivered .json.gz once, an API nobody mapped stored as `other` and
counted by name, a truncated file quarantined with its reason."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from prometheus_client import generate_latest

from auditd.enrich.pseudonym import create_key_file
from auditd.ops.metrics import Metrics
from auditd.pipeline import Pipeline
from auditd.runtime import load_runtime
from auditd.sources.tail import FileTailer
from auditd.store.quarantine_file import QuarantineFile
from auditd.store.sqlite import Store


def record(name: str, n: int) -> dict:
    return {"eventVersion": "1.08", "eventTime": f"2026-11-02T01:00:{n:02d}Z", "eventSource": "ssm.amazonaws.com",
            "eventName": name, "awsRegion": "us-east-1", "sourceIPAddress": "1.2.3.4", "eventID": f"id-{n}",
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::1:user/alice", "accessKeyId": "AKIAEXAMPLE"}}


def aged(path: Path) -> None:
    st = os.stat(path)
    os.utime(path, (st.st_atime, st.st_mtime - 3600))  # delivered an hour ago: complete


def test_delivered_cloudtrail_files_through_the_pipeline(tmp_path):
    create_key_file(tmp_path / "pseudonym.key")
    folder = tmp_path / "ct" / "2026" / "11" / "02"
    folder.mkdir(parents=True)
    names = ["GetObject", "SendCommand", "SendCommand", "DescribeInstances", "StartSession"]
    delivered = folder / "1_CloudTrail_us-east-1_20261102T0100Z_x.json.gz"
    delivered.write_bytes(gzip.compress(json.dumps({"Records": [record(n, i) for i, n in enumerate(names)]}).encode()))
    cut = gzip.compress(json.dumps({"Records": [record("GetObject", 9)] * 200}).encode())
    (folder / "cut.json.gz").write_bytes(cut[: len(cut) // 2])
    for path in folder.iterdir():
        aged(path)
    (tmp_path / "config.yaml").write_text(
        "state_dir: state\nsources:\n  - name: aws\n    paths: [ct/**/*.json.gz]\n    format: cloudtrail-files\n"
        "    use_inotify: false\npseudonym: {key_file: pseudonym.key}\nrules: {include_shipped: false}\n")
    runtime = load_runtime(tmp_path / "config.yaml")
    store = Store(runtime.settings.store_path)
    store.open()
    metrics = Metrics()
    pipeline = Pipeline(runtime, store, QuarantineFile(runtime.settings.quarantine_path, store), metrics)
    (source,) = runtime.settings.sources
    for attempt in range(2):  # a restart reads nothing again
        tailer = FileTailer(source, runtime.framers["aws"](), store.load_checkpoints("aws"), first_start=attempt == 0)
        for _ in range(3):
            for batch in tailer.poll(1000):
                pipeline.handle(batch)
        tailer.stop()

    events = list(store.iter_events())
    assert sorted(e.labels["event_name"] for e in events) == sorted(names)
    assert len({e.event_id for e in events}) == len(names)
    assert {e.labels["event_name"]: e.action for e in events} == {
        "GetObject": "download", "DescribeInstances": "read", "SendCommand": "other", "StartSession": "update"}
    assert all(e.labels["access_key_id"] == "AKIAEXAMPLE" for e in events)
    (row,) = store.quarantine_rows()
    assert row["path"].endswith("cut.json.gz") and row["reason"].startswith("truncated gzip: expected the end")
    page = generate_latest(metrics.registry).decode()
    assert 'neo_auditd_unmapped_actions_total{name="SendCommand",source="aws"} 2.0' in page
    assert pipeline.totals.unmapped_actions == {"SendCommand": 2}
    store.close()
