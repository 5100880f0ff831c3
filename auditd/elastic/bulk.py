"""One bulk request's worth of documents, sent until every item has a final outcome.

An item's outcome is final when it was written (201/200), was already there (409:
the same deterministic ``_id`` from an earlier attempt whose answer was lost, or a
newer incident snapshot), or was refused for what the document is (400: a value its
mapping cannot take; 413: too large): those are dead letters, kept and counted, not
retried forever. Everything else is retried with back-off until it is final or the
caller gives up, so nothing is dropped: no connection, timeouts, 429 and 5xx, and
also 401/403/404 -- a missing privilege or a refused auto-create is the cluster's
problem, not the document's, and must not empty the buffer into the dead letters.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from elasticsearch import ApiError, Elasticsearch, TransportError

from auditd.elastic.client import TRANSIENT_STATUSES, Backoff, is_transient

log = logging.getLogger("neo_auditd.elastic")

# Per item we only need the status, and the error for the ones that failed.
_FILTER = "errors,items.*.status,items.*.error.type,items.*.error.reason"


DOCUMENT_ERRORS = frozenset({400, 413})


class Outcome(Enum):
    WRITTEN = "written"
    PRESENT = "present"  # 409: already there (an earlier attempt, or a newer version)
    DEAD = "dead"  # refused for what it is: dead-lettered
    RETRY = "retry"


def classify(status: int) -> Outcome:
    if status < 300:
        return Outcome.WRITTEN
    if status == 409:
        return Outcome.PRESENT
    if status in DOCUMENT_ERRORS:
        return Outcome.DEAD
    return Outcome.RETRY


@dataclass(slots=True)
class Item:
    """One document: its action line and source line, ready to send."""

    key: int  # the caller's position (a store seq or rowid)
    doc_id: str
    action: bytes
    source: bytes
    outcome: Outcome | None = None
    status: int = 0
    reason: str = ""

    @property
    def size(self) -> int:
        return len(self.action) + len(self.source) + 2


@dataclass(slots=True)
class BulkCounters:
    requests: int = 0
    bytes_sent: int = 0
    written: int = 0
    present: int = 0
    dead: int = 0
    retries: int = 0  # requests or items sent again
    failures: int = 0  # requests that failed as a whole (no connection, 429, 5xx)
    last_error: str | None = None
    by_target: dict[str, int] = field(default_factory=dict)  # written, per index


class GaveUp(Exception):
    """The caller asked to stop before every item was final; nothing was recorded."""


class BulkSender:
    def __init__(self, es: Elasticsearch, backoff: Backoff, *, abort: threading.Event,
                 give_up: Callable[[], bool] = lambda: False,
                 on_failure: Callable[[str, bool], None] = lambda error, refused: None):
        self.es = es
        self.backoff = backoff
        self.abort = abort  # set: stop now
        self.give_up = give_up  # true once a drain deadline has passed
        self.on_failure = on_failure  # (error, refused: waiting will not cure it), before each wait
        self.counters = BulkCounters()
        self._lock = threading.Lock()  # counters are read by the metrics thread

    def send(self, target: str, items: list[Item]) -> list[Item]:
        """Send until every item is final; raises GaveUp if stopped first."""
        pending = items
        while pending:
            if self.abort.is_set() or self.give_up():
                raise GaveUp()
            response = self._request(target, pending)
            if response is None:  # the whole request failed: same items again
                self._wait()
                continue
            pending = self._apply(target, pending, response)
            if pending:
                with self._lock:
                    self.counters.retries += len(pending)
                log.warning("bulk: %d of %d items to retry (e.g. %s %s)", len(pending), len(items),
                            pending[0].status, pending[0].reason[:200])
                self.on_failure(pending[0].reason or f"status {pending[0].status}",
                                pending[0].status not in TRANSIENT_STATUSES)
                self._wait()
        self.backoff.reset()
        return items

    def _wait(self) -> None:
        if not self.backoff.wait(self.abort, self.give_up):
            raise GaveUp()

    def _request(self, target: str, items: list[Item]) -> dict[str, Any] | None:
        body = b"".join(item.action + b"\n" + item.source + b"\n" for item in items)
        with self._lock:
            self.counters.requests += 1
            self.counters.bytes_sent += len(body)
        try:
            return self.es.bulk(index=target, operations=body, filter_path=_FILTER).body
        except (ApiError, TransportError) as exc:
            if not is_transient(exc):
                # a request-level 4xx (auth, a closed index, a broken template) is not
                # cured by waiting, but dropping the batch would lose events: keep
                # retrying, slowly, and make the error visible
                log.error("bulk to %s refused: %s", target, exc)
            else:
                log.warning("bulk to %s failed, will retry: %s", target, _short(exc))
            with self._lock:
                self.counters.failures += 1
                self.counters.last_error = _short(exc)
            self.on_failure(_short(exc), not is_transient(exc))
            return None

    def _apply(self, target: str, items: list[Item], response: dict[str, Any]) -> list[Item]:
        results = response.get("items", [])
        if len(results) != len(items):  # never guess which item an answer belongs to
            log.error("bulk answer has %d items for %d sent; sending again", len(results), len(items))
            return items
        retry: list[Item] = []
        written = present = dead = 0
        for item, result in zip(items, results):
            (answer,) = result.values()
            item.status = int(answer.get("status", 0))
            error = answer.get("error") or {}
            item.reason = f"{error.get('type', '')}: {error.get('reason', '')}" if error else ""
            item.outcome = classify(item.status)
            if item.outcome is Outcome.RETRY:
                retry.append(item)
            elif item.outcome is Outcome.WRITTEN:
                written += 1
            elif item.outcome is Outcome.PRESENT:
                present += 1
            else:
                dead += 1
        with self._lock:
            c = self.counters
            c.written += written
            c.present += present
            c.dead += dead
            c.by_target[target] = c.by_target.get(target, 0) + written
            if retry:
                c.last_error = retry[0].reason or f"status {retry[0].status}"
        return retry

    def snapshot(self) -> BulkCounters:
        with self._lock:
            c = self.counters
            return BulkCounters(c.requests, c.bytes_sent, c.written, c.present, c.dead, c.retries,
                                c.failures, c.last_error, dict(c.by_target))


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
