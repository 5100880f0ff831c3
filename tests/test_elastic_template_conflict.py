"""Two configs whose events data streams share type and dataset install two templates over
the same indices at the same priority; the real server refuses the second. `check` and
`replay` must say so with the config's file, line and key, and the running shipper
must show it rather than retry in silence (or hold a replay for an hour)."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from auditd.elastic import templates
from auditd.elastic.client import build_client
from auditd.elastic.settings import ElasticSettings, ShipSettings
from auditd.ops.shipping import SHIPPER_KEY, ShipperRecord
from auditd.elastic.sink import EventShipper
from auditd.elastic.testing import fill_store, synthetic_events, unique_name
from auditd.enrich.pseudonym import create_key_file

pytestmark = pytest.mark.elasticsearch


def neo(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def write_config(folder: Path, url: str, stream: str, tag: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    create_key_file(folder / "pseudonym.key")
    config = folder / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n"
        "pseudonym:\n  key_file: pseudonym.key\n"
        "rules:\n  include_shipped: false\n"
        "elastic:\n"
        f"  hosts: ['{url}']\n"
        f"  events_data_stream: {stream}\n"  # line 12
        f"  alerts_index: neo-{tag}-alerts\n"
        f"  incidents_index: neo-{tag}-incidents\n"
        f"  leases_index: neo-{tag}-leases\n"
        "  number_of_replicas: 0\n"
    )
    return config


@pytest.fixture
def two_configs(tmp_path: Path, elasticsearch_url: str):
    """A template someone else installed covers config B's data stream at B's priority
    (config A, B's fleet in another namespace, installs the same template as B)."""
    dataset = unique_name("conflict")
    a = write_config(tmp_path / "a", elasticsearch_url, f"logs-neo_auditd.{dataset}-hosta", unique_name("a"))
    b = write_config(tmp_path / "b", elasticsearch_url, f"logs-neo_auditd.{dataset}-hostb", unique_name("b"))
    installed = neo("check", "-c", a)  # nothing installed yet: nothing to conflict with
    assert installed.returncode == 0, installed.stderr
    assert neo("check", "-c", b).returncode == 0  # another namespace, another fleet: the same template
    settings_a = ElasticSettings(hosts=[elasticsearch_url], events_data_stream=f"logs-neo_auditd.{dataset}-hosta",
                                 number_of_replicas=0)
    es = build_client(settings_a)
    es.options(ignore_status=404).indices.delete_index_template(
        name=f"{templates.TEMPLATE_PREFIX}-events-logs-neo_auditd.{dataset}")  # check installs nothing; a run would
    es.indices.put_index_template(name=f"someone-else-{dataset}", index_patterns=[f"logs-neo_auditd.{dataset}-*"],
                                  priority=200, data_stream={}, template={"settings": {"number_of_replicas": 0}})
    yield a, b, dataset
    es.indices.delete_index_template(name=f"someone-else-{dataset}")


def test_check_refuses_a_template_conflict_with_file_line_and_key(two_configs) -> None:
    a, b, dataset = two_configs
    result = neo("check", "-c", b)
    assert result.returncode == 78, (result.stdout, result.stderr)
    error = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    assert error.startswith(f"error: {b}:12:23: elastic.events_data_stream: Elasticsearch refuses the index template "
                            f"neo-auditd-events-logs-neo_auditd.{dataset}: ")
    assert f"logs-neo_auditd.{dataset}-*" in error and "same priority" in error and "template_priority" in error

    assert neo("check", "-c", b, "--offline").returncode == 0  # the files alone are fine


def test_replay_refuses_instead_of_hanging(two_configs, tmp_path: Path) -> None:
    _, b, dataset = two_configs
    log = tmp_path / "access.log"
    log.write_text('{"ts": "2026-11-02T10:00:00.000+08:00", "app": "crm", "emp": {"id": "E1"}, "op": "order.view"}\n')
    started = time.monotonic()
    result = neo("replay", "-c", b, log, timeout=600)  # main waited for the drain: an hour
    assert result.returncode == 78, (result.stdout, result.stderr)
    assert time.monotonic() - started < 120
    assert "elastic.events_data_stream: Elasticsearch refuses the index template" in result.stderr
    assert not (b.parent / "state" / "neo-auditd.db").exists()  # nothing replayed


def test_the_running_shipper_shows_the_refusal_and_does_not_hold_a_drain(two_configs, tmp_path: Path,
                                                                          elasticsearch_url: str) -> None:
    _, _, dataset = two_configs
    settings = ElasticSettings(
        hosts=[elasticsearch_url], events_data_stream=f"logs-neo_auditd.{dataset}-hostc", number_of_replicas=0,
        alerts_index=unique_name("neo-c-alerts"), incidents_index=unique_name("neo-c-incidents"),
        leases_index=unique_name("neo-c-leases"),
        ship=ShipSettings(retry_backoff_initial_s=0.2, retry_backoff_max_s=1.0))
    db = tmp_path / "neo-auditd.db"
    fill_store(db, synthetic_events(100)).close()
    shipper = EventShipper(build_client(settings), db, settings, agent="host-c")
    shipper.start()
    deadline = time.monotonic() + 60
    while shipper.stats().state != "refused" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shipper.stats().state == "refused"

    started = time.monotonic()
    drained = shipper.stop(drain_timeout=3600)  # what replay asks for
    assert not drained and time.monotonic() - started < 30
    with sqlite3.connect(db) as conn:
        record = msgspec.json.decode(
            conn.execute("SELECT value FROM meta WHERE key = ?", (SHIPPER_KEY,)).fetchone()[0], type=ShipperRecord)
    assert record.state == "stopped"
    assert f"someone-else-{dataset}" in record.last_error  # names the other template
    assert shipper.lag() == 100  # nothing lost: shipped once the conflict is resolved
