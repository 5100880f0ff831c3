"""What a job may reach while the daemon runs; the service fills it in."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class JobContext:
    store_path: Path
    runtime: Callable[[], Any]  # the Runtime in force (swapped whole on reload)
    directory: Callable[[], Any]  # the directory in force (reloaded alone when its file changes), or None
    should_stop: Callable[[], bool] = lambda: False  # long jobs stop between chunks when the daemon stops
    request_tick: Callable[[], None] = lambda: None  # ask the pipeline's thread to run the rules' time hooks
    retention_guard: Callable[[], str | None] = lambda: None  # e.g. "segments not shipped yet stay"
    fleet: Callable[[], Any] = lambda: None  # the deliver lease and the fleet's receipts (fleets with cluster rules)
    now: Callable[[], dt.datetime] = field(default=_utc_now)
