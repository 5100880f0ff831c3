"""A real single-node Elasticsearch for the tests, run by scripts/elasticsearch.sh.

No mocks: tests talk to the integration-test distribution of Elasticsearch from
Maven Central, started once per session on 127.0.0.1.

- If NEO_ES_SKIP=1, the tests that need a server skip with that reason (fail under CI).
- If NEO_ES_URL is set, that server is used (after a health check).
- Otherwise the session starts one and stops it at the end; a server that the script
  already runs on the same port (a developer's, or one CI started) is reused and left
  running.
- If Java or the download is missing, the tests that need the server are skipped --
  except under CI, where they fail: real-server tests never skip silently there.

A test can stop the server and start it again on the same data (``ElasticServer.stop``
then ``ElasticServer.start``) to check what survives an outage.

The integ-test distribution holds only the core server, x-pack-core, security and
netty: index templates, data streams created by a template, search and PIT work; the
_data_stream APIs, ILM, data-stream lifecycle, ingest processors, GET / (so the
client's ``info()`` and ``ping()``) and the mapper-extras/x-pack field types
(match_only_text, wildcard, constant_keyword, scaled_float, version, ...) do not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest
from elasticsearch import Elasticsearch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "elasticsearch.sh"
DEFAULT_PORT = 9250  # the script's default too
EXIT_UNAVAILABLE = 3  # the script's exit status when Java or the download is missing
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ElasticServerError(Exception):
    """The test server could not be started, stopped or reached."""


class ElasticUnavailable(ElasticServerError):
    """A prerequisite of the test server (Java, Maven, the download) is missing."""


class ElasticServer:
    """One Elasticsearch server on 127.0.0.1, controlled through scripts/elasticsearch.sh.

    The first ``start()`` gives it an empty data dir; every later ``start()`` reuses the
    data that ``stop()`` kept, as a real restart would.
    """

    def __init__(self, port: int | None = None, *, url: str | None = None,
                 script: Path = SCRIPT, env: dict[str, str] | None = None) -> None:
        base_env = dict(os.environ if env is None else env)
        self.port = port or int(base_env.get("NEO_ES_PORT", DEFAULT_PORT))
        self.url = (url or f"http://127.0.0.1:{self.port}").rstrip("/")
        self._script = script
        self._env = {**base_env, "NEO_ES_PORT": str(self.port)}
        self._has_data = False

    @classmethod
    def at_url(cls, url: str, *, script: Path = SCRIPT) -> ElasticServer:
        """A server somebody else started; the script controls it only if it runs it."""
        server = cls(urlsplit(url).port or DEFAULT_PORT, url=url, script=script)
        server._has_data = True  # never wipe somebody else's data
        return server

    def is_run_by_script(self) -> bool:
        """Whether the script runs a healthy server on this port (and so can stop it)."""
        if urlsplit(self.url).hostname not in LOOPBACK_HOSTS:
            return False
        return self._run_script("status", check=False).returncode == 0

    def start(self, *, fresh_data: bool | None = None) -> None:
        """Start (a no-op if running) and wait until the cluster is at least yellow."""
        if fresh_data is None:
            fresh_data = not self._has_data
        self._run_script("start", *([] if fresh_data else ["--keep-data"]))
        self._has_data = True

    def stop(self) -> None:
        """Stop and wait for the process to exit; the data dir is kept."""
        self._run_script("stop")

    def pid(self) -> int:
        """The server's process id; only for a server the script runs on this machine."""
        result = self._run_script("status", check=False)
        match = re.search(r"running \(pid (\d+)\)", result.stderr)
        if result.returncode != 0 or match is None:
            raise ElasticServerError(f"no server of the script's on port {self.port}: {_last_lines(result.stderr)}")
        return int(match.group(1))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP the server for the block: the kernel still accepts connections, nothing
        answers (a hung node, a long GC pause); SIGCONT again however the block ends."""
        pid = self.pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def wait_healthy(self, timeout_s: float = 120.0) -> bool:
        """Wait until the cluster is yellow or green; False if it is not by then."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._cluster_status(max(1, int(remaining))) in {"yellow", "green"}:
                return True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def client(self, **options: Any) -> Elasticsearch:
        """A client for this server; ``options`` go to ``Elasticsearch(...)``."""
        options.setdefault("request_timeout", 30)
        return Elasticsearch(self.url, **options)

    def _cluster_status(self, wait_s: int) -> str | None:
        health = f"{self.url}/_cluster/health?wait_for_status=yellow&timeout={wait_s}s"
        try:
            with urllib.request.urlopen(health, timeout=wait_s + 5) as response:
                return json.load(response).get("status")
        except urllib.error.HTTPError as error:  # 408: not yellow in time
            return json.load(error).get("status") if error.code == 408 else None
        except (OSError, ValueError):  # refused, reset, timed out, not JSON
            return None

    def _run_script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # The first start may download ~100 MB through Maven; give it time.
        result = subprocess.run(["bash", str(self._script), *args], env=self._env,
                                capture_output=True, text=True, timeout=900)
        if check and result.returncode == EXIT_UNAVAILABLE:
            raise ElasticUnavailable(_last_lines(result.stderr))
        if check and result.returncode != 0:
            raise ElasticServerError(
                f"{self._script.name} {' '.join(args)} exited {result.returncode}:\n"
                f"{_last_lines(result.stderr, 60)}")
        return result


def _last_lines(text: str, count: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a real-server test locally; fail it in CI, where nothing skips silently."""
    if running_in_ci():
        pytest.fail(f"{reason} (CI is set: real-server tests must run here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def elasticsearch_server() -> Iterator[ElasticServer]:
    """The session's Elasticsearch server; stopped at the end if this session started it."""
    if os.environ.get("NEO_ES_SKIP", "").strip() == "1":
        skip_or_fail("NEO_ES_SKIP=1: the tests that need a real Elasticsearch are skipped on purpose")
    external_url = os.environ.get("NEO_ES_URL")
    if external_url:
        server = ElasticServer.at_url(external_url)
        if not server.wait_healthy(timeout_s=60):
            pytest.fail(f"NEO_ES_URL={external_url} is not healthy "
                        "(_cluster/health did not reach yellow in 60 s)", pytrace=False)
        yield server
        return

    server = ElasticServer()
    if server.is_run_by_script():  # started before the session: reuse, leave running
        server = ElasticServer.at_url(server.url)
        yield server
        return
    _start_or_give_up(server)
    try:
        yield server
    finally:
        server.stop()


def _start_or_give_up(server: ElasticServer) -> None:
    # Outside the except clauses, so the report is the reason, not a chained traceback.
    try:
        server.start()
        return
    except ElasticUnavailable as error:
        unavailable, problem = True, str(error)
    except ElasticServerError as error:
        unavailable, problem = False, str(error)
    if unavailable:
        skip_or_fail(f"no Elasticsearch to test against: {problem}")
    pytest.fail(f"the Elasticsearch test server did not start: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def elasticsearch_url(elasticsearch_server: ElasticServer) -> str:
    """URL of a healthy Elasticsearch server for this session."""
    return elasticsearch_server.url


def require_restartable(server: ElasticServer) -> None:
    """For tests that stop and restart the server: skip (fail in CI) if they can't."""
    if not server.is_run_by_script():
        skip_or_fail(f"cannot stop and restart {server.url}: it was not started by "
                     "scripts/elasticsearch.sh on this machine (unset NEO_ES_URL)")
