"""Cluster incidents: one document per actor and bucket, updated by any daemon.

Several daemons may add alerts to the same incident (two rules partitioned to
different owners, a takeover while the old owner finishes an evaluation). Each update
is read - merge - compare-and-set: the document is read with its ``_seq_no`` and
``_primary_term``, the alerts are merged into it, and it is written only if nobody
wrote it in between (``if_seq_no``/``if_primary_term``; ``op_type=create`` for a new
one). On a 409 the update starts again from a fresh read, so no daemon ever
overwrites what another added. The merge is a union (alert ids, rules, categories,
daemons) and max/min of the rest, so it gives the same document in any order, and
adding an alert that is already there is no write at all.

Fields people set (status, assignee, tier once triaged) are never touched by a merge.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Any

from elasticsearch import ConflictError, Elasticsearch, NotFoundError

from auditd.detect.alert import SEVERITIES, Alert
from auditd.elastic.documents import utc_iso
from auditd.errors import NeoError

log = logging.getLogger("neo_auditd.elastic")


class IncidentConflict(NeoError):
    """An incident stayed contended through every attempt (the next evaluation retries)."""


def cluster_incident_id(group_key: str, bucket_start: dt.datetime) -> str:
    return f"cluster:{group_key}:{bucket_start.astimezone(dt.timezone.utc):%Y%m%dT%H%M}"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def merge_alerts(current: dict[str, Any] | None, alerts: Iterable[Alert], *, incident_id: str,
                 group_key: str, agent: str, tier: str, now: dt.datetime) -> dict[str, Any] | None:
    """The incident document with the alerts merged in; None if it holds them all already."""
    alerts = list(alerts)
    doc = current or {}
    inc = dict(doc.get("neo", {}).get("incident", {}))
    known = set(inc.get("alert_ids", []))
    new = [alert for alert in alerts if alert.alert_id not in known]
    if not new:
        return None
    if not inc:
        inc = {"id": incident_id, "origin": "cluster", "group_key": group_key, "status": "open",
               "tier": tier, "auto_tier": tier, "discovered_at": utc_iso(now), "title": new[0].title}
    inc["alert_ids"] = sorted(known | {alert.alert_id for alert in new})
    inc["alert_count"] = len(inc["alert_ids"])
    inc["rules"] = sorted(set(inc.get("rules", [])) | {alert.rule_id for alert in new})
    inc["categories"] = sorted(set(inc.get("categories", [])) | {c for alert in new for c in alert.categories})
    inc["agents"] = sorted(set(inc.get("agents", [])) | {agent})
    inc["severity"] = max([inc.get("severity", SEVERITIES[0]), *(a.severity for a in new)], key=_severity_rank)
    times = [utc_iso(alert.timestamp) for alert in new]
    inc["first_seen"] = min([inc.get("first_seen", times[0]), *times], key=_instant)
    inc["last_seen"] = max([inc.get("last_seen", times[0]), *times], key=_instant)
    inc["sensitive"] = bool(inc.get("sensitive")) or any(alert.sensitive for alert in new)
    inc["max_record_count"] = max([inc.get("max_record_count", 0), *(a.record_count for a in new)])
    inc["updated_at"] = utc_iso(now)
    out: dict[str, Any] = {**doc, "@timestamp": inc["first_seen"], "neo": {**doc.get("neo", {}), "incident": inc}}
    actor = next((alert.actor for alert in alerts if alert.actor), None) or doc.get("user", {}).get("id")
    if actor:
        out["user"] = {"id": actor}
    return out


def _severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def _instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


class ClusterIncidentWriter:
    def __init__(self, es: Elasticsearch, index: str, *, agent: str, tier: str = "T6",
                 clock: Callable[[], dt.datetime] = _utc_now, max_attempts: int = 20):
        self.es = es
        self.index = index
        self.agent = agent
        self.tier = tier
        self.clock = clock
        self.max_attempts = max_attempts
        self.conflicts = 0  # compare-and-set races lost and retried
        self.writes = 0

    def read(self, incident_id: str) -> tuple[dict[str, Any] | None, tuple[int, int] | None]:
        """(document, (seq_no, primary_term)); (None, None) when there is none yet."""
        try:
            got = self.es.get(index=self.index, id=incident_id)  # real-time
        except NotFoundError:
            return None, None
        return got["_source"], (got["_seq_no"], got["_primary_term"])

    def write(self, incident_id: str, document: dict[str, Any], version: tuple[int, int] | None) -> None:
        """Compare-and-set; raises ConflictError if the document changed since `version`."""
        if version is None:
            self.es.index(index=self.index, id=incident_id, document=document, op_type="create")
        else:
            self.es.index(index=self.index, id=incident_id, document=document,
                          if_seq_no=version[0], if_primary_term=version[1])
        self.writes += 1

    def add_alerts(self, incident_id: str, group_key: str, alerts: list[Alert]) -> bool:
        """Merge the alerts into the incident; True if it was written."""
        for _ in range(self.max_attempts):
            current, version = self.read(incident_id)
            merged = merge_alerts(current, alerts, incident_id=incident_id, group_key=group_key,
                                  agent=self.agent, tier=self.tier, now=self.clock())
            if merged is None:
                return False
            try:
                self.write(incident_id, merged, version)
            except ConflictError:
                self.conflicts += 1
                continue  # someone else wrote it: read their version and merge again
            return True
        raise IncidentConflict(f"incident {incident_id}: still contended after {self.max_attempts} attempts")
