"""Cluster alerts back into every daemon's correlator.

The cluster detector writes its alerts to the alerts index, create-only (one document
per rule, group and window, whoever evaluated it). Every daemon reads them back, in
the order they were written (``event.ingested``), and applies them through its own
correlator's seam, in one transaction with its reading position (the ``meta`` key
below): so each daemon's store holds the fleet's incidents, a daemon that was down
catches up, and one killed between creating an alert and applying it loses nothing.

Documents become searchable after a refresh, and the daemons' clocks differ, so each
read looks back ``LOOKBACK`` before the newest time it has seen; the correlator knows
the alert ids it has, so a second reading changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from dataclasses import dataclass

from elasticsearch import Elasticsearch, NotFoundError

from auditd.detect.alert import Alert
from auditd.elastic.documents import alert_from_document

log = logging.getLogger("neo_auditd.elastic.cluster")

POSITION_KEY = "elastic.cluster_alerts_ingested"
LOOKBACK = dt.timedelta(minutes=2)
PAGE = 500


@dataclass(frozen=True, slots=True)
class ReadResult:
    alerts: list[Alert]
    newest: str | None  # the newest event.ingested seen (ISO), for the next read
    unreadable: int  # documents without a readable alert record


class ClusterAlertReader:
    def __init__(self, es: Elasticsearch, index: str):
        self.es = es
        self.index = index

    def read(self, since: str | None, *, max_alerts: int = 5000) -> ReadResult:
        """Cluster alerts ingested at or after `since` less the look-back, oldest first."""
        query: dict = {"bool": {"filter": [{"term": {"neo.alert.origin": "cluster"}}]}}
        if since:
            start = dt.datetime.fromisoformat(since) - LOOKBACK
            query["bool"]["filter"].append({"range": {"event.ingested": {"gte": start.isoformat()}}})
        alerts: list[Alert] = []
        newest, unreadable, after = since, 0, None
        while len(alerts) < max_alerts:
            try:
                response = self.es.search(index=self.index, query=query, size=PAGE, search_after=after,
                                          sort=[{"event.ingested": "asc"}, {"neo.alert.id": "asc"}],
                                          source_includes=["event.ingested", "neo.alert.record"])
            except NotFoundError:  # no alerts index yet: nothing to read
                break
            hits = response.body["hits"]["hits"]
            for hit in hits:
                alert = alert_from_document(hit["_source"])
                if alert is None:
                    unreadable += 1
                else:
                    alerts.append(alert)
                ingested = hit["_source"].get("event", {}).get("ingested")
                if ingested and (newest is None or ingested > newest):
                    newest = ingested
            if len(hits) < PAGE:
                break
            after = hits[-1]["sort"]
        if unreadable:
            log.warning("cluster alerts without a readable record skipped", extra={"count": unreadable})
        return ReadResult(alerts, newest, unreadable)


class ClusterAlertFollower:
    """Reads cluster alerts on a thread of its own (the pipeline's thread must not wait
    on the network) and hands them over with the position to record beside them."""

    def __init__(self, reader: ClusterAlertReader, *, every_s: float, position: str | None):
        self.reader = reader
        self.every_s = every_s
        self._position = position  # the newest ingested time read (not yet necessarily applied)
        self._queue: queue.SimpleQueue[ReadResult] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cluster-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def take(self) -> tuple[list[Alert], str | None]:
        """Every alert read since the last call, and the position to record with them."""
        alerts: list[Alert] = []
        newest = None
        while True:
            try:
                result = self._queue.get_nowait()
            except queue.Empty:
                return alerts, newest
            alerts += result.alerts
            newest = result.newest or newest

    def give_back(self, alerts: list[Alert], position: str | None) -> None:
        """What `take` handed out could not be stored (a full disk): keep it for next time."""
        self._queue.put(ReadResult(alerts, position, 0))

    def poll_once(self) -> None:
        result = self.reader.read(self._position)
        if result.alerts or result.newest != self._position:
            self._position = result.newest
            self._queue.put(result)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - an outage: read again next time, from the same place
                self.errors += 1
                log.warning("cluster alerts not read: %s", exc)
            self._stop.wait(self.every_s)
