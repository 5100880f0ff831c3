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


class _CommandFormatter(logging.Formatter):
    """'warning: message failed (outbox_id=353, route=email, error=...)': a one-shot
    command's log line on stderr with the fields the daemon's JSON line has."""

    def format(self, record: logging.LogRecord) -> str:
        fields = [f"{key}={value}" for key, value in vars(record).items()
                  if key not in _RESERVED and not key.startswith("_")]
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        return text + (f" ({', '.join(fields)})" if fields else "")


def setup_command_logging() -> None:
    """Warnings and errors of a one-shot command (outbox send, playbook run-due) on stderr
    with their fields; without it Python printed the bare message ('message failed'),
    which says neither which nor why. `run` replaces it with the JSON lines."""
    root = logging.getLogger()
    if root.handlers:  # set up already (a test's capture, an embedding program)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CommandFormatter())
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)
