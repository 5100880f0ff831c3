"""The store's schema: numbered migrations, a store of 0.1.0 opened by this version,
and a store of a newer version refused."""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.correlate.timeline import verify_timeline
from auditd.errors import EX_CONFIG
from auditd.store import migrations
from auditd.store.migrations import LATEST, MIGRATIONS, StoreTooNew, migrate, schema_version
from auditd.store.sqlite import Store
from auditd.store.times import WIDTH

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "store-0.1.0"


def test_migrations_are_numbered_without_gaps_and_one_file_each():
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))
    names = sorted(p.name for p in Path(migrations.__file__).parent.iterdir()
                   if p.suffix in (".sql", ".py") and p.name[0].isdigit())
    assert [int(n[:4]) for n in names] == list(range(1, LATEST + 1))


def test_a_new_store_is_created_at_the_latest_version_without_a_backup(tmp_path):
    store = Store(tmp_path / "neo.db").open()
    assert schema_version(store.conn) == LATEST
    store.close()
    assert not list(tmp_path.glob("*.bak"))
    assert Store(tmp_path / "neo.db").open().conn.execute("PRAGMA user_version").fetchone()[0] == LATEST


def test_a_failing_migration_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "neo.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, path)
    conn.execute("PRAGMA user_version = 2")  # pretend 3.. are pending
    conn.execute("DROP TABLE jobs")

    def broken(c):
        c.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("disk on fire")

    # 3..5 apply, then 0006 fails: everything of this attempt must roll back (later ones never run)
    bad = tuple(m if m.version != 6 else migrations.Migration(m.version, m.name, broken) for m in MIGRATIONS)
    monkeypatch.setattr(migrations, "MIGRATIONS", bad)
    conn.execute("DROP TABLE incident_changes")
    conn.execute("DROP TABLE change_cursors")
    conn.execute("DROP TABLE detector_state")
    conn.execute("DROP TABLE detector_rules")
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrate(conn, path)
    assert schema_version(conn) == 2
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "half_done" not in tables and "incident_changes" not in tables
    assert (tmp_path / "neo.db.v2.bak").exists()  # taken before anything was applied


def test_a_store_newer_than_the_code_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "neo.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    with pytest.raises(StoreTooNew, match=r"newer than this neo-auditd knows.*restore"):
        Store(path).open()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == LATEST + 1


def test_cli_says_a_newer_store_is_not_ours_with_exit_78(tmp_path):
    state = _unpack_fixture(tmp_path)
    conn = sqlite3.connect(state / "neo-auditd.db")
    conn.execute(f"PRAGMA user_version = {LATEST + 7}")
    conn.close()
    done = _cli("incidents", "list", "-c", str(tmp_path / "config.yaml"), cwd=tmp_path)
    assert done.returncode == EX_CONFIG, done.stderr
    assert "newer than this neo-auditd knows" in done.stderr and "Traceback" not in done.stderr


# -- the store of 0.1.0 --------------------------------------------------------------------

def _unpack_fixture(tmp_path: Path) -> Path:
    for name in ("config.yaml", "directory.yaml", "pseudonym.key"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    (tmp_path / "pseudonym.key").chmod(0o600)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "access.log").write_bytes(gzip.decompress((FIXTURE / "access.log.gz").read_bytes()))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "neo-auditd.db").write_bytes(gzip.decompress((FIXTURE / "neo-auditd.db.gz").read_bytes()))
    return state


def _snapshot(db: Path) -> dict[str, list]:
    """What 0.1.0 kept, read with plain SQL, in a form that must survive migration."""
    conn = sqlite3.connect(db)
    q = lambda sql: [tuple(r) for r in conn.execute(sql)]  # noqa: E731
    snap = {
        "checkpoints": q("SELECT source, fingerprint, path, offset, tail_hash, cursor FROM checkpoints ORDER BY 1, 2"),
        "alerts": q("SELECT alert_id, incident_id, rule_id, severity, timestamp, doc FROM alerts ORDER BY 1"),
        "incidents": q("SELECT incident_id, group_key, actor, title, tier, auto_tier, status, assignee, severity,"
                       " first_seen, last_seen, discovered_at, alert_count, affected_count, band, rules,"
                       " categories, timeline_seq, timeline_head FROM incidents ORDER BY 1"),
        "timeline": q("SELECT incident_id, seq, at, kind, who, data, prev_hash, hash FROM incident_timeline"
                      " ORDER BY 1, 2"),
        "subjects": q("SELECT incident_id, subject_id FROM incident_subjects ORDER BY 1, 2"),
        "quarantine": q("SELECT seq, source, path, offset, reason, length, record FROM quarantine ORDER BY 1"),
        "evidence_ids": q("SELECT event_id FROM evidence ORDER BY 1"),
        "events": q("SELECT SUM(count) FROM event_segments"),
    }
    conn.close()
    return snap


def test_the_store_of_0_1_0_opens_migrated_and_keeps_everything(tmp_path):
    state = _unpack_fixture(tmp_path)
    db = state / "neo-auditd.db"
    before = _snapshot(db)
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 0
    assert before["incidents"] and before["alerts"] and before["quarantine"] and before["checkpoints"]

    store = Store(db).open()
    assert schema_version(store.conn) == LATEST
    assert (state / "neo-auditd.db.v0.bak").exists()
    store.close()
    after = _snapshot(db)
    assert after == before

    conn = sqlite3.connect(db)
    for (incident_id,) in conn.execute("SELECT incident_id FROM incidents"):
        assert verify_timeline(conn, incident_id) == (True, None)
    # one time representation: every stored time is fixed-width UTC text
    for table, column in (("event_segments", "first_ts"), ("event_segments", "last_ts"), ("evidence", "ts"),
                          ("checkpoints", "updated_at"), ("quarantine", "at"), ("source_stats", "updated_at"),
                          ("incidents", "discovered_at"), ("alerts", "timestamp"), ("incident_changes", "at")):
        widths = {len(v) for (v,) in conn.execute(f"SELECT {column} FROM {table}")}
        assert widths == {WIDTH}, (table, column, widths)
        assert all(v.endswith("+00:00") for (v,) in conn.execute(f"SELECT {column} FROM {table}"))
    # every incident of record is known to the change log's consumers
    logged = {r[0] for r in conn.execute("SELECT incident_id FROM incident_changes WHERE cause = 'migrated'")}
    assert logged == {r[0] for r in before["incidents"]}
    conn.close()

    store = Store(db).open()  # the evidence and events read back with their times
    events = list(store.iter_events())
    assert len(events) == before["events"][0][0]
    cited = store.evidence([r[0] for r in before["evidence_ids"]])
    assert {e.event_id for e in cited} == {r[0] for r in before["evidence_ids"]}
    store.close()


@pytest.mark.slow
def test_replaying_the_same_log_into_the_migrated_store_raises_nothing_new(tmp_path):
    state = _unpack_fixture(tmp_path)
    before = _snapshot(state / "neo-auditd.db")
    done = _cli("replay", "-c", str(tmp_path / "config.yaml"), "--json", str(tmp_path / "logs" / "access.log"),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # The log was unpacked anew (another inode than the one checkpointed): its content
    # proves it is the file replayed before, so nothing is read twice.
    assert (summary["events"], summary["quarantined"], summary["alerts"], summary["incidents_opened"]) == (0, 0, 0, 0)
    after = _snapshot(state / "neo-auditd.db")
    assert after == before
    listed = _cli("incidents", "list", "-c", str(tmp_path / "config.yaml"), "--json", "--limit", "1000", cwd=tmp_path)
    assert len(json.loads(listed.stdout)) == len(before["incidents"])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
