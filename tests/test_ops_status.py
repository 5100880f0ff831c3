"""`status` over a real store file with rows in it, and files on disk for the lag."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from auditd.settings import Settings
from auditd.ops.status import (
    FileLag,
    ReloadStatus,
    SourceStatus,
    Status,
    StatusError,
    collect_status,
    record_reload,
)
from auditd.ops.status_text import render_status
from auditd.sources.base import Checkpoint
from auditd.sources.identity import FileIdentity
from auditd.sources.settings import FileSourceSettings
from auditd.store.sqlite import Store
from store_helpers import insert_incident

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # 17:00 in Shanghai


def settings_with(*names: str) -> Settings:
    return Settings(
        state_dir=Path("/var/lib/neo-auditd"),
        sources=[FileSourceSettings(name=n, paths=(), format="jsonl") for n in names],
        pseudonym=None,  # not read by status
    )


def checkpoint_for(source: str, path: Path, offset: int, *, inode: int | None = None) -> Checkpoint:
    st = os.stat(path)
    identity = FileIdentity("0" * 32, st.st_dev, st.st_ino if inode is None else inode)
    return Checkpoint(source, identity.key, str(path), offset)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "state" / "neo-auditd.db").open()
    yield store
    store.close()


@pytest.fixture
def logs(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "logs"
    folder.mkdir()
    files = {"current": 1000, "replaced": 500, "truncated": 40, "gone": 10, "crm": 300}
    out = {}
    for name, size in files.items():
        out[name] = folder / f"{name}.log"
        out[name].write_bytes(b"x" * size)
    return out


def fill(store: Store, logs: dict[str, Path]) -> None:
    checkpoints = [
        checkpoint_for("app", logs["current"], 400),  # 600 bytes behind
        checkpoint_for("app", logs["replaced"], 100, inode=1),  # the path now holds another file
        checkpoint_for("app", logs["truncated"], 900),  # copytruncate: all 40 bytes unread
        checkpoint_for("app", logs["gone"], 10),
        checkpoint_for("crm", logs["crm"], 300),  # caught up
    ]
    logs["gone"].unlink()
    with store.transaction() as conn:
        store.save_checkpoints(conn, checkpoints)
        store.bump_stats(conn, "app", events=1200, quarantined=3, skipped=1,
                         last_event_at=dt.datetime(2026, 11, 2, 8, 55, tzinfo=UTC))
        store.bump_stats(conn, "legacy", events=5, quarantined=0, skipped=0, last_event_at=None)
        insert_incident(conn, "INC-1", "T2", "open")
        insert_incident(conn, "INC-2", "T2", "contained")
        insert_incident(conn, "INC-3", "T5", "triaged")
        insert_incident(conn, "INC-4", "T5", "closed")
        insert_incident(conn, "INC-5", "T4", "dismissed")
        # playbook steps: one open past due, one open not yet due, one done past due
        from auditd.respond import steps
        from auditd.respond.due import Due
        from auditd.respond.playbook import Step

        for step_id, minutes in (("late", -30), ("later", 30), ("finished", -60)):
            steps.insert(conn, "INC-1", "T2", Step(id=step_id, kind="task", title=step_id, due=Due(60.0)),
                         NOW + dt.timedelta(minutes=minutes), NOW)
        conn.execute("UPDATE playbook_steps SET closed_at = ?, state = 'done' WHERE step_id = 'finished'",
                     (NOW.isoformat(),))
    record_reload(store.conn, False, dt.datetime(2026, 11, 2, 8, 30, tzinfo=UTC),
                  "config.yaml:3:5: rules[2].condition: unknown list 'sensitive_tabels'\nsecond problem")


def test_collects_what_the_store_knows(store: Store, logs: dict[str, Path]) -> None:
    fill(store, logs)
    status = collect_status(store.path, settings_with("app", "crm"), NOW, rules_loaded=42)

    app_files = [
        FileLag(source="app", path=str(logs["current"]), offset=400, size=1000, lag_bytes=600),
        FileLag(source="app", path=str(logs["truncated"]), offset=900, size=40, lag_bytes=40),
    ]
    assert [y.year for y in status.working_days.years] == [2026, 2027]  # the next 12 months: test_workdays_coverage.py
    assert msgspec.structs.replace(status, working_days=None, outbox=None) == Status(
        generated_at=NOW,
        store_path=str(store.path),
        sources=[
            SourceStatus(name="app", configured=True, events=1200, quarantined=3, skipped=1,
                         last_event_at=dt.datetime(2026, 11, 2, 8, 55, tzinfo=UTC), lag_bytes=640,
                         files=app_files),
            SourceStatus(name="crm", configured=True, events=0, quarantined=0, skipped=0, last_event_at=None,
                         lag_bytes=0, files=[FileLag(source="crm", path=str(logs["crm"]), offset=300, size=300,
                                                     lag_bytes=0)]),
            SourceStatus(name="legacy", configured=False, events=5, quarantined=0, skipped=0, last_event_at=None,
                         lag_bytes=0, files=[]),
        ],
        rules_loaded=42,
        open_incidents={"T2": 2, "T5": 1},
        playbook_steps_overdue=1,
        last_reload=ReloadStatus(ok=False, at=dt.datetime(2026, 11, 2, 8, 30, tzinfo=UTC),
                                 error="config.yaml:3:5: rules[2].condition: unknown list 'sensitive_tabels'"
                                       "\nsecond problem"),
    )
    for value in (status.generated_at, status.sources[0].last_event_at, status.last_reload.at):
        assert value.utcoffset() == dt.timedelta(0)


def test_files_the_globs_match_without_a_checkpoint_count_whole(store: Store, tmp_path: Path) -> None:
    """A daemon holding back before its first commit (a full disk) has read nothing into
    the store: `status` must show every matched file as unread, not "LAG 0 B"."""
    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "access.log").write_bytes(b"x" * 700)
    (folder / "access.log.1").write_bytes(b"y" * 300)  # a rotation the glob also matches
    (folder / "other.txt").write_bytes(b"z" * 50)  # not matched
    os.symlink(tmp_path / "state", folder / "access.log.2")  # never followed by status
    os.mkfifo(folder / "access.log.3")
    source = FileSourceSettings(name="app", paths=(folder / "access*.log",), format="jsonl")
    settings = Settings(state_dir=tmp_path / "state", sources=[source], pseudonym=None)

    status = collect_status(store.path, settings, NOW)
    (app,) = status.sources
    assert app.lag_bytes == 1000
    assert sorted((f.path, f.offset, f.lag_bytes, f.checkpointed) for f in app.files) == [
        (str(folder / "access.log"), 0, 700, False), (str(folder / "access.log.1"), 0, 300, False)]
    text = render_status(status)
    app_row = next(line for line in text.splitlines() if line.strip().startswith("app "))
    assert app_row.split()[-2:] == ["1000", "B"]
    assert any("access.log.1" in line and "nothing yet" in line for line in text.splitlines())

    # start_at: end at the very first start skips what is there: no backlog to show
    skipping = Settings(state_dir=tmp_path / "state", pseudonym=None,
                        sources=[FileSourceSettings(name="app", paths=source.paths, format="jsonl",
                                                    start_at="end")])
    assert collect_status(store.path, skipping, NOW).sources[0].lag_bytes == 0

    # once a file is checkpointed (by path or, after a rename, by inode) it counts from there
    with store.transaction() as conn:
        store.save_checkpoints(conn, [checkpoint_for("app", folder / "access.log", 650)])
    os.rename(folder / "access.log", folder / "access.log-20261102")
    (folder / "access.log").write_bytes(b"w" * 20)
    status = collect_status(store.path, settings, NOW)
    assert sorted((f.path, f.lag_bytes, f.checkpointed) for f in status.sources[0].files) == [
        (str(folder / "access.log"), 20, False), (str(folder / "access.log-20261102"), 50, True),
        (str(folder / "access.log.1"), 300, False)]
    assert collect_status(store.path, skipping, NOW).sources[0].lag_bytes == 20 + 50 + 300  # not a first start


def test_json_round_trip_for_the_cli(store: Store, logs: dict[str, Path]) -> None:
    fill(store, logs)
    status = collect_status(store.path, None, NOW)
    encoded = msgspec.json.encode(status)
    assert msgspec.json.decode(encoded, type=Status) == status
    assert b'"generated_at":"2026-11-02T09:00:00Z"' in encoded
    assert [s.configured for s in status.sources] == [None, None, None]  # no config to compare with


def test_render_shows_shanghai_times_and_a_table(store: Store, logs: dict[str, Path]) -> None:
    fill(store, logs)
    text = render_status(collect_status(store.path, settings_with("app", "crm"), NOW, rules_loaded=42))
    lines = text.splitlines()
    assert lines[0] == "neo-auditd status at 2026-11-02 17:00:00+08:00"
    assert "rules loaded: 42" in lines
    assert ("last reload:  FAILED at 2026-11-02 16:30:00+08:00: "
            "config.yaml:3:5: rules[2].condition: unknown list 'sensitive_tabels' (and 1 more)") in lines
    header = next(line for line in lines if line.strip().startswith("SOURCE  "))
    app = next(line for line in lines if line.strip().startswith("app "))
    assert header.split() == ["SOURCE", "EVENTS", "QUARANTINED", "SKIPPED", "LAST", "EVENT", "LAG"]
    assert app.split() == ["app", "1,200", "3", "1", "2026-11-02", "16:55:00+08:00", "(5m", "ago)", "640", "B"]
    assert app.index("1,200") == header.index("EVENTS")  # columns line up
    assert any(line.strip().startswith("legacy (not in config)") for line in lines)
    assert "open incidents: T2 2, T5 1" in lines


def test_render_says_a_reload_is_being_read_while_the_daemon_reads_one(store: Store) -> None:
    record_reload(store.conn, True, dt.datetime(2026, 11, 2, 9, 0, tzinfo=UTC), rules_in_force=17)
    status = collect_status(store.path, None, NOW)
    running = {"state": "running", "since": "2026-11-02T08:00:00+00:00", "pid": 4242, "alive": True}
    loading = msgspec.structs.replace(status, daemon=dict(running, reloading_since="2026-11-02T08:59:58+00:00"))
    assert ("last reload:  ok at 2026-11-02 17:00:00+08:00; a reload is being read since 2026-11-02 16:59:58+08:00"
            in render_status(loading).splitlines())
    for daemon in (running, dict(running, reloading_since=None),  # none in progress
                   dict(running, reloading_since="2026-11-02T08:59:58+00:00", alive=False)):  # a dead daemon's record
        line = next(x for x in render_status(msgspec.structs.replace(status, daemon=daemon)).splitlines()
                    if x.startswith("last reload:"))
        assert line == "last reload:  ok at 2026-11-02 17:00:00+08:00", daemon


def test_a_fresh_store_without_later_tables(tmp_path: Path) -> None:
    store = Store(tmp_path / "neo-auditd.db").open()  # no incidents, no playbook steps, no reload yet
    store.close()
    status = collect_status(tmp_path / "neo-auditd.db", settings_with("app"), NOW)
    assert status.sources == [SourceStatus(name="app", configured=True, events=0, quarantined=0, skipped=0,
                                           last_event_at=None, lag_bytes=0, files=[])]
    assert (status.open_incidents, status.last_reload) == ({}, None)
    text = render_status(status)
    assert "last reload:  not recorded" in text and "open incidents: none" in text


def test_successful_reload_and_wide_characters(store: Store) -> None:
    record_reload(store.conn, True, dt.datetime(2026, 11, 2, 9, 0, tzinfo=UTC), rules_in_force=17)
    with store.transaction() as conn:
        store.bump_stats(conn, "门店系统", events=7, quarantined=0, skipped=0, last_event_at=None)
    text = render_status(collect_status(store.path, None, NOW))
    assert "last reload:  ok at 2026-11-02 17:00:00+08:00" in text
    assert "rules loaded: 17" in text  # the daemon's own count, when the caller has none
    lines = text.splitlines()
    header = next(line for line in lines if line.strip().startswith("SOURCE  "))
    row = next(line for line in lines if "门店系统" in line)
    # four wide characters take eight columns: EVENTS still lines up on a terminal
    assert len(row[: row.index("7")]) + 4 == header.index("EVENTS")


def test_missing_store_and_naive_now(tmp_path: Path, store: Store) -> None:
    with pytest.raises(StatusError, match="no store there"):
        collect_status(tmp_path / "nope.db", None, NOW)
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(ValueError, match="timezone-aware"):
        collect_status(store.path, None, dt.datetime(2026, 11, 2))
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StatusError, match="cannot"):
        collect_status(tmp_path / "junk.db", None, NOW)


def test_the_outbox_backlog_says_which_messages_wait_on_purpose() -> None:
    """Right after the demo: 8 T6 notices held for tomorrow's digest read as a stuck backlog."""
    from zoneinfo import ZoneInfo

    from auditd.ops.status import OutboxStatus
    from auditd.ops.status_text import _outbox_lines

    now = dt.datetime(2026, 12, 5, 13, 0, tzinfo=dt.timezone.utc)
    box = OutboxStatus(by_state={"delivered": 44, "held": 8}, backlog=8, failed=0, possible_repeats=0,
                       oldest_waiting=now - dt.timedelta(seconds=16), failed_messages=[])
    lines = _outbox_lines(box, now, ZoneInfo("Asia/Shanghai"))
    assert lines[1] == ("  backlog:      8 messages (8 held for the next daily digest); oldest waiting since "
                        "2026-12-05 20:59:44+08:00 (16s ago)")


def test_status_says_when_the_metrics_endpoint_is_not_listening() -> None:
    """The daemon runs on without its endpoint (port taken); that was only in its log."""
    from auditd.ops.status_text import _metrics_line

    alive = {"alive": True, "state": "running"}
    taken = {**alive, "metrics": {"listen": "127.0.0.1", "port": 9464, "error": "[Errno 98] Address already in use"}}
    assert _metrics_line(taken).startswith("NOT LISTENING on 127.0.0.1:9464: [Errno 98] Address already in use")
    assert "ops.metrics.port" in _metrics_line(taken)
    up = {**alive, "metrics": {"listen": "127.0.0.1", "port": 9464, "error": None}}
    assert _metrics_line(up) == "http://127.0.0.1:9464/metrics"
    assert _metrics_line({**taken, "alive": False}) is None and _metrics_line(alive) is None
