"""The Elasticsearch client, and which of its errors are worth waiting out.

The client retries nothing by itself beyond trying each configured node once: back
off, jitter and the decision to give up belong to the shipper, which knows whether
it may drop anything (it may not).
"""

from __future__ import annotations

import logging
import random
import socket
import threading
from collections.abc import Callable

from elasticsearch import ApiError, Elasticsearch, TransportError

from auditd.elastic.settings import ElasticSettings

# 408 request timeout, 429 too many requests (a full write queue), 5xx a node in trouble
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class _RequestLinesToDebug(logging.Filter):
    """The transport logs every request at INFO ("POST http://…/_bulk [status:200 …]"):
    thousands of lines an hour that say nothing the metrics do not. Demote them to DEBUG,
    where `run --log-level DEBUG` still shows them; warnings and errors pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


TRANSPORT_LOGGER = "elastic_transport.transport"


def quiet_request_lines() -> None:
    """Install the demotion once per process (the logger is global, as logging is)."""
    logger = logging.getLogger(TRANSPORT_LOGGER)
    if not any(isinstance(f, _RequestLinesToDebug) for f in logger.filters):
        logger.addFilter(_RequestLinesToDebug())


def build_client(settings: ElasticSettings) -> Elasticsearch:
    """A client for the configured hosts; reads the API key file, connects lazily."""
    quiet_request_lines()
    api_key = None
    if settings.api_key_file is not None:
        api_key = settings.api_key_file.read_text(encoding="utf-8").strip()
    return Elasticsearch(
        settings.hosts,
        api_key=api_key,
        ca_certs=str(settings.ca_certs) if settings.ca_certs else None,
        verify_certs=settings.verify_certs,
        request_timeout=settings.request_timeout_s,
        max_retries=len(settings.hosts) - 1,  # each node once; our own loop backs off
        retry_on_timeout=True,
        http_compress=settings.http_compress,
    )


def node_name(settings: ElasticSettings) -> str:
    return settings.node_name or socket.gethostname()


def is_transient(exc: BaseException) -> bool:
    """A failure that waiting may cure: no connection, a timeout, 429 or 5xx."""
    if isinstance(exc, ApiError):
        return exc.meta.status in TRANSIENT_STATUSES
    return isinstance(exc, TransportError)  # connection refused/reset, timeouts, TLS hiccups


class Backoff:
    """Exponential back-off with full jitter, interruptible through a stop event.

    Full jitter spreads the retries of many daemons that lost the same cluster at the
    same moment, so they do not come back as one wave.
    """

    def __init__(self, initial_s: float, max_s: float, *, rng: random.Random | None = None):
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)  # never zero: a dead cluster is not hammered

    def wait(self, stop: threading.Event, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Sleep the next delay; False if asked to stop (or give up) meanwhile."""
        delay = self.next_delay()
        step = 0.25  # check give_up (a drain deadline) often enough during long sleeps
        waited = 0.0
        while waited < delay:
            if give_up() or stop.wait(min(step, delay - waited)):
                return False
            waited += step
        return not give_up()
