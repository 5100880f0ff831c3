"""Who an order, service ticket or customer is assigned to: the `assigned` scope's lookup.

A grant with ``scope: assigned`` lets an employee see a customer's data only through an
order or ticket assigned to them. The assignments live in the business systems, so the
lookup is pluggable: a CSV export (re-read when it changes), an SQLite table (queried
live, read-only), or an HTTP endpoint. Ids of orders, tickets and customers share one
namespace in the lookup (they are prefixed differently in practice: ``O…``, ``T-…``,
``C…``); the checker tries the record's id, then the ticket the access gave.

Every lookup answers `assignee(id)` with an employee id or None (assigned to nobody,
or unknown), and raises AssignmentLookupError when it cannot tell; the checker then
leaves the access unjudged rather than guessing either way. Live lookups are wrapped
in `CachedAssignments`, a bounded LRU with a TTL, so that an order viewed ten times
costs one query, memory stays bounded over months, and an outage costs one failed
call per `error_ttl_s` rather than one per event.

Constructors do no I/O: files and connections are opened on first use.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import logging
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from auditd.config.located import read_regular_file, regular_file_stat
from auditd.entitlement.settings import AssignmentSettings
from auditd.errors import NeoError
from auditd.httpcall import answer_within

log = logging.getLogger("neo_auditd.entitlement")


class AssignmentLookupError(NeoError):
    """The lookup could not say who the id is assigned to (file unreadable, server down)."""


class AssignmentLookup(Protocol):
    def assignee(self, key: str) -> str | None: ...


class MappingAssignments:
    """An in-memory table: tests, and the CSV lookup's current contents."""

    def __init__(self, table: Mapping[str, str]):
        self._table = dict(table)

    def assignee(self, key: str) -> str | None:
        return self._table.get(key)

    def __len__(self) -> int:
        return len(self._table)


MAX_CSV_BYTES = 1 << 30  # an export of millions of orders; past that, a database (sqlite:) is the tool


class CsvAssignments:
    """A CSV export with a header naming the id and assignee columns, re-read when its
    size, mtime or inode change (checked at most every `reload_check_s`). A bad new
    version keeps the previous contents and is logged; with no good version at all,
    every lookup raises."""

    def __init__(self, path: Path | str, *, id_column: str = "id", assignee_column: str = "assignee",
                 reload_check_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.id_column, self.assignee_column = id_column, assignee_column
        self.reload_check_s = reload_check_s
        self._clock = clock
        self._next_check = float("-inf")
        self._stamp: tuple[int, int, int] | None = None
        self._table: dict[str, str] | None = None
        self._error = "not read yet"
        self._lock = threading.Lock()

    def assignee(self, key: str) -> str | None:
        if self._clock() >= self._next_check:
            self._refresh()
        table = self._table
        if table is None:
            raise AssignmentLookupError(f"assignments file {self.path}: {self._error}")
        return table.get(key)

    def _refresh(self) -> None:
        with self._lock:
            self._next_check = self._clock() + self.reload_check_s
            try:
                st = self.path.stat()
            except OSError as exc:
                self._failed(f"cannot read it: {exc.strerror}")
                return
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)  # ctime: a same-size rewrite with its mtime set back
            if stamp == self._stamp:
                return
            try:
                table = self._read()
            except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
                self._failed(str(exc))
                return
            self._stamp, self._table = stamp, table
            log.info("assignments loaded", extra={"file.path": str(self.path), "assignments": len(table)})

    def _read(self) -> dict[str, str]:
        try:  # a regular file only, opened without blocking: a FIFO named here cannot stop the pipeline
            data, _ = read_regular_file(self.path, MAX_CSV_BYTES)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot read it: {exc.strerror}") from None
        with io.StringIO(data.decode("utf-8-sig"), newline="") as f:  # Excel writes a BOM
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            for column in (self.id_column, self.assignee_column):
                if column not in header:
                    raise ValueError(f"no column {column!r} (columns: {', '.join(header) or 'none'})")
            table: dict[str, str] = {}
            for row in reader:
                key, who = (row.get(self.id_column) or "").strip(), (row.get(self.assignee_column) or "").strip()
                if key and who:
                    table[key] = who
            return table

    def _failed(self, why: str) -> None:
        self._error = why
        if self._table is not None:
            log.error("assignments file unreadable; keeping the previous contents",
                      extra={"file.path": str(self.path), "error": why})


class SqliteAssignments:
    """A table in an SQLite file, opened read-only on first use; one query per id (give
    the id column an index or make it the primary key)."""

    def __init__(self, path: Path | str, *, table: str = "assignments", id_column: str = "id",
                 assignee_column: str = "assignee"):
        self.path = Path(path)
        # identifiers are checked by the settings; values always go through parameters
        self._sql = f'SELECT "{assignee_column}" FROM "{table}" WHERE "{id_column}" = ? LIMIT 1'
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def assignee(self, key: str) -> str | None:
        with self._lock:
            try:
                if self._conn is None:
                    regular_file_stat(self.path)  # a FIFO or device named here would block or mislead SQLite
                    uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
                    self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5)
                row = self._conn.execute(self._sql, (key,)).fetchone()
            except (sqlite3.Error, OSError) as exc:
                self.close_locked()
                why = f"cannot open it: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
                raise AssignmentLookupError(f"assignments database {self.path}: {why}") from None
        return None if row is None or row[0] is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self.close_locked()

    def close_locked(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class HttpAssignments:
    """GET url (with the id in place of '{id}'): 200 with {"assignee": "E10023"} (or
    null), 404 for an id the system does not know; anything else is an error.

    Connections are kept alive and reused (a small pool, one connection per caller at
    a time): a cache miss on the pipeline's thread then costs one request, not a TCP
    (and TLS) handshake as well. A pooled connection the server has closed meanwhile is
    replaced and the request sent once more; a connection that timed out or broke is
    never reused. Redirects are not followed (an answer other than 2xx or 404 is an
    error)."""

    MAX_IDLE = 4  # connections kept open between requests
    MAX_BODY = 65536

    def __init__(self, url: str, *, timeout_s: float = 2.0, headers: Mapping[str, str] | None = None):
        self.url = url
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def assignee(self, key: str) -> str | None:
        target = self._target.replace("{id}", urllib.parse.quote(key, safe=""))
        status, body = self._get(target)
        if status == 404:
            return None
        if not 200 <= status < 300:
            raise AssignmentLookupError(f"assignment service answered HTTP {status}")
        try:
            answer = json.loads(body)
            who = answer["assignee"]
        except (ValueError, KeyError, TypeError):
            raise AssignmentLookupError("assignment service answered without an 'assignee'") from None
        if who is not None and not isinstance(who, str):
            raise AssignmentLookupError(f"assignment service answered assignee {who!r}, not text")
        return who or None

    def _get(self, target: str) -> tuple[int, bytes]:
        headers = {"Accept": "application/json", **self.headers}
        while True:
            conn, reused = self._take()
            try:
                conn.request("GET", target, headers=headers)
                _quick_ack(conn)
                response = conn.getresponse()
                body = response.read(self.MAX_BODY)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused:
                    continue  # the server closed an idle connection: once more on a new one
                raise AssignmentLookupError(f"assignment service unreachable: {exc}") from None
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                raise AssignmentLookupError(f"assignment service unreachable: {exc}") from None
            if response.isclosed():  # the whole answer was read: the connection can serve again
                self._give_back(conn)
            else:
                conn.close()
            return response.status, body

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout_s)
        # the whole answer within timeout_s: a service trickling it would hold the pipeline
        conn.response_class = answer_within(self.timeout_s)  # type: ignore[assignment]
        return conn, False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _quick_ack(conn: http.client.HTTPConnection) -> None:
    """Acknowledge the answer's first segment at once (Linux). A server that writes its
    headers and its body in two sends, with Nagle's algorithm on (Python's own
    http.server does), holds the body until that segment is acknowledged; on a kept-alive
    connection the client's delayed ACK would make every answer wait ~40 ms."""
    if _TCP_QUICKACK is not None and conn.sock is not None:
        try:
            conn.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            pass


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_FAILED = object()


class CachedAssignments:
    """A bounded LRU cache with expiry in front of a live lookup. Answers (None
    included) are kept `ttl_s`; failures `error_ttl_s`, during which the id raises
    again without calling the lookup.

    The lookup runs on the pipeline's thread, so a service that hangs must not be asked
    once per new id: after `trip_after` failures in a row it is taken for down, and for
    `error_ttl_s` every id not cached fails at once (its events are reported as
    unverifiable, as for any failed lookup); then one id is asked again, and one more
    failure takes it for down again. Without this, each new id waited the full
    timeout: a chunk with 15 of them against a hung service outlasted systemd's 30 s
    watchdog, and the restart met the same ids with an empty cache."""

    def __init__(self, inner: AssignmentLookup, *, size: int = 100_000, ttl_s: float = 300.0,
                 error_ttl_s: float = 10.0, trip_after: int = 3, clock: Callable[[], float] = time.monotonic):
        self.inner = inner
        self.size, self.ttl_s, self.error_ttl_s, self.trip_after = size, ttl_s, error_ttl_s, trip_after
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, object, str]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.errors = self.short_circuited = 0
        self._failures_in_row = 0
        self._tripped = False
        self._down_until = 0.0
        self._down_why = ""

    def assignee(self, key: str) -> str | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                self._entries.move_to_end(key)
                self.hits += 1
                _, value, why = entry
                if value is _FAILED:
                    raise AssignmentLookupError(why)
                return value  # type: ignore[return-value]
            if now < self._down_until:
                self.short_circuited += 1
                raise AssignmentLookupError(f"{self._down_why} (not asked again for {self._down_until - now:.0f} s)")
        self.misses += 1
        try:
            value, why, ttl = self.inner.assignee(key), "", self.ttl_s
        except AssignmentLookupError as exc:
            value, why, ttl = _FAILED, str(exc), self.error_ttl_s
            self.errors += 1
        with self._lock:
            if value is _FAILED:
                self._failures_in_row += 1
                if self._failures_in_row >= self.trip_after:  # a probe after a pause fails: down again at once
                    if not self._tripped:
                        log.warning("assignment lookups fail: ids not cached are reported unverifiable, and the "
                                    "service is asked again every error_ttl_s", extra={"reason": why})
                    self._failures_in_row, self._tripped = self.trip_after - 1, True
                    self._down_until, self._down_why = self._clock() + self.error_ttl_s, why
            else:
                if self._tripped:
                    log.info("assignment lookups answer again")
                self._failures_in_row, self._tripped = 0, False
            self._entries[key] = (now + ttl, value, why)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        if value is _FAILED:
            raise AssignmentLookupError(why)
        return value  # type: ignore[return-value]

    @property
    def down(self) -> bool:
        """Whether the service is taken for down now (ids not cached fail at once)."""
        return self._clock() < self._down_until

    def __len__(self) -> int:
        return len(self._entries)


def build_assignments(settings: AssignmentSettings) -> AssignmentLookup:
    """The configured lookup (no I/O yet); live ones behind the cache."""
    cache = settings.cache
    if settings.csv is not None:
        c = settings.csv
        return CsvAssignments(c.path, id_column=c.id_column, assignee_column=c.assignee_column,
                              reload_check_s=c.reload_check_s)
    if settings.sqlite is not None:
        s = settings.sqlite
        inner: AssignmentLookup = SqliteAssignments(s.path, table=s.table, id_column=s.id_column,
                                                    assignee_column=s.assignee_column)
    elif settings.http is not None:
        h = settings.http
        inner = HttpAssignments(h.url, timeout_s=h.timeout_s, headers=h.headers)
    else:  # pragma: no cover - AssignmentSettings.check demands one
        raise ValueError("no assignment lookup configured")
    return CachedAssignments(inner, size=cache.size, ttl_s=cache.ttl_s, error_ttl_s=cache.error_ttl_s)
