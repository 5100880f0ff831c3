"""Structured JSON logs on stdout, one object a line, for journald."""

from __future__ import annotations

import datetime as dt
import logging
import sys

import msgspec

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_encode = msgspec.json.Encoder(enc_hook=str).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "@timestamp": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["error.stack_trace"] = self.formatException(record.exc_info)
        return _encode(doc).decode()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # the scheduler's own line for every job run would drown the daemon's; the jobs
    # package records each run in the store and logs failures itself
    logging.getLogger("apscheduler").setLevel(max(root.level, logging.WARNING))
