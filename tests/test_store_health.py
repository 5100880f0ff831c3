"""A damaged or missing store is never papered over: refused with what to do and exit
65 (which systemd does not restart), checked at start (in the background when large),
backed up online and restored."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditd.enrich.pseudonym import create_key_file
from auditd.ops.status import collect_status
from auditd.ops.status_text import render_status
from auditd.store import health
from auditd.store.sqlite import Store
from auditd.store.times import to_db

LINE = ('{{"ts":"2026-11-02T10:00:{s:02d}.000+08:00","app":"crm","host":"h","req":"r-{n:08d}",'
        '"emp":{{"id":"E10001","name":"x"}},"ip":"10.0.0.1","op":"customer.delete",'
        '"res":{{"type":"customer","id":"C{n:08d}","store":"S011"}},"subjects":["C{n:08d}"],"count":1,'
        '"fields":["name"],"masked":true,"result":"ok"}}\n')


def setup(tmp_path: Path, extra: str = "") -> Path:
    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "access.log").write_text("".join(LINE.format(s=n % 60, n=n) for n in range(200)))
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\n"
                      "sources:\n  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n"
                      "    poll_interval_s: 0.1\n"
                      "pseudonym:\n  key_file: pseudonym.key\n"
                      "ops:\n  metrics: {enabled: false}\n" + extra)
    return config


def neo(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def refused(config: Path, *extra: str) -> subprocess.CompletedProcess:
    """`run` that must stop by itself (a refused store) within a minute."""
    return neo("run", "-c", str(config), *extra, cwd=config.parent, timeout=60)


def run_briefly(config: Path, *extra: str) -> subprocess.CompletedProcess:
    """`run` until it is up and has committed the log (or exits by itself), then SIGTERM."""
    out_path, err_path = config.parent / "run.out", config.parent / "run.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(config), *extra],
                                stdout=out, stderr=err)
    db = config.parent / "state" / "neo-auditd.db"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if '"message":"started"' in out_path.read_text():
            try:  # read-only: never create the file the daemon is to judge; closed, not leaked
                with contextlib.closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True,
                                                        timeout=1)) as conn:
                    if conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_segments").fetchone()[0] >= 200:
                        break
            except sqlite3.Error:
                pass
        time.sleep(0.1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_path.read_text(), err_path.read_text())


def test_a_store_emptied_after_a_run_is_refused_until_the_operator_says_new_store(tmp_path):
    config = setup(tmp_path)
    assert run_briefly(config).returncode == 0
    db = tmp_path / "state" / "neo-auditd.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        alerts_before = conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
    assert alerts_before > 0
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"")  # a zero-byte store: what a careless restore or a full disk leaves
    empty = refused(config)
    assert empty.returncode == health.EX_DATAERR
    assert "is empty (0 bytes), but neo-auditd ran here before" in empty.stderr
    assert "--new-store" in empty.stderr and "Traceback" not in empty.stderr
    assert db.stat().st_size == 0  # nothing written over it
    db.unlink()
    missing = refused(config)
    assert missing.returncode == health.EX_DATAERR and "is missing" in missing.stderr
    fresh = run_briefly(config, "--new-store")
    assert fresh.returncode == 0, fresh.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == alerts_before


def corrupt(db: Path) -> None:
    """Scribble over the headers of b-tree pages, as a failing disk might (the middle of
    a blob would go unseen by any structural check)."""
    with open(db, "r+b") as fh:
        head = fh.read(100)
        page_size = int.from_bytes(head[16:18], "big") or 65536
        pages = max(1, db.stat().st_size // page_size)
        for page in range(1, min(pages, 12)):  # page 1 (the schema) stays readable
            fh.seek(page * page_size)
            fh.write(b"\x0d\xff\xff\xff" + os.urandom(12))


def test_a_damaged_store_is_refused_with_exit_65_and_store_check_says_so(tmp_path):
    config = setup(tmp_path)
    assert run_briefly(config).returncode == 0
    db = tmp_path / "state" / "neo-auditd.db"
    store = Store(db).open()
    store.close()
    ok = neo("store", "check", "-c", str(config), "--json", cwd=tmp_path)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    corrupt(db)
    damaged = refused(config)
    assert damaged.returncode == health.EX_DATAERR, damaged.stderr
    assert str(db) in damaged.stderr and "restore the latest backup" in damaged.stderr
    assert "Traceback" not in damaged.stderr
    checked = neo("store", "check", "-c", str(config), cwd=tmp_path)
    assert checked.returncode == health.EX_DATAERR


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    config = setup(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "neo-auditd.db").write_text("this is not a database\n")
    result = refused(config)
    assert result.returncode == health.EX_DATAERR and "is not an SQLite database" in result.stderr


def test_another_stores_file_in_place_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    config_a, config_b = setup(a), setup(b)
    assert run_briefly(config_a).returncode == 0 and run_briefly(config_b).returncode == 0
    db = a / "state" / "neo-auditd.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes((b / "state" / "neo-auditd.db").read_bytes())
    result = refused(config_a)
    assert result.returncode == health.EX_DATAERR and "is not the store neo-auditd kept here" in result.stderr


def test_a_large_store_is_checked_in_the_background_with_progress_in_status(tmp_path):
    import datetime as dt

    config = setup(tmp_path, "store: {startup_check_max_bytes: 0}\n")
    assert run_briefly(config).returncode == 0  # the store exists; now it counts as large
    db = tmp_path / "state" / "neo-auditd.db"
    launched = to_db(dt.datetime.now(dt.timezone.utc))
    proc = subprocess.Popen([sys.executable, "-m", "auditd.cli", "run", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            check = collect_status(db, None, dt.datetime.now(dt.timezone.utc)).store_check
            if check is not None and check["started_at"] > launched:
                seen.append(check)
                if check["state"] != "running":
                    break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert "store checked in the background" in out
    status = collect_status(db, None, dt.datetime.now(dt.timezone.utc))
    assert status.store_check["state"] == "ok"
    assert status.store_check["tables_done"] == status.store_check["tables_total"] > 10
    assert "store check:  ok" in render_status(status)
    assert seen[0]["tables_done"] <= seen[-1]["tables_done"]  # progress, as status showed it


def test_damage_found_in_the_background_stops_the_daemon_with_65(tmp_path):
    db = tmp_path / "neo.db"
    store = Store(db).open()
    store.close()
    found = []
    check = health.BackgroundCheck(db, on_damage=found.append)
    corrupt(db)
    check.start()
    check.join(60)
    assert found and found[0].state == "damaged"
    # and the daemon's side: a damage report stops it with 65
    from auditd.opening import DamageRelay

    stopped = []
    relay = DamageRelay()
    relay(found[0])  # before the daemon exists: kept
    relay.connect(stopped.append)
    assert stopped == [found[0]]


def test_backup_while_writing_is_consistent_and_restores(tmp_path):
    config = setup(tmp_path)
    assert run_briefly(config).returncode == 0
    backup = tmp_path / "backup.db"
    made = neo("store", "backup", "-c", str(config), str(backup), "--json", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert backup.stat().st_mode & 0o777 == 0o600
    again = neo("store", "backup", "-c", str(config), str(backup), cwd=tmp_path)
    assert again.returncode == 1 and "never overwrites" in again.stderr
    below_a_file = neo("store", "backup", "-c", str(config), str(backup / "copy.db"), cwd=tmp_path)
    assert below_a_file.returncode == 74 and "Not a directory" in below_a_file.stderr
    assert "Traceback" not in below_a_file.stderr
    # restore as the README says: stop, copy over, remove -wal/-shm, start
    db = tmp_path / "state" / "neo-auditd.db"
    corrupt(db)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(backup.read_bytes())
    restarted = run_briefly(config)
    assert restarted.returncode == 0, restarted.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_segments").fetchone()[0] == 200  # none twice


@pytest.mark.parametrize("exit_code", [health.EX_DATAERR, 78])
def test_systemd_does_not_restart_on_a_store_or_config_error(exit_code):
    unit = (Path(__file__).resolve().parents[1] / "systemd" / "neo-auditd.service").read_text()
    (line,) = [l for l in unit.splitlines() if l.startswith("RestartPreventExitStatus=")]
    assert str(exit_code) in line.split("=", 1)[1].split()


def test_a_backup_into_a_folder_not_made_yet_creates_it(tmp_path):
    """As the README's backup command is typed on a fresh machine: no traceback."""
    db = tmp_path / "neo.db"
    Store(db).open().close()
    target = tmp_path / "backups" / "2026-12-05" / "neo-auditd.db"
    size, _ = health.backup(db, target)
    assert target.stat().st_size == size and target.stat().st_mode & 0o777 == 0o600
    assert not list(target.parent.glob("*.partial"))


def test_a_backup_the_target_cannot_take_is_an_error_not_a_traceback(tmp_path):
    """A target below a file (or on a full or read-only disk) fails with the reason and
    exit 74, and leaves no half-written copy behind."""
    db = tmp_path / "neo.db"
    Store(db).open().close()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(health.BackupFailed, match="cannot back up .* to .*not-a-folder/neo.db: Not a directory"):
        health.backup(db, blocker / "neo.db")


def test_a_backup_onto_a_full_disk_leaves_nothing(tmp_path):
    db = tmp_path / "neo.db"
    store = Store(db).open()
    with store.transaction() as conn:  # ~2 MB of pages: more than the small disk holds
        conn.execute("CREATE TABLE filler (x BLOB)")
        conn.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(4096),) for _ in range(500)])
    store.close()
    disk = tmp_path / "small"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()})")
    try:
        with pytest.raises(health.BackupFailed, match="cannot back up"):
            health.backup(db, disk / "neo.db")
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)
