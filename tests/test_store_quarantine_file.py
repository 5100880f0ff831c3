"""The quarantine file mirrors the table, also after a crash between commit and append."""

from __future__ import annotations

import json
from pathlib import Path

from auditd.decode.quarantine import Quarantined
from auditd.store.quarantine_file import QuarantineFile
from auditd.store.sqlite import Store


def quarantine(store: Store, *offsets: int) -> list[Quarantined]:
    items = [Quarantined.of("crm", "/var/log/crm/access.log", o, "invalid JSON", b"{\xff" + bytes([o % 256]))
             for o in offsets]
    with store.transaction() as conn:
        store.insert_quarantine(conn, items)
    return items


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_rows_committed_but_never_appended_are_caught_up_once(tmp_path: Path):
    store = Store(tmp_path / "db").open()
    qfile = QuarantineFile(tmp_path / "quarantine.jsonl", store)
    assert qfile.catch_up() == 0
    qfile.append(quarantine(store, 10, 20))
    quarantine(store, 30)  # committed, then the process died before the file was appended

    restarted = QuarantineFile(tmp_path / "quarantine.jsonl", store)
    assert restarted.catch_up() == 1
    assert restarted.catch_up() == 0  # nothing twice
    rows = lines(tmp_path / "quarantine.jsonl")
    assert [r["offset"] for r in rows] == [10, 20, 30]
    assert rows[0]["encoding"] == "base64" and rows[0]["reason"] == "invalid JSON"
    assert (tmp_path / "quarantine.jsonl").stat().st_mode & 0o777 == 0o600  # raw lines hold PI
    store.close()


def test_a_torn_last_line_does_not_stop_the_catch_up(tmp_path: Path):
    store = Store(tmp_path / "db").open()
    qfile = QuarantineFile(tmp_path / "quarantine.jsonl", store)
    qfile.append(quarantine(store, 1))
    quarantine(store, 2)
    with open(tmp_path / "quarantine.jsonl", "ab") as fh:
        fh.write(b'{"seq": 2, "at": "2026')  # the crash cut the write short
    assert QuarantineFile(tmp_path / "quarantine.jsonl", store).catch_up() == 1
    *whole, last = (tmp_path / "quarantine.jsonl").read_text().splitlines()
    assert json.loads(last)["offset"] == 2  # on a line of its own, after the torn fragment
    assert json.loads(whole[0])["offset"] == 1
    store.close()
