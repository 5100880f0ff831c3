"""`neo-auditd replay` and `incidents` as a user runs them."""

from __future__ import annotations

import csv
import datetime as dt
import json
from zoneinfo import ZoneInfo
import random
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.enrich.pseudonym import create_key_file

REPO = Path(__file__).resolve().parents[1]


def neo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *args], capture_output=True, text=True)


def deployment(tmp: Path, source: str) -> Path:
    create_key_file(tmp / "pseudonym.key")
    config = tmp / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n" + source +
        "pseudonym:\n  key_file: pseudonym.key\n"
        f"directory:\n  path: {REPO / 'examples' / 'directory.yaml'}\n"
        f"rules:\n  paths: [{REPO / 'examples' / 'rules.d'}]\n"
    )
    return config


CRM_SOURCE = "  - name: crm\n    paths: [logs/access.log]\n    format: neo-crm\n"


def good_line(n: int) -> str:
    return json.dumps({
        "ts": f"2026-11-02T10:{n // 60 % 60:02d}:{n % 60:02d}.000+08:00", "app": "crm", "host": "crm-web-01",
        "req": f"r-{n:08d}", "emp": {"id": "E10001", "name": "x"}, "ip": "10.20.1.5", "op": "order.view",
        "res": {"type": "order", "id": f"O{n:09d}", "store": "S011"}, "subjects": [f"C{n:08d}"], "count": 1,
        "fields": ["items"], "masked": True, "result": "ok",
    }, ensure_ascii=False)


def garbage(kind: int, n: int) -> bytes:
    line = good_line(n)
    rnd = random.Random(n)
    return [
        line[: len(line) // 2].encode(),                                  # truncated JSON
        bytes(rnd.randrange(256) for _ in range(80)).replace(b"\n", b".") + b"\xff",  # binary
        b'{"ts": "2026-11-02T10:00:00+08:00", "op": "order.view", "x": "\xff\xfe"}',   # invalid UTF-8
        b'{"pad": "' + b"a" * (1024 * 1024) + b'"}',                     # a 1 MB line
        line.replace('"count": 1', '"count": "many"').encode(),           # wrong type
        line.replace('"op": "order.view", ', "").encode(),                # missing required field
    ][kind % 6]


def test_garbage_is_quarantined_with_reasons_and_every_valid_line_is_an_event(tmp_path: Path):
    config = deployment(tmp_path, CRM_SOURCE)
    (tmp_path / "logs").mkdir()
    lines, valid, bad = [], 0, 0
    for n in range(3000):
        if n % 10 == 7:  # 10 % garbage
            lines.append(garbage(bad, n))
            bad += 1
        else:
            lines.append(good_line(n).encode())
            valid += 1
    log = tmp_path / "logs" / "access.log"
    log.write_bytes(b"\n".join(lines) + b"\n")

    result = neo("replay", "-c", str(config), "--json", str(log))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["events"], summary["quarantined"]) == (valid, bad)

    quarantine = [json.loads(row) for row in (tmp_path / "state" / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantine) == bad
    assert all(row["reason"] and row["source"] == "crm" and row["path"] == str(log) for row in quarantine)
    offsets = {row["offset"] for row in quarantine}
    expected_offsets, pos = set(), 0
    for n, line in enumerate(lines):
        if n % 10 == 7:
            expected_offsets.add(pos)
        pos += len(line) + 1
    assert offsets == expected_offsets
    big = [row for row in quarantine if row["length"] > 1024 * 1024]
    assert len(big) == bad // 6 and all(row["truncated"] for row in big)


def test_replaying_the_same_file_again_adds_nothing(tmp_path: Path):
    config = deployment(tmp_path, CRM_SOURCE)
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "access.log"
    log.write_text("".join(good_line(n) + "\n" for n in range(500)))
    first = json.loads(neo("replay", "-c", str(config), "--json", str(log)).stdout)
    second = json.loads(neo("replay", "-c", str(config), "--json", str(log)).stdout)
    assert (first["events"], second["events"]) == (500, 0)
    # and says why it read nothing, rather than a bare '0 events' that looks like an empty file
    assert (first["already_read"], second["already_read"]) == ([], [str(log)])
    text = neo("replay", "-c", str(config), str(log)).stdout
    assert f"{log}: read into this store before, to its end; nothing new in it" in text


@pytest.mark.realdata
def test_real_pgaudit_csvlog_one_event_per_audit_record(tmp_path: Path, shared_data: Path):
    csvlog = shared_data / "pgaudit" / "postgresql-2015-08-12_161343.csv"
    with open(csvlog, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    audit_records = sum(1 for row in rows if row[13].startswith("AUDIT: "))
    multi_line = sum(1 for row in rows if row[13].startswith("AUDIT: ") and "\n" in row[13])
    assert audit_records > 100 and multi_line > 0  # the file has statements spanning lines

    config = deployment(tmp_path, "  - name: pg\n    paths: [pg/*.csv]\n    format: pgaudit\n")
    result = neo("replay", "-c", str(config), "--json", str(csvlog))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events"] == audit_records
    assert summary["quarantined"] == 0
    assert summary["skipped"] == len(rows) - audit_records


def test_example_log_incidents_list_and_show(tmp_path: Path):
    out = tmp_path / "logs"
    subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--out", str(out), "--lines", "20000",
                    "--seed", "3"], check=True, capture_output=True)
    config = deployment(tmp_path, CRM_SOURCE)
    summary = json.loads(neo("replay", "-c", str(config), "--json", str(out / "access.log")).stdout)
    assert summary["events"] == 20000 and summary["quarantined"] == 0
    assert summary["alerts"] > 0 and summary["incidents"] > 0

    listed = json.loads(neo("incidents", "list", "-c", str(config), "--json").stdout)
    assert len(listed) == summary["incidents"]
    # a table cut at --limit says so, rather than passing for every incident
    cut = neo("incidents", "list", "-c", str(config), "--limit", "1").stdout
    assert len(listed) > 1 and "the newest 1 shown; there are more (--limit N" in cut
    whole = neo("incidents", "list", "-c", str(config), "--limit", str(len(listed))).stdout
    assert "there are more" not in whole and len(json.loads(neo("incidents", "list", "-c", str(config), "--limit",
                                                                 "1", "--json").stdout)) == 1
    first = listed[0]
    shown = neo("incidents", "show", "-c", str(config), first["incident_id"], "--json")
    detail = json.loads(shown.stdout)
    assert detail["summary"]["incident_id"] == first["incident_id"] and detail["timeline"]
    text = neo("incidents", "show", "-c", str(config), first["incident_id"]).stdout
    assert first["incident_id"] in text
    # no raw customer id anywhere in what a responder sees
    assert "C0" not in json.dumps(listed) + shown.stdout + text
    missing = neo("incidents", "show", "-c", str(config), "INC-19990101-0001")
    assert missing.returncode == 1 and "no incident" in missing.stderr


def test_incidents_show_the_evidence_in_words_and_every_time_in_the_configured_zone(tmp_path: Path):
    out = tmp_path / "logs"
    subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--out", str(out), "--lines", "20000",
                    "--seed", "3"], check=True, capture_output=True)
    config = deployment(tmp_path, CRM_SOURCE)
    # the company's zone also places the shifts: a zone of Shanghai's offset under another name
    config.write_text(config.read_text() + "timezone: Asia/Hong_Kong\n")
    assert neo("replay", "-c", str(config), "--json", str(out / "access.log")).returncode == 0
    truth = [json.loads(x) for x in (out / "ground_truth.jsonl").read_text("utf-8").splitlines()]
    bulk = next(t for t in truth if t["scenario"] == "bulk_export")
    listed = json.loads(neo("incidents", "list", "-c", str(config), "--json").stdout)
    detail = None
    for incident in listed:
        shown = json.loads(neo("incidents", "show", "-c", str(config), incident["incident_id"], "--json").stdout)
        if bulk["event_ids"][0] in shown["evidence_event_ids"]:
            detail = shown
    assert detail is not None
    count = json.loads((out / "access.log").read_text("utf-8").splitlines()[bulk["lines"][0] - 1])["count"]
    assert detail["summary"]["affected_count"] == count > 40_000  # not 0: the export named no subjects
    assert {a["rule_id"] for a in detail["alerts"]} >= {"bulk_export_of_customer_data"}
    assert all(bulk["event_ids"][0] in a["event_ids"] for a in detail["alerts"])
    (evidence,) = detail["evidence"]
    assert (evidence["event_id"], evidence["actor"], evidence["action"], evidence["record_count"]) == (
        bulk["event_ids"][0], bulk["actor"], "export", count)
    text = neo("incidents", "show", "-c", str(config), detail["summary"]["incident_id"]).stdout
    local = dt.datetime.fromisoformat(bulk["time"]).astimezone(ZoneInfo("Asia/Hong_Kong")).strftime("%Y-%m-%d %H:%M")
    evidence_rows = text.split("Evidence (")[1].split("Timeline")[0]
    assert "TIME" in evidence_rows and "ENTITLED" in evidence_rows and f"{count:,}" in evidence_rows
    assert local in evidence_rows and bulk["actor"] in evidence_rows
    assert f"Affected    {count:,} customers" in text and "(Asia/Hong_Kong)" in text
    assert "+00:00" not in text.split("Timeline")[1] and "+08:00" in text.split("Timeline")[1]
    assert "C0" not in text
    table = neo("incidents", "list", "-c", str(config)).stdout
    assert table.rstrip().endswith("times Asia/Hong_Kong; * sensitive data")


def test_the_replay_progress_ends_at_100_percent(tmp_path):
    """On a terminal the bar must end at 100 %, also when the last line has no newline."""
    from auditd.runtime import load_runtime
    from auditd.opening import open_store
    from auditd.replay import replay

    config = deployment(tmp_path, CRM_SOURCE)
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "access.log"
    log.write_text("\n".join(good_line(n) for n in range(3000)))  # no newline at the end
    runtime = load_runtime(config)
    store, quarantine = open_store(runtime)
    calls: list[tuple[int, int]] = []
    try:
        replay(runtime, store, quarantine, [log], "crm", progress=lambda done, total: calls.append((done, total)))
    finally:
        store.close()
    assert calls[-1] == (log.stat().st_size, log.stat().st_size)
    assert all(done <= total for done, total in calls)


@pytest.mark.parametrize("old, new, reason", [
    ('"count": 1', '"count": 100000000000000000000000000000000000000000', "must be at most 1,000,000,000,000"),
    ('"count": 1', '"count": 1e308', "must be at most 1,000,000,000,000"),
    ('"count": 1', '"count": 9223372036854775808', "must be at most 1,000,000,000,000"),
    ('"2026-11-02T10:00:07.000+08:00"', '"9999-12-31T23:59:59.999+00:00"', "outside the years 1970 to 9998"),
    ('"2026-11-02T10:00:07.000+08:00"', '"0001-01-01T00:00:00+14:00"', "outside the years 1970 to 9998"),
    ('"2026-11-02T10:00:07.000+08:00"', '"0001-01-01T00:00:00+00:00"', "outside the years 1970 to 9998"),
])
def test_a_line_whose_numbers_would_overflow_the_store_or_the_calendar_is_quarantined(tmp_path: Path, old, new,
                                                                                      reason):
    """A hostile trial found these: one such line made `run` and `replay` die with an
    OverflowError (msgpack, or the enricher's local day) on every restart, and the good
    lines of its batch were never committed."""
    config = deployment(tmp_path, CRM_SOURCE)
    (tmp_path / "logs").mkdir()
    lines = [good_line(n) for n in range(20)]
    assert old in lines[7]
    lines[7] = lines[7].replace(old, new)
    (tmp_path / "logs" / "access.log").write_text("\n".join(lines) + "\n")
    result = neo("replay", "-c", str(config), "--json", str(tmp_path / "logs" / "access.log"))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert (summary["events"], summary["quarantined"]) == (19, 1)
    import sqlite3

    with sqlite3.connect(tmp_path / "state" / "neo-auditd.db") as conn:
        (stored_reason,) = conn.execute("SELECT reason FROM quarantine").fetchone()
    assert reason in stored_reason


def test_control_characters_from_a_log_line_reach_the_terminal_escaped(tmp_path: Path):
    """A hostile trial: an employee id with ESC sequences (clear the screen, recolour) and
    a bidirectional override was written raw by `incidents list` and `show`."""
    config = deployment(tmp_path, CRM_SOURCE)
    (tmp_path / "logs").mkdir()
    hostile = "E1\x1b[2J\x1b[31mFAKE-OK\x1b[0m\u202e"
    record = json.loads(good_line(1))
    record.update(emp={"id": hostile, "name": "x"}, op="customer.export", count=5000)
    (tmp_path / "logs" / "access.log").write_text(json.dumps(record) + "\n")
    assert neo("replay", "-c", str(config), str(tmp_path / "logs" / "access.log")).returncode == 0
    listed = neo("incidents", "list", "-c", str(config))
    assert listed.returncode == 0 and "INC-" in listed.stdout, listed.stderr
    incident = next(word for word in listed.stdout.split() if word.startswith("INC-"))
    shown = neo("incidents", "show", "-c", str(config), incident)
    for out in (listed.stdout, shown.stdout):
        assert "\x1b" not in out and "\u202e" not in out
        assert "E1\\u001b[2J\\u001b[31mFAKE-OK\\u001b[0m\\u202e" in out
    as_json = neo("incidents", "list", "-c", str(config), "--json")
    assert "\x1b" not in as_json.stdout and json.loads(as_json.stdout)[0]["actor"] == hostile


def test_a_customer_id_where_none_belongs_reaches_no_alert_text_raw(tmp_path: Path):
    """A hostile trial: a customer's id in fields that never hold one (the store, the
    employee id) was rendered raw into alert titles, which go to chat and SMS. With
    `pseudonym.id_patterns`, every such id in an alert's title, reason and output
    fields is its pseudonym, the same one the customer has everywhere else."""
    import sqlite3

    from auditd.config.located import Problems
    from auditd.enrich.pseudonym import Pseudonymiser, load_key

    config = deployment(tmp_path, CRM_SOURCE)
    config.write_text(config.read_text().replace("  key_file: pseudonym.key\n",
                                                 "  key_file: pseudonym.key\n  id_patterns: ['\\bC\\d{8}\\b']\n"))
    (tmp_path / "logs").mkdir()
    lines = []
    for n, change in enumerate(({"emp": {"id": "C00000111", "name": "x"}},
                                {"res": {"type": "customer", "id": "C00000005", "store": "C00000114"}})):
        record = json.loads(good_line(n))
        record.update(op="customer.export", count=5000, **change)
        lines.append(json.dumps(record) + "\n")
    (tmp_path / "logs" / "access.log").write_text("".join(lines))
    done = neo("replay", "-c", str(config), str(tmp_path / "logs" / "access.log"))
    assert done.returncode == 0, done.stderr
    pseudonym = Pseudonymiser(load_key(tmp_path / "pseudonym.key", Problems()))
    with sqlite3.connect(tmp_path / "state" / "neo-auditd.db") as conn:
        docs = [json.loads(doc) for (doc,) in conn.execute("SELECT doc FROM alerts")]
    words = [json.dumps([d["title"], d.get("reason"), d.get("output_fields")], ensure_ascii=False) for d in docs]
    assert words, "no alert to look at"
    assert not any(raw in w for w in words for raw in ("C00000111", "C00000114")), words
    assert any(pseudonym("C00000111") in w for w in words) and any(pseudonym("C00000114") in w for w in words), words
    # the actor too: it keys the incident, whose timeline, register entry and reports name it
    assert {d["actor"] for d in docs} == {pseudonym("C00000111"), "E10001"}
    listed = neo("incidents", "list", "-c", str(config), "--json")
    assert "C00000111" not in listed.stdout and pseudonym("C00000111") in listed.stdout
    with sqlite3.connect(tmp_path / "state" / "neo-auditd.db") as conn:
        timeline = " ".join(str(row) for row in conn.execute("SELECT * FROM incident_timeline"))
    assert "C00000111" not in timeline and "C00000114" not in timeline
    for incident in json.loads(listed.stdout):  # what `incidents show` says of the evidence
        shown = neo("incidents", "show", "-c", str(config), incident["incident_id"])
        assert shown.returncode == 0 and "C00000111" not in shown.stdout and "C00000114" not in shown.stdout, shown.stdout


def test_a_file_still_being_written_keeps_its_unfinished_last_line_for_the_next_replay(tmp_path: Path):
    """A hostile trial: replaying a log the application was still writing cut its last
    line in two; each half was quarantined and that event never became one."""
    import os

    config = deployment(tmp_path, CRM_SOURCE)
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "access.log"
    whole = "".join(good_line(n) + "\n" for n in range(3))
    log.write_text(whole + good_line(3)[:40])  # written just now, the last line half-way
    first = neo("replay", "-c", str(config), "--json", str(log))
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["events"], summary["quarantined"], summary["unfinished"]) == (3, 0, [str(log)])
    with log.open("a") as fh:
        fh.write(good_line(3)[40:] + "\n")  # the application finishes the line
    second = json.loads(neo("replay", "-c", str(config), "--json", str(log)).stdout)
    assert (second["events"], second["quarantined"], second["unfinished"]) == (1, 0, [])

    old = tmp_path / "logs" / "old.log"  # a finished file whose last line has no newline: a record
    old.write_text(good_line(10))
    os.utime(old, (0, 1_700_000_000))
    third = json.loads(neo("replay", "-c", str(config), "--json", str(old)).stdout)
    assert (third["events"], third["unfinished"]) == (1, [])


def test_a_line_longer_than_the_sources_max_record_bytes_is_quarantined_once(tmp_path: Path):
    """A hostile trial: one 50 MB line was cut into 16 MiB pieces, each quarantined,
    counted and stored as a record of its own (three for one line); replay did not
    even use the source's limit."""
    source = CRM_SOURCE + "    read_chunk_bytes: 65536\n    max_record_bytes: 1048576\n"
    config = deployment(tmp_path, source)
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "access.log"
    with open(log, "w") as fh:
        fh.write(good_line(1) + "\n" + '{"pad": "' + "a" * (9 * 1024 * 1024) + '"}\n' + good_line(2) + "\n")
    result = neo("replay", "-c", str(config), "--json", str(log))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert (summary["events"], summary["quarantined"]) == (2, 1)
    import sqlite3

    with sqlite3.connect(tmp_path / "state" / "neo-auditd.db") as conn:
        rows = conn.execute("SELECT offset, reason FROM quarantine").fetchall()
    assert [offset for offset, _ in rows] == [len(good_line(1)) + 1]
    assert rows[0][1].startswith("expected a record of at most max_record_bytes (1048576), found a longer one")


def test_the_daemon_reads_nothing_again_of_a_file_replayed_with_the_sources_fingerprint_bytes(tmp_path: Path):
    """Replay named files by the first 1024 bytes whatever the source's fingerprint_bytes,
    so with another setting the daemon did not know a replayed file and read it again."""
    from auditd.opening import open_store
    from auditd.runtime import load_runtime
    from auditd.sources.tail import FileTailer

    config = deployment(tmp_path, CRM_SOURCE + "    fingerprint_bytes: 64\n")
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "access.log"
    log.write_text("".join(good_line(n) + "\n" for n in range(30)))
    result = neo("replay", "-c", str(config), "--json", str(log))
    assert result.returncode == 0 and json.loads(result.stdout)["events"] == 30, result.stderr[-2000:]
    runtime = load_runtime(config)
    store, _ = open_store(runtime)
    try:
        (source,) = runtime.settings.sources
        tailer = FileTailer(source, runtime.framers["crm"](), store.load_checkpoints("crm"), first_start=False)
        try:
            assert [record for batch in tailer.poll(1000) for record in batch.records] == []
        finally:
            tailer.stop()
    finally:
        store.close()
