"""The `assigned` scope's lookups: CSV, SQLite, a real HTTP server on 127.0.0.1, the cache.

One contract runs against every implementation (APScheduler's way with its stores).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from auditd.config.located import Doc, Problems
from auditd.config.typed import MISSING, convert
from auditd.entitlement import (
    AssignmentLookupError,
    CachedAssignments,
    CsvAssignments,
    HttpAssignments,
    MappingAssignments,
    SqliteAssignments,
    build_assignments,
)
from auditd.entitlement.settings import AssignmentSettings, EntitlementSettings

TABLE = {"O1001": "E10047", "T-2026-000001": "E10039", "C00012345": "E10039", "O/with space": "E10001"}


class Server(BaseHTTPRequestHandler):
    """GET /assignee/<id>: 200 {"assignee": …}, 404 unknown; 'boom' → 500; 'slow' sleeps."""

    requests: list[str] = []

    def do_GET(self):
        from urllib.parse import unquote

        key = unquote(self.path.rsplit("/", 1)[-1])
        Server.requests.append(key)
        if key == "slow" or key.startswith("slow-"):
            time.sleep(1.0)
        if key == "boom":
            self._send(500, {"error": "database down"})
        elif key == "garbage":
            self._send(200, {"owner": "E1"})
        elif key == "unassigned":
            self._send(200, {"assignee": None})
        elif key in TABLE:
            self._send(200, {"assignee": TABLE[key]})
        else:
            self._send(404, {"error": "no such id"})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except BrokenPipeError:  # the 'slow' request's client has given up, as intended
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/assignee/{{id}}"
    server.shutdown()
    server.server_close()


def csv_lookup(tmp_path: Path) -> CsvAssignments:
    path = tmp_path / "assignments.csv"
    rows = ["order_id,employee,note"] + [f'"{k}",{v},x' for k, v in TABLE.items()] + ["O9,,unassigned"]
    path.write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")  # with the BOM Excel writes
    return CsvAssignments(path, id_column="order_id", assignee_column="employee")


def sqlite_lookup(tmp_path: Path) -> SqliteAssignments:
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE work_items (item TEXT PRIMARY KEY, owner TEXT)")
        conn.executemany("INSERT INTO work_items VALUES (?, ?)", [*TABLE.items(), ("O9", None)])
    return SqliteAssignments(path, table="work_items", id_column="item", assignee_column="owner")


@pytest.fixture(params=["mapping", "csv", "sqlite", "http"])
def lookup(request, tmp_path):
    if request.param == "mapping":
        return MappingAssignments(TABLE)
    if request.param == "csv":
        return csv_lookup(tmp_path)
    if request.param == "sqlite":
        return sqlite_lookup(tmp_path)
    return HttpAssignments(request.getfixturevalue("http_url"), timeout_s=2.0)


def test_contract_every_lookup_answers_the_same(lookup):
    for key, who in TABLE.items():
        assert lookup.assignee(key) == who
    assert lookup.assignee("O404") is None
    assert lookup.assignee("O9") is None  # a row with no assignee: assigned to nobody
    assert lookup.assignee("o1001") is None  # ids are exact


def test_constructors_touch_nothing(tmp_path):
    CsvAssignments(tmp_path / "missing.csv")
    SqliteAssignments(tmp_path / "missing.db")
    HttpAssignments("http://127.0.0.1:9/assignee/{id}")
    assert list(tmp_path.iterdir()) == []


def test_csv_is_reread_when_it_changes_and_a_bad_version_keeps_the_old(tmp_path):
    now = [0.0]
    path = tmp_path / "assignments.csv"
    path.write_text("id,assignee\nO1,E1\n", encoding="utf-8")
    lookup = CsvAssignments(path, reload_check_s=30, clock=lambda: now[0])
    assert lookup.assignee("O1") == "E1"
    path.write_text("id,assignee\nO1,E2\nO2,E3\n", encoding="utf-8")
    assert lookup.assignee("O1") == "E1"  # not checked again before 30 s
    now[0] = 31
    assert lookup.assignee("O1") == "E2" and lookup.assignee("O2") == "E3"
    path.write_text("wrong,header\nO1,E9\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))
    now[0] = 62
    assert lookup.assignee("O1") == "E2"  # the last good version


def test_csv_rewritten_in_place_with_the_same_size_and_mtime_is_reread(tmp_path):
    now = [0.0]
    path = tmp_path / "assignments.csv"
    path.write_text("id,assignee\nO1,E1\n", encoding="utf-8")
    lookup = CsvAssignments(path, reload_check_s=30, clock=lambda: now[0])
    assert lookup.assignee("O1") == "E1"
    before = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(len("id,assignee\nO1,E"))
        fh.write(b"7")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    now[0] = 31
    assert lookup.assignee("O1") == "E7"


def test_csv_without_a_good_version_raises(tmp_path):
    path = tmp_path / "assignments.csv"
    with pytest.raises(AssignmentLookupError, match="cannot read it"):
        CsvAssignments(path).assignee("O1")
    path.write_text("id,owner\nO1,E1\n", encoding="utf-8")
    with pytest.raises(AssignmentLookupError, match="no column 'assignee'"):
        CsvAssignments(path).assignee("O1")


def test_sqlite_errors_raise_and_the_file_is_opened_read_only(tmp_path):
    with pytest.raises(AssignmentLookupError, match="assignments database"):
        SqliteAssignments(tmp_path / "missing.db").assignee("O1")
    assert not (tmp_path / "missing.db").exists()  # read-only: never created
    lookup = sqlite_lookup(tmp_path)
    assert lookup.assignee("O1001") == "E10047"
    with pytest.raises(AssignmentLookupError):
        SqliteAssignments(tmp_path / "crm.db", table="nope").assignee("O1")


def test_http_errors_raise(http_url):
    lookup = HttpAssignments(http_url, timeout_s=0.3)
    with pytest.raises(AssignmentLookupError, match="HTTP 500"):
        lookup.assignee("boom")
    with pytest.raises(AssignmentLookupError, match="without an 'assignee'"):
        lookup.assignee("garbage")
    with pytest.raises(AssignmentLookupError, match="unreachable"):
        lookup.assignee("slow")
    assert lookup.assignee("unassigned") is None
    with pytest.raises(AssignmentLookupError, match="unreachable"):
        HttpAssignments("http://127.0.0.1:9/assignee/{id}", timeout_s=0.5).assignee("O1")


class TricklingServer(BaseHTTPRequestHandler):
    """Answers 200 and then one byte of body every 0.2 s: each read is quick, the answer never whole."""

    def do_GET(self):
        try:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(500):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:  # the client gave up, as intended
            pass

    def log_message(self, *args) -> None:
        pass


def test_a_service_that_trickles_its_answer_fails_within_the_timeout_not_per_read():
    """The lookup runs on the pipeline's thread: a socket timeout counts per read, so
    without a deadline on the whole answer this service would hold the pipeline ~100 s."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), TricklingServer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        lookup = HttpAssignments(f"http://127.0.0.1:{server.server_address[1]}/assignee/{{id}}", timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(AssignmentLookupError, match="unreachable"):
            lookup.assignee("O1")
        assert time.monotonic() - started < 3
    finally:
        server.shutdown()
        server.server_close()


def test_the_cache_in_front_of_a_real_server(http_url):
    now = [0.0]
    lookup = CachedAssignments(HttpAssignments(http_url, timeout_s=2.0), size=2, ttl_s=60, error_ttl_s=5,
                               clock=lambda: now[0])
    Server.requests.clear()
    assert [lookup.assignee("O1001") for _ in range(5)] == ["E10047"] * 5
    assert lookup.assignee("O404") is None and lookup.assignee("O404") is None  # a miss is cached too
    assert Server.requests == ["O1001", "O404"]
    now[0] = 61
    assert lookup.assignee("O1001") == "E10047"  # expired: asked again
    lookup.assignee("C00012345")
    lookup.assignee("T-2026-000001")  # a third key: the least recently used goes (size 2)
    assert len(lookup) == 2
    for _ in range(3):
        with pytest.raises(AssignmentLookupError):
            lookup.assignee("boom")
    assert Server.requests.count("boom") == 1  # an outage costs one call per error_ttl_s
    now[0] = 67
    with pytest.raises(AssignmentLookupError):
        lookup.assignee("boom")
    assert Server.requests.count("boom") == 2
    assert (lookup.hits, lookup.errors) == (7, 2)


def test_a_hung_service_is_asked_three_times_not_once_per_new_id(http_url, caplog):
    """The lookup runs on the pipeline's thread: against a service that hangs, each new id
    waited the whole timeout (15 of them in one chunk outlasted systemd's watchdog). Now
    three failures in a row take it for down; until error_ttl_s has passed, ids fail at
    once; then one id probes it, and the first answer brings it back."""
    caplog.set_level("INFO", logger="neo_auditd.entitlement")
    now = [0.0]
    lookup = CachedAssignments(HttpAssignments(http_url, timeout_s=0.2), ttl_s=60, error_ttl_s=5, trip_after=3,
                               clock=lambda: now[0])
    Server.requests.clear()
    reasons = []
    for n in range(20):
        with pytest.raises(AssignmentLookupError) as failed:
            lookup.assignee(f"slow-{n}")
        reasons.append(str(failed.value))
    assert Server.requests == ["slow-0", "slow-1", "slow-2"] and lookup.down
    assert "unreachable" in reasons[0] and "not asked again for 5 s" in reasons[3]
    assert (lookup.errors, lookup.short_circuited) == (3, 17)
    now[0] = 6.0  # the pause is over: one probe, which hangs too, and it is down again at once
    with pytest.raises(AssignmentLookupError):
        lookup.assignee("slow-20")
    with pytest.raises(AssignmentLookupError, match="not asked again"):
        lookup.assignee("O1001")
    assert Server.requests[-1] == "slow-20"
    now[0] = 12.0  # the service answers again: the probe succeeds and every id is asked as usual
    assert lookup.assignee("O1001") == "E10047" and not lookup.down
    assert lookup.assignee("C00012345") == "E10039" and lookup.assignee("O404") is None
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "neo_auditd.entitlement"]
    assert [level for level, _ in said] == ["WARNING", "INFO"]  # once down (not at every probe), once back


def test_settings_choose_exactly_one_lookup(tmp_path):
    doc = Doc(file=str(tmp_path / "config.yaml"), data=None)
    problems = Problems()
    both = convert(AssignmentSettings, {"csv": {"path": "a.csv"}, "http": {"url": "http://x/{id}"}}, doc, (),
                   problems)
    assert both is not MISSING and "give exactly one of csv, sqlite or http (got csv, http)" in str(problems.items)
    problems = Problems()
    convert(EntitlementSettings, {"assignments": {"http": {"url": "ftp://x"}, "cache": {"size": 0}},
                                  "destinations": {"countries": ["cn"], "networks": ["10.0.0.0/33"]},
                                  "departed": {"grace_working_days": -1, "check_every": 0},
                                  "review": {"period": "0s", "every": 0}}, doc, (), problems)
    text = "\n".join(str(p) for p in problems.items)
    for message in ("assignments.http.url: expected an http:// or https:// URL", "URL needs '{id}'",
                    "assignments.cache.size: must be at least 1", "destinations.countries[0]: expected an ISO",
                    "destinations.networks[0]: bad network", "departed.grace_working_days: must not be negative",
                    # a 0 interval ran the job every second (APScheduler's floor); a 0 period made every grant unused
                    "departed.check_every: must be more than 0", "review.period: must be more than 0",
                    "review.every: must be more than 0"):
        assert message in text
    problems = Problems()
    convert(AssignmentSettings, {"sqlite": {"path": "a.db", "table": "x; DROP TABLE y"}}, doc, (), problems)
    assert "sqlite.table: expected an SQL identifier" in str(problems.items[0])


def test_build_puts_live_lookups_behind_the_cache(tmp_path):
    doc = Doc(file=str(tmp_path / "config.yaml"), data=None)
    problems = Problems()
    sqlite_settings = convert(AssignmentSettings, {"sqlite": {"path": "crm.db"}, "cache": {"size": 10}}, doc, (),
                              problems)
    csv_settings = convert(AssignmentSettings, {"csv": {"path": "a.csv"}}, doc, (), problems)
    assert not problems
    cached = build_assignments(sqlite_settings)
    assert isinstance(cached, CachedAssignments) and isinstance(cached.inner, SqliteAssignments)
    assert cached.size == 10 and cached.inner.path == tmp_path / "crm.db"
    assert isinstance(build_assignments(csv_settings), CsvAssignments)  # in memory already


class KeepAliveServer(Server):
    """The same answers over HTTP/1.1 keep-alive; remembers each client connection."""

    protocol_version = "HTTP/1.1"
    connections: list[tuple[str, int]] = []

    def setup(self):
        super().setup()
        KeepAliveServer.connections.append(self.client_address)


@pytest.fixture
def keepalive_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    KeepAliveServer.connections.clear()
    yield server
    server.shutdown()
    server.server_close()


def test_http_lookups_reuse_one_connection(keepalive_server):
    """A cache miss costs a request, not a new connection each time (issue 19)."""
    url = f"http://127.0.0.1:{keepalive_server.server_address[1]}/assignee/{{id}}"
    lookup = HttpAssignments(url, timeout_s=2.0)
    for _ in range(3):
        for key, who in TABLE.items():
            assert lookup.assignee(key) == who
        assert lookup.assignee("O404") is None  # a 404 leaves the connection usable too
    assert len(KeepAliveServer.connections) == 1
    with pytest.raises(AssignmentLookupError, match="HTTP 500"):
        lookup.assignee("boom")
    assert lookup.assignee("O1001") == "E10047"
    lookup.close()


def test_http_lookup_survives_the_server_closing_an_idle_connection(keepalive_server):
    url = f"http://127.0.0.1:{keepalive_server.server_address[1]}/assignee/{{id}}"
    lookup = HttpAssignments(url, timeout_s=2.0)
    assert lookup.assignee("O1001") == "E10047"
    for conn in lookup._idle:  # what a server's idle timeout does: the pooled socket is closed under us
        conn.sock.shutdown(2)
    assert lookup.assignee("C00012345") == "E10039"
    assert len(KeepAliveServer.connections) == 2  # one replacement, and the answer all the same


def test_http_lookup_after_a_timeout_uses_a_fresh_connection(keepalive_server):
    url = f"http://127.0.0.1:{keepalive_server.server_address[1]}/assignee/{{id}}"
    lookup = HttpAssignments(url, timeout_s=0.3)
    with pytest.raises(AssignmentLookupError, match="unreachable"):
        lookup.assignee("slow")
    time.sleep(1.0)  # the slow answer arrives late on the abandoned connection: it must not be read as this one's
    assert lookup.assignee("O1001") == "E10047"
    assert lookup.assignee("unassigned") is None


def test_a_fifo_in_place_of_a_file_is_an_error_at_once_never_a_wait(tmp_path):
    """Swapped in after `check` (or by someone who can write there): the lookup and the
    departed sweep's feed refuse it without opening it for a writer that never comes."""
    from auditd.entitlement import load_account_feed
    from auditd.entitlement.accounts import AccountFeedError

    fifo = tmp_path / "swapped.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    for lookup in (CsvAssignments(fifo), SqliteAssignments(fifo)):
        with pytest.raises(AssignmentLookupError, match="not a regular file"):
            lookup.assignee("O1001")
    with pytest.raises(AccountFeedError, match="not a regular file"):
        load_account_feed(fifo)
    assert time.monotonic() - started < 5
