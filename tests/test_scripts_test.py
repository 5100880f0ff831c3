"""The test command as the README explains it: the fast subset needs no Elasticsearch,
and NEO_ES_SKIP=1 skips the real-server tests with the reason (fails them under CI)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"CI", "NEO_ES_URL", "NEO_ES_SKIP", "NEO_ES_PORT"}}
    # a port nothing listens on: a server started by mistake would not be a shared one
    base["NEO_ES_PORT"] = str(_free_port())
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          capture_output=True, text=True, cwd=REPO, env={**base, **env}, timeout=600)


def test_neo_es_skip_skips_the_server_tests_with_the_reason():
    done = _pytest("-q", "-rs", "tests/test_elastic_server.py", NEO_ES_SKIP="1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "NEO_ES_SKIP=1" in done.stdout and " skipped" in done.stdout
    assert " passed" not in done.stdout  # nothing ran against a server


def test_neo_es_skip_fails_them_under_ci():
    done = _pytest("-q", "tests/test_elastic_server.py", NEO_ES_SKIP="1", CI="true")
    assert done.returncode != 0
    assert "NEO_ES_SKIP=1" in done.stdout


def test_the_fast_subset_selects_no_test_that_needs_the_server():
    """Collection refuses an unmarked server test (conftest), so the subset's items are
    exactly those without the marker; and there are such items on both sides."""
    fast = _pytest("--collect-only", "-q", "-m", "not elasticsearch and not slow", "tests")
    assert fast.returncode == 0, fast.stdout[-2000:] + fast.stderr[-2000:]
    selected = [line for line in fast.stdout.splitlines() if "::" in line]
    assert len(selected) > 500
    assert not any("test_elastic_server.py" in line or "test_elastic_sink.py" in line for line in selected)


def test_a_server_test_without_the_marker_is_refused(tmp_path):
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_unmarked.py").write_text("def test_uses_the_server(elasticsearch_url):\n    pass\n")
    done = _pytest("--collect-only", "-q", "--rootdir", str(tmp_path), str(tmp_path),
                   PYTHONPATH=str(REPO / "tests"))
    assert done.returncode != 0
    assert "lack @pytest.mark.elasticsearch" in done.stdout + done.stderr and "test_uses_the_server" in (
        done.stdout + done.stderr)
