"""What the shipper reads from the store, page by page, and where it has got to.

Each feed turns new rows of one table into bulk items and keeps its position in the
store's ``meta`` table. The position moves only in the transaction that records the
page's outcome (``EventShipper._commit``), so after a crash a page is sent again,
never skipped; its deterministic ids make the second send a no-op in Elasticsearch.

- events: segments (one per committed batch) from the position on. The pipeline is
  the only writer of segments and SQLite runs one write transaction at a time, so
  they become visible in ``seq`` order and a reader never sees seq n+1 before seq n.
- alerts: rows with ``rowid`` above the position (the table is only appended to).
- incidents: the incidents index is a replica of correlate's incidents, fed by the
  incident change log (consumer ``elastic.incidents``, its cursor moved in the same
  transaction that records the page). Each changed incident's snapshot is written under
  its fleet key with ``version = timeline_seq`` less the respond stage's step traces
  (each daemon runs its own playbooks) (external_gte), so an older snapshot
  never replaces a newer one and a repeat changes nothing; daemons that saw the same
  episode write the same document.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from auditd.detect.alert import Alert
from auditd.elastic.bulk import Item
from auditd.correlate import changelog
from auditd.elastic.documents import (
    INCIDENT_COLUMNS,
    alert_document,
    encode,
    event_document,
    incident_document,
)
from auditd.ops.shipping import EVENTS_KEY, Position, format_position, parse_position
from auditd.event import AccessEvent
from auditd.ops.status import table_exists
from auditd.store.encoding import segment_decoder

log = logging.getLogger("neo_auditd.elastic")

ALERTS_KEY = "elastic.shipped_alert_rowid"

_decode_segment = segment_decoder()
_decode_alert = msgspec.json.Decoder(Alert).decode


def read_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def write_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


@dataclass(slots=True)
class Page:
    items: list[Item]
    position: str  # the feed's position once this page is recorded
    rows: int  # rows read (some may have become dead letters before sending)
    dead: list[Item] = field(default_factory=list)  # refused before sending (undecodable)
    on_recorded: Callable[[], None] | None = None
    after: Position | None = None  # where the page starts (events: to check a prefetched page)


class EventFeed:
    """Events from ``event_segments``: one row per committed batch, a msgpack array.

    A segment may hold more events than one bulk request, so the position is
    ``(segment seq, events of it shipped)``; every segment before it is shipped.
    """

    name = "events"

    def __init__(self, target: str, agent: str, clock: Callable[[], dt.datetime]):
        self.target = target
        self.agent = agent
        self.clock = clock
        self.position: Position = (0, 0)
        self._cache: tuple[int, list[AccessEvent]] | None = None  # the segment being shipped

    def load(self, conn: sqlite3.Connection) -> None:
        self.position = parse_position(read_meta(conn, EVENTS_KEY))

    def lag(self, conn: sqlite3.Connection) -> int:
        seq, done = self.position
        return conn.execute(
            "SELECT COALESCE(SUM(CASE WHEN seq = ? THEN count - ? ELSE count END), 0)"
            " FROM event_segments WHERE seq >= ?", (seq, done, seq)).fetchone()[0]

    def read(self, conn: sqlite3.Connection, max_docs: int, max_bytes: int,
             after: Position | None = None) -> Page | None:
        """The page after `after` (default: the recorded position)."""
        start = self.position if after is None else after
        batch = _PageBuilder(self.agent, self.clock().isoformat(), max_docs, max_bytes, start)
        cursor = conn.execute("SELECT seq, count, doc FROM event_segments WHERE seq >= ? ORDER BY seq", (start[0],))
        try:
            for seq, count, blob in cursor:
                skip = start[1] if seq == start[0] else 0
                if skip >= count:
                    batch.position = (seq, count)
                    continue
                events = self._segment(seq, count, blob, batch)
                if events is not None and not batch.add(seq, events, skip):
                    break
        finally:
            cursor.close()
        if batch.position == start:
            if start == self.position:
                self._check_rowid_reuse(conn)
            return None
        return Page(batch.items, format_position(batch.position), len(batch.items) + len(batch.dead),
                    batch.dead, after=start)

    def recorded(self, page: Page) -> None:
        self.position = parse_position(page.position)

    def _segment(self, seq: int, count: int, blob: bytes, batch: "_PageBuilder") -> list[AccessEvent] | None:
        if self._cache is not None and self._cache[0] == seq:
            return self._cache[1]
        try:
            events = _decode_segment(blob)
        except (msgspec.DecodeError, ValueError) as exc:
            batch.dead.append(Item(seq, f"segment:{seq}", b"", bytes(blob), reason=f"undecodable segment: {exc}"))
            batch.position = (seq, count)  # past every event of it
            return None
        self._cache = (seq, events)
        return events

    def _check_rowid_reuse(self, conn: sqlite3.Connection) -> None:
        # seq is a rowid without AUTOINCREMENT: if the newest segments were deleted, new
        # ones could reuse numbers at or below the position and never be shipped.
        # Shipping everything again is safe (ids are deterministic), only slower.
        top = conn.execute("SELECT MAX(seq) FROM event_segments").fetchone()[0] or 0
        if top < self.position[0]:
            log.warning("event segment seq went back from %d to %d (segments deleted at the top?); "
                        "re-shipping from the start, duplicates are recognised by id", self.position[0], top)
            self.position = (0, 0)


class _PageBuilder:
    """Encodes events into bulk items until the page is full."""

    def __init__(self, agent: str, ingested: str, max_docs: int, max_bytes: int, start: Position):
        self.agent, self.ingested = agent, ingested
        self.max_docs, self.max_bytes = max_docs, max_bytes
        self.items: list[Item] = []
        self.dead: list[Item] = []
        self.size = 0
        self.position = start

    def add(self, seq: int, events: list[AccessEvent], skip: int) -> bool:
        """Add events[skip:] of segment seq; False once the page is full."""
        for index in range(skip, len(events)):
            if len(self.items) >= self.max_docs:
                return False
            event = events[index]
            doc_id = event.event_id or f"{self.agent}:{seq}:{index}"  # never an auto id: a retry would duplicate
            source = encode(event_document(event, agent=self.agent, ingested=self.ingested))
            item = Item(seq, doc_id, b'{"create":{"_id":' + encode(doc_id) + b"}}", source)
            if self.items and self.size + item.size > self.max_bytes:
                return False
            self.items.append(item)
            self.size += item.size
            self.position = (seq, index + 1)
        return True


class AlertFeed:
    name = "alerts"

    def __init__(self, target: str, agent: str):
        self.target = target
        self.agent = agent
        self.position = 0

    def load(self, conn: sqlite3.Connection) -> None:
        self.position = int(read_meta(conn, ALERTS_KEY) or 0)

    def read(self, conn: sqlite3.Connection, max_docs: int, max_bytes: int) -> Page | None:
        if not table_exists(conn, "alerts"):  # the correlate stage creates it
            return None
        rows = conn.execute("SELECT a.rowid, a.alert_id, COALESCE(i.fleet_key, a.incident_id), a.doc FROM alerts a"
                            " LEFT JOIN incidents i ON i.incident_id = a.incident_id WHERE a.rowid > ?"
                            " ORDER BY a.rowid LIMIT ?", (self.position, max_docs)).fetchall()
        if not rows:
            return None
        items: list[Item] = []
        dead: list[Item] = []
        for rowid, alert_id, incident_id, doc in rows:
            action = b'{"create":{"_id":' + encode(alert_id) + b"}}"
            try:
                alert = _decode_alert(doc)
            except (msgspec.DecodeError, ValueError) as exc:
                dead.append(Item(rowid, alert_id, action, doc.encode(), reason=f"undecodable: {exc}"))
                continue
            source = encode(alert_document(alert, origin="local", agent=self.agent, incident_id=incident_id))
            items.append(Item(rowid, alert_id, action, source))
        return Page(items, str(rows[-1][0]), len(rows), dead)

    def recorded(self, page: Page) -> None:
        self.position = int(page.position)


class IncidentFeed:
    """The replica of correlate's incidents, fed by the incident change log."""

    name = "incidents"
    consumer = "elastic.incidents"

    def __init__(self, target: str, agent: str):
        self.target = target
        self.agent = agent
        self.position = 0  # the last change-log seq whose incident is shipped

    def load(self, conn: sqlite3.Connection) -> None:
        self.position = changelog.cursor(conn, self.consumer)

    def lag(self, conn: sqlite3.Connection) -> int:
        return changelog.pending(conn, self.consumer)

    def read(self, conn: sqlite3.Connection, max_docs: int, max_bytes: int) -> Page | None:
        changes = conn.execute("SELECT seq, incident_id FROM incident_changes WHERE seq > ? ORDER BY seq LIMIT ?",
                               (self.position, max_docs * 4)).fetchall()
        if not changes:
            return None
        wanted: dict[str, None] = {}
        last = self.position
        for seq, incident_id in changes:
            if incident_id not in wanted and len(wanted) >= max_docs:
                break
            wanted[incident_id] = None
            last = seq  # the snapshot read below is at least as new as this change
        columns = ", ".join(INCIDENT_COLUMNS)
        marks = ",".join("?" * len(wanted))
        rows = conn.execute(f"SELECT {columns}, step_entries FROM incidents WHERE incident_id IN ({marks})",
                            list(wanted)).fetchall()
        items: list[Item] = []
        for *values, step_entries in rows:
            row = tuple(values)
            document = incident_document(row, agent=self.agent)
            doc_id = document["neo"]["incident"]["id"]
            # each daemon traces its own playbook steps on its timeline: they do not count,
            # so the daemon that saw more of the episode is the newer snapshot
            version = row[INCIDENT_COLUMNS.index("timeline_seq")] - step_entries
            action = (b'{"index":{"_id":' + encode(doc_id) + b',"version":' + str(version).encode()
                      + b',"version_type":"external_gte"}}')
            items.append(Item(len(items), doc_id, action, encode(document)))
        return Page(items, str(last), len(changes))

    def save(self, conn: sqlite3.Connection, page: Page) -> None:
        """Record the page's position, in the transaction that records its outcome."""
        changelog.advance(conn, self.consumer, int(page.position))

    def recorded(self, page: Page) -> None:
        self.position = int(page.position)
