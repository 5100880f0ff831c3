"""Job: the periodic review of grants not exercised (``auditd/entitlement/review.py``),
written as reports under ``<state_dir>/reviews/``, in a process of its own. It reads the store and changes no
incident; were it ever to raise alerts, they would go through the correlator's seam."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
from pathlib import Path

from auditd.config.typed import DEFAULT_ZONE
from auditd.directory.model import Directory
from auditd.entitlement.review import GrantReview, render_grant_review, review_grants
from auditd.jobs.apart import run_apart
from auditd.jobs.context import JobContext

log = logging.getLogger("neo_auditd.review")


def run(context: JobContext) -> None:
    """In a process of its own (`apart.py`): the review decodes its whole period of
    events, which on the scheduler's thread would slow the pipeline for as long."""
    runtime = context.runtime()
    directory = context.directory()
    if directory is None:
        return
    run_apart(grant_review_job, (context.store_path, directory, runtime.settings.entitlement.review.period.timedelta),
              {"out_dir": context.store_path.parent / "reviews", "now": context.now(), "zone": runtime.settings.zone},
              should_stop=context.should_stop)


def grant_review_job(db_path: Path | str, directory: Directory, period: dt.timedelta, *,
                     out_dir: Path | None = None, now: dt.datetime | None = None,
                     zone: dt.tzinfo = DEFAULT_ZONE) -> GrantReview:
    """The scheduled review: on a read-only connection of its own, the last `period`;
    written as grant-review-<date>.txt and .json under `out_dir` when given."""
    now = now or dt.datetime.now(dt.timezone.utc)
    uri = f"file:{Path(db_path).resolve()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        review = review_grants(conn, directory, now - period, now)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / f"grant-review-{now.astimezone(zone):%Y%m%d}"
        stem.with_suffix(".txt").write_text(render_grant_review(review, zone=zone) + "\n", encoding="utf-8")
        stem.with_suffix(".json").write_text(render_grant_review(review, as_json=True) + "\n", encoding="utf-8")
    unused = sum(1 for role in review.roles for grant in role.grants if not grant.exercised)
    log.info("grant review written", extra={"unused_grants": unused, "events": review.events,
                                            "out_dir": str(out_dir) if out_dir else None})
    return review
