"""What the shipper reads from the store, page by page, and where it has got to.

Each feed turns new rows of one table into bulk items and keeps its position in the
store's ``meta`` table. The position moves only in the transaction that records the
page's outcome (``EventShipper._commit``), so after a crash a page is sent again,
never skipped; its deterministic ids make the second send a no-op in Elasticsearch.

- events: segments (one per committed batch) from the position on. The pipeline is
  the only writer of segments and SQLite runs one write transaction at a time, so
  they become visible in ``seq`` order and a reader never sees seq n+1 before seq n.
- alerts: rows with ``rowid`` above the position (the table is only appended to).
- incidents: rows by ``(updated_at, incident_id)``, looking back ``incidents_rescan``
  at every pass; snapshots are written with ``version = timeline_seq`` (external), so
  an older snapshot never replaces a newer one, and a repeat is a 409, not a change.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from auditd.store.times import to_db
from auditd.detect.alert import Alert
from auditd.elastic.bulk import Item
from auditd.elastic.documents import (
    INCIDENT_COLUMNS,
    alert_document,
    encode,
    event_document,
    incident_document,
    local_incident_id,
)
from auditd.event import AccessEvent
from auditd.ops.status import table_exists
from auditd.store.encoding import segment_decoder

log = logging.getLogger("neo_auditd.elastic")

EVENTS_KEY = "elastic.shipped_seq"
ALERTS_KEY = "elastic.shipped_alert_rowid"
INCIDENTS_KEY = "elastic.shipped_incident_at"

_decode_segment = segment_decoder()
_decode_alert = msgspec.json.Decoder(Alert).decode
_decode_mark = msgspec.json.Decoder(tuple[str, str]).decode


Position = tuple[int, int]  # (event segment seq, events of it shipped)


def parse_position(text: str | None) -> Position:
    if not text:
        return (0, 0)
    seq, _, done = text.partition(":")
    return (int(seq), int(done or 0))


def format_position(position: Position) -> str:
    return f"{position[0]}:{position[1]}"


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
        rows = conn.execute("SELECT rowid, alert_id, incident_id, doc FROM alerts WHERE rowid > ? "
                            "ORDER BY rowid LIMIT ?", (self.position, max_docs)).fetchall()
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
            source = encode(alert_document(alert, origin="local", agent=self.agent,
                                           incident_id=local_incident_id(self.agent, incident_id)))
            items.append(Item(rowid, alert_id, action, source))
        return Page(items, str(rows[-1][0]), len(rows), dead)

    def recorded(self, page: Page) -> None:
        self.position = int(page.position)


class IncidentFeed:
    name = "incidents"

    def __init__(self, target: str, agent: str, rescan: dt.timedelta):
        self.target = target
        self.agent = agent
        self.rescan = rescan
        self.position: tuple[str, str] = ("", "")  # (updated_at, incident_id) last recorded
        self._sent: dict[str, tuple[int, str]] = {}  # id -> (timeline_seq, updated_at) this process sent

    def load(self, conn: sqlite3.Connection) -> None:
        stored = read_meta(conn, INCIDENTS_KEY)
        self.position = _decode_mark(stored) if stored else ("", "")

    def read(self, conn: sqlite3.Connection, max_docs: int, max_bytes: int) -> Page | None:
        if not table_exists(conn, "incidents"):
            return None
        since = self._rescan_from()
        columns = ", ".join(INCIDENT_COLUMNS)
        rows = conn.execute(
            f"SELECT {columns} FROM incidents WHERE updated_at >= ? ORDER BY updated_at, incident_id",
            (since,)).fetchall()
        items: list[Item] = []
        versions: dict[str, tuple[int, str]] = {}
        mark = self.position
        for row in rows:
            incident_id, updated_at, timeline_seq = row[0], row[12], row[20]
            if self._sent.get(incident_id, (None,))[0] == timeline_seq:
                continue
            if len(items) >= max_docs:
                break
            doc_id = local_incident_id(self.agent, incident_id)
            action = (b'{"index":{"_id":' + encode(doc_id) + b',"version":' + str(timeline_seq).encode()
                      + b',"version_type":"external_gte"}}')
            items.append(Item(len(items), doc_id, action, encode(incident_document(row, agent=self.agent))))
            versions[incident_id] = (timeline_seq, updated_at)
            mark = max(mark, (updated_at, incident_id))
        if not items:
            return None

        def remember() -> None:
            self._sent.update(versions)
            self._forget_old()

        return Page(items, encode(list(mark)).decode(), len(items), on_recorded=remember)

    def recorded(self, page: Page) -> None:
        self.position = tuple(_decode_mark(page.position))  # type: ignore[assignment]
        if page.on_recorded:
            page.on_recorded()

    def _rescan_from(self) -> str:
        if not self.position[0]:
            return ""
        return to_db(dt.datetime.fromisoformat(self.position[0]) - self.rescan)

    def _forget_old(self) -> None:
        since = self._rescan_from()
        for incident_id in [i for i, (_, at) in self._sent.items() if at < since]:
            del self._sent[incident_id]
