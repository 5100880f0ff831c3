"""Runtime suppressions: kept in the store, managed by `neo-auditd suppress`, applied by
the pipeline without a reload, stopping at their expiry, listed in `status` beside the
rule files' exceptions; and the behaviour kinds on a store made before any of this."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.detect import suppressions
from auditd.enrich.pseudonym import create_key_file
from auditd.store.migrations import LATEST
from auditd.store.sqlite import Store

from behaviour_helpers import T0, ev, memory_conn, minutes, rules_from, run

TESTS = Path(__file__).resolve().parent
THRESHOLD = """- rule: three_reads
  desc: three reads by one actor within ten minutes
  kind: threshold
  params: {gte: 3, timespan: 10m, realert: 1m}
  condition: event.action = read
  severity: high
  tags: [sandbox]
  exceptions:
    - {name: stock_take, fields: [user.id], values: [E77], reason: yearly stock-take, owner: ops@example.com,
       expires: 2030-01-31}
  samples:
    match: [{sequence: [{repeat: 3, event: {user.id: E1, event.action: read}}]}]
"""
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def reads(start: float, n: int, user: str = "E1", prefix: str = "r") -> list:
    return [ev(minutes(start + i), f"{prefix}{start}-{i}", user=user) for i in range(n)]


def test_a_suppression_holds_back_alerts_until_it_expires_while_the_state_keeps_learning(tmp_path):
    conn = memory_conn()
    sid = suppressions.add(conn, rule_id="three_reads", match={"user.id": "E1"}, owner="secops@example.com",
                           reason="OPS-12 data migration", expires_at=T0 + minutes(30), now=NOW)
    rules, _ = rules_from(tmp_path, THRESHOLD, conn)
    rules.set_suppressions(suppressions.compile_suppressions(suppressions.read_all(conn)))
    assert run(rules, reads(0, 3)) == []  # suppressed
    assert [a.actor for a in run(rules, reads(0, 3, user="E2"))] == ["E2"]  # another actor is not
    assert rules.stats.excepted[0] == 1
    (after,) = run(rules, reads(30, 3))  # from the expiry on, alerts again
    assert after.event_ids[0] == "r30-0"
    assert suppressions.remove(conn, sid, by="lead@example.com", now=NOW)
    assert not suppressions.remove(conn, sid, by="lead@example.com", now=NOW)  # only once
    (row,) = suppressions.read_all(conn)
    assert row.removed_by == "lead@example.com" and not row.active(NOW)


@pytest.mark.parametrize("match, message", [
    ({"user.idd": "E1"}, "field 'user.idd' cannot be matched: it is unknown (did you mean user.id"),
    ({"neo.data.categories": "identity"}, "it is a list field"),
    ({"neo.data.record_count": "many"}, "'neo.data.record_count' is a number, got 'many'"),
    ({}, "needs at least one field=value"),
])
def test_bad_suppressions_are_refused_with_the_reason(match, message):
    with pytest.raises(suppressions.SuppressionError, match=message.replace("(", r"\(")):
        suppressions.add(memory_conn(), rule_id="*", match=match, owner="a", reason="b",
                         expires_at=NOW + dt.timedelta(days=1), now=NOW)


def test_an_expiry_in_the_past_or_an_unknown_rule_is_refused():
    with pytest.raises(suppressions.SuppressionError, match="not in the future"):
        suppressions.add(memory_conn(), rule_id="*", match={"user.id": "E1"}, owner="a", reason="b",
                         expires_at=NOW, now=NOW)
    with pytest.raises(suppressions.SuppressionError, match="no rule 'three_read'.*three_reads"):
        suppressions.add(memory_conn(), rule_id="three_read", match={"user.id": "E1"}, owner="a", reason="b",
                         expires_at=NOW + dt.timedelta(days=1), now=NOW, known_rules=["three_reads"])


# -- as an operator uses it ----------------------------------------------------------------

def _line(n: int, actor: str, minute: int) -> str:
    return json.dumps({
        "ts": f"2026-11-02T10:{minute:02d}:{n % 60:02d}+08:00", "app": "crm", "host": "h1", "req": f"r-{n:06d}",
        "emp": {"id": actor, "name": "x"}, "ip": "10.20.1.5", "op": "order.view",
        "res": {"type": "order", "id": f"O{n:09d}", "store": "S011"}, "count": 1, "result": "ok",
    }) + "\n"


def neo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "three.yaml").write_text(THRESHOLD.replace("event.action = read",
                                                                       "event.action = read and user.id exists"))
    (tmp_path / "access.log").write_text("".join(
        _line(n, actor, minute) for n, (actor, minute) in enumerate(
            [("E1", 1), ("E1", 2), ("E1", 3), ("E2", 4), ("E2", 5), ("E2", 6)])))
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\nsources:\n  - {name: crm, paths: [access.log], format: neo-crm}\n"
                      "pseudonym: {key_file: pseudonym.key}\nrules: {include_shipped: false, paths: [rules.d]}\n"
                      "ops: {metrics: {enabled: false}}\n")
    return config


def test_suppress_add_list_remove_and_status_as_a_user_runs_them(deployment):
    config = str(deployment)
    proc = neo("suppress", "add", "-c", config, "--rule", "three_reads", "--match", "user.id=E1",
               "--owner", "secops@example.com", "--reason", "OPS-12 data migration", "--expires", "2099-01-01")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("suppression 1 added: rule three_reads, user.id=E1, until 2099-01-02T00:00+08:00")
    bad = neo("suppress", "add", "-c", config, "--rule", "three_read", "--match", "user.id=E1",
              "--owner", "x", "--reason", "y", "--expires", "7d")
    assert bad.returncode == 2 and "no rule 'three_read' (did you mean three_reads" in bad.stderr
    replay = neo("replay", "-c", config, "--json", str(deployment.parent / "access.log"))
    assert replay.returncode == 0, replay.stderr[-2000:]
    db = deployment.parent / "state" / "neo-auditd.db"
    with sqlite3.connect(db) as conn:
        actors = [r[0] for r in conn.execute("SELECT json_extract(doc, '$.actor') FROM alerts WHERE rule_id = 'three_reads'")]
    assert actors == ["E2"]  # E1 suppressed without a reload or a rule change
    listed = json.loads(neo("suppress", "list", "-c", config, "--json").stdout)
    assert [(s["id"], s["rule_id"], s["match"], s["active"]) for s in listed] == [
        (1, "three_reads", {"user.id": "E1"}, True)]
    status = neo("status", "-c", config)
    assert status.returncode == 0, status.stderr
    text = status.stdout
    assert "exceptions and suppressions" in text
    assert "stock_take" in text and "user.id=E77" in text and "three.yaml:" in text  # the rule file's
    assert "suppression 1" in text and "user.id=E1" in text and "secops@example.com" in text  # the store's
    as_json = json.loads(neo("status", "-c", config, "--json").stdout)
    assert sorted(a["source"] for a in as_json["allowances"]) == ["rule file", "store"]
    removed = neo("suppress", "remove", "-c", config, "1", "--by", "lead@example.com")
    assert removed.returncode == 0 and "removed by lead@example.com" in removed.stdout
    assert json.loads(neo("suppress", "list", "-c", config, "--json").stdout) == []
    assert "removed by lead@example.com" in neo("suppress", "list", "-c", config, "--all").stdout


def test_an_expired_suppression_holds_nothing_back(deployment):
    db = deployment.parent / "state" / "neo-auditd.db"
    store = Store(db).open()
    try:  # added long ago, expired before the log's events
        suppressions.add(store.conn, rule_id="*", match={"user.id": "E1"}, owner="o", reason="r",
                         expires_at=dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.timezone.utc),
                         now=dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc))
    finally:
        store.close()
    replay = neo("replay", "-c", str(deployment), "--json", str(deployment.parent / "access.log"))
    assert replay.returncode == 0, replay.stderr[-2000:]
    with sqlite3.connect(db) as conn:
        actors = sorted(r[0] for r in conn.execute("SELECT json_extract(doc, '$.actor') FROM alerts"))
    assert actors == ["E1", "E2"]
    status = json.loads(neo("status", "-c", str(deployment), "--json").stdout)
    (held,) = [a for a in status["allowances"] if a["source"] == "store"]
    assert held["active"] is False


def test_the_kinds_start_cleanly_on_a_store_from_before_every_migration(tmp_path):
    """A 0.1.0 store (no detector_state, no suppressions) is migrated at open; the
    behaviour kinds then learn, flush and restart on it as on a new one."""
    db = tmp_path / "neo-auditd.db"
    with gzip.open(TESTS / "fixtures" / "store-0.1.0" / "neo-auditd.db.gz") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    store = Store(db).open()
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
        assert suppressions.read_all(store.conn) == []
        rules, state = rules_from(tmp_path, THRESHOLD, store.conn)
        assert run(rules, reads(0, 2)) == []
        with store.transaction() as conn:
            state.flush(conn)
        rules, state = rules_from(tmp_path, THRESHOLD, store.conn)  # a restart
        assert [a.actor for a in run(rules, reads(2, 1))] == ["E1"]
        suppressions.add(store.conn, rule_id="three_reads", match={"user.id": "E1"}, owner="o", reason="r",
                         expires_at=NOW + dt.timedelta(days=400), now=NOW)
        assert [s.rule_id for s in suppressions.read_all(store.conn)] == ["three_reads"]
    finally:
        store.close()
    assert list(tmp_path.glob("neo-auditd.db.v*.bak"))  # the copy taken before migrating
