"""A cluster that hangs must not blind the file sources.

A host that takes connections and never answers (a long collection pause, a network
that drops packets) holds each search for the request timeout. The Elasticsearch
source searches on its own thread, so the file sources' lines are still read, judged
and alerted on meanwhile, and a stop does not wait for the search. The hung host is
a listening socket that never answers: a real Elasticsearch cannot be made to hang on
demand without hanging every other test that shares it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from auditd.elastic.settings import ElasticSourceSettings
from auditd.elastic.source import STOP_WAIT_S, ElasticEventSource
from test_service_daemon import alerts_by_rule, line, ready, wait_for, write_setup


@pytest.fixture
def hung_host():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.listen(16)
        server.settimeout(20)
        yield server


def test_polls_return_at_once_while_a_search_hangs_and_stop_does_not_wait(hung_host) -> None:
    client = Elasticsearch(f"http://127.0.0.1:{hung_host.getsockname()[1]}", request_timeout=30)
    reader = ElasticEventSource(ElasticSourceSettings(name="fleet"), client, {})
    reader.start()
    conn, _ = hung_host.accept()  # the thread's search is in flight, and hangs
    try:
        started = time.monotonic()
        for _ in range(100):
            assert reader.poll() == []
        assert time.monotonic() - started < 0.5
        assert reader.stats.searches == 0 and reader.stats.errors == 0
    finally:
        started = time.monotonic()
        reader.stop()
        stopped_in = time.monotonic() - started
        conn.close()
        client.close()
    assert stopped_in < STOP_WAIT_S + 0.5


@pytest.mark.slow
def test_the_daemon_alerts_on_file_lines_while_its_cluster_source_hangs(tmp_path: Path, hung_host) -> None:
    port = write_setup(tmp_path, "order_read", more_config=(
        f"elastic:\n  hosts: ['http://127.0.0.1:{hung_host.getsockname()[1]}']\n  request_timeout_s: 60\n"
        "  install_templates: false\n  ship: {enabled: false}\n"
        "  sources:\n    - {name: fleet, index: logs-x, poll_interval_s: 0.1}\n"))
    out = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(tmp_path / "config.yaml")],
                            stdout=out, stderr=subprocess.STDOUT)
    ctx = {"dir": tmp_path, "port": port}
    held = []
    try:
        wait_for(lambda: ready(ctx) or proc.poll() is not None, "the daemon to be up")
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-2000:]
        held.append(hung_host.accept()[0])  # the cluster source's first search: it hangs for a minute
        with open(tmp_path / "logs" / "access.log", "a") as fh:
            fh.write(line(1))
        started = time.monotonic()
        wait_for(lambda: alerts_by_rule(ctx).get("order_read") == 1, "the file line's alert", timeout=20)
        assert time.monotonic() - started < 10
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        for conn in held:
            conn.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()[-2000:]
