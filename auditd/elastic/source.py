"""Read access events that other daemons already shipped to Elasticsearch.

Documents are read in ``(@timestamp, event.id)`` order with ``search_after``; the pair
is a total order (``event.id`` is unique), so no point-in-time is needed and the
position survives restarts: the checkpoint's ``cursor`` is the JSON of the last
document's sort values, committed by the pipeline with the batch's results.

Late documents: a shipper delivers a document some time after its ``@timestamp``
(the shipper's poll, a bulk, the index refresh; minutes or hours when a host was cut
off from the cluster). The source therefore reads only documents with ``@timestamp``
older than ``now - settle``.

Guarantee: every document that is searchable no later than ``settle`` after its
``@timestamp`` is read exactly once, in order, across restarts. The same event
stored twice (the same ``event.id`` in two backing indices after a rollover) is read
once: copies sort next to each other and are dropped.
Limit: a document that becomes searchable later than that sorts behind the cursor
and is not read. Choose ``settle`` above the longest outage you want covered; the
shipper stamps ``event.ingested``, so such documents can be found afterwards with a
query on ``event.ingested - @timestamp``.

Searches run on the source's own thread once it is started (the daemon starts it):
a cluster that hangs (a long collection pause, a network that drops packets) holds a
search for up to the client's request timeout, and on the pipeline's thread that
would hold every file source's lines, and their alerts, as long. The thread reads at
most `AHEAD_PAGES` pages ahead of what the pipeline took; each page's batch carries
its own checkpoint, so what was fetched and not committed is simply read again after
a restart. Not started (tests, tools), `poll` searches itself.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from elasticsearch import ApiError, Elasticsearch, TransportError

from auditd.elastic.client import Backoff, is_transient
from auditd.elastic.settings import ElasticSourceSettings
from auditd.sources.base import Batch, Checkpoint

log = logging.getLogger("neo_auditd.elastic")

TIME_FIELD = "@timestamp"
AHEAD_PAGES = 2  # pages the reader thread fetches ahead of the pipeline
STOP_WAIT_S = 1.0  # a search in flight at stop is left to its daemon thread after this
_encode = msgspec.json.Encoder().encode


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _epoch_ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def term_filters(filters: dict[str, str | list[str]]) -> list[dict[str, Any]]:
    """{"event.action": ["read", "export"], "host.name": "crm-1"} -> term / terms queries."""
    return [{"terms": {name: value}} if isinstance(value, list) else {"term": {name: value}}
            for name, value in filters.items()]


@dataclass(slots=True)
class SourceStats:
    documents: int = 0  # read this process
    duplicates: int = 0  # same (time, id) as the one before: dropped
    searches: int = 0
    errors: int = 0
    last_error: str | None = None


class ElasticEventSource:
    """Polled like the file tailer: ``poll(max_records)`` returns batches, never raises
    for the cluster's sake (an unreachable cluster gives no batches and a back-off)."""

    def __init__(self, settings: ElasticSourceSettings, es: Elasticsearch,
                 checkpoints: dict[str, Checkpoint], *, clock: Callable[[], dt.datetime] = _utc_now,
                 monotonic: Callable[[], float] = time.monotonic, wake: threading.Event | None = None):
        self.settings = settings
        self._wake = wake  # set when the thread has a page for the pipeline
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._taken = threading.Event()  # the pipeline took pages: room to read ahead again
        self._ready: deque[Batch] = deque()  # fetched by the thread, not yet polled
        self._page = settings.page_size
        self._full_page = False  # the last search filled its page: more may be waiting
        self.es = es
        self.clock = clock
        self.monotonic = monotonic
        self.fingerprint = f"es:{settings.index}"
        self.stats = SourceStats()
        self._backoff = Backoff(1.0, 60.0)
        self._retry_at = 0.0
        saved = checkpoints.get(self.fingerprint)
        self._after: list[Any] | None = None
        self._read = 0
        self._announce = False  # an empty batch must make the starting position durable
        if saved is not None and saved.cursor:
            self._after = json.loads(saved.cursor)["after"]
            self._read = saved.offset
        elif settings.start_at == "end":
            self._after = [_epoch_ms(clock()) - int(settings.settle.seconds * 1000), ""]
            self._announce = True

    # the tailer's interface, for the service's loop
    def start(self) -> None:
        """Search on a thread of the source's own from now on."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"neo-auditd-es-source-{self.settings.name}",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop reading. A search in flight is not waited for beyond `STOP_WAIT_S`: its
        page is never handed out, and is read again from the committed checkpoint."""
        self._stopping.set()
        self._taken.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)

    def checkpoint(self) -> Checkpoint:
        cursor = json.dumps({"after": self._after}) if self._after is not None else None
        return Checkpoint(source=self.settings.name, fingerprint=self.fingerprint, path=self.settings.index,
                          offset=self._read, cursor=cursor)

    def poll(self, max_records: int = 10_000) -> list[Batch]:
        """The pages the thread has read (never waiting for a search); not started, at
        most one page searched now: the documents after the cursor, up to now - settle."""
        self._page = max(1, min(max_records, self.settings.page_size))
        if self._thread is None:
            return self._fetch()
        taken = []
        while self._ready:
            taken.append(self._ready.popleft())
        if taken:
            self._taken.set()
        return taken

    def _run(self) -> None:
        stopping = self._stopping
        while not stopping.is_set():
            if len(self._ready) >= AHEAD_PAGES:  # the pipeline is behind (or holding back): wait for it
                self._taken.wait(self.settings.poll_interval_s)
                self._taken.clear()
                continue
            wait = self._retry_at - self.monotonic()
            if wait > 0:
                stopping.wait(wait)
                continue
            try:
                batches = self._fetch()
            except Exception:  # a bug here must not end the reading silently: said, and tried again
                log.exception("elasticsearch source %s: reading failed", self.settings.name)
                self._retry_at = self.monotonic() + self._backoff.next_delay()
                continue
            if stopping.is_set():
                return  # not handed out: read again from the committed checkpoint
            self._ready.extend(batches)
            if batches and self._wake is not None:
                self._wake.set()
            if not self._full_page:
                stopping.wait(self.settings.poll_interval_s)  # caught up: the next documents settle meanwhile

    def _fetch(self) -> list[Batch]:
        if self.monotonic() < self._retry_at:
            return []
        hits = self._search(self._page)
        self._full_page = hits is not None and len(hits) >= self._page
        if hits is None:
            return []
        if not hits:
            return self._announced([])
        records: list[bytes] = []
        offsets: list[int] = []
        for hit in hits:
            sort = hit["sort"]
            if sort == self._after:
                self.stats.duplicates += 1
                continue
            offsets.append(self._read)
            records.append(_encode(hit["_source"]))
            self._after = sort
            self._read += 1
        self.stats.documents += len(records)
        return self._announced(records, offsets)

    def _announced(self, records: list[bytes], offsets: list[int] | None = None) -> list[Batch]:
        if not records and not self._announce:
            return []
        self._announce = False
        return [Batch(source=self.settings.name, path=self.settings.index, fingerprint=self.fingerprint,
                      records=records, offsets=offsets or [], checkpoint=self.checkpoint())]

    def _search(self, size: int) -> list[dict[str, Any]] | None:
        upper = _epoch_ms(self.clock()) - int(self.settings.settle.seconds * 1000)
        filters = [{"range": {TIME_FIELD: {"lt": upper, "format": "epoch_millis"}}},
                   *term_filters(self.settings.filter)]
        try:
            response = self.es.search(
                index=self.settings.index, query={"bool": {"filter": filters}}, size=size,
                sort=[{TIME_FIELD: "asc"}, {self.settings.tiebreaker: "asc"}],
                search_after=self._after, track_total_hits=False,
                ignore_unavailable=True, allow_no_indices=True,
                filter_path="hits.hits._source,hits.hits.sort",
            )
        except (ApiError, TransportError) as exc:
            self._failed(exc)
            return None
        self.stats.searches += 1
        self._backoff.reset()
        return response.body.get("hits", {}).get("hits", [])

    def _failed(self, exc: Exception) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        delay = self._backoff.next_delay()
        self._retry_at = self.monotonic() + delay
        level = logging.WARNING if is_transient(exc) else logging.ERROR
        log.log(level, "elasticsearch source %s: search failed (%s); next try in %.1f s",
                self.settings.name, self.stats.last_error, delay)
