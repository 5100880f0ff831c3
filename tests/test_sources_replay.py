"""ReplaySource: every record of the given files once, in big reads, resumable."""

from __future__ import annotations

import os

from auditd.sources.framing import CsvFramer, LineFramer
from auditd.sources.replay import ReplaySource
from auditd.sources.tail import ReplaySource as ReplayFromTail


def records_of(batches) -> list[bytes]:
    return [record for batch in batches for record in batch.records]


def test_replay_reads_every_record_including_an_unterminated_last_one(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"a1\na2\r\n")
    b.write_bytes(b"b1\nb2 unterminated")
    os.utime(b, (0, 1_700_000_000))  # finished long ago: its unterminated last line is a record
    replay = ReplaySource("crm", [a, b], LineFramer())
    assert replay.total_bytes() == a.stat().st_size + b.stat().st_size
    batches = list(replay.batches(1000))
    assert records_of(batches) == [b"a1", b"a2", b"b1", b"b2 unterminated"]
    assert [batch.checkpoint.offset for batch in batches] == [7, 3, b.stat().st_size]
    assert batches[-1].offsets == [3]
    assert replay.bytes_done() == replay.total_bytes()


def test_an_unterminated_last_line_of_a_file_written_just_now_is_left_for_the_next_replay(tmp_path):
    log = tmp_path / "b.log"
    log.write_bytes(b"b1\nb2 being writ")
    now = log.stat().st_mtime
    replay = ReplaySource("crm", [log], LineFramer(), clock=lambda: now + 4.9)  # within the 5 s grace
    batches = list(replay.batches(1000))
    assert records_of(batches) == [b"b1"] and batches[-1].checkpoint.offset == 3
    assert replay.unfinished == [str(log)]
    later = ReplaySource("crm", [log], LineFramer(), clock=lambda: now + 5.1)  # no longer written: a record
    assert records_of(list(later.batches(1000))) == [b"b1", b"b2 being writ"] and later.unfinished == []


def test_replay_splits_at_max_records_with_checkpoints_on_record_boundaries(tmp_path):
    log = tmp_path / "a.log"
    lines = [b"line %d" % i for i in range(25)]
    log.write_bytes(b"".join(line + b"\n" for line in lines))
    batches = list(ReplaySource("crm", [log], LineFramer(), chunk_bytes=64).batches(10))
    assert records_of(batches) == lines
    data = log.read_bytes()
    for batch in batches:
        assert len(batch) <= 10
        assert data[batch.checkpoint.offset - 1: batch.checkpoint.offset] == b"\n"
        assert [data[o: o + len(r)] for r, o in zip(batch.records, batch.offsets)] == batch.records


def test_replay_rejects_a_record_over_max_record_bytes_once_and_skips_to_its_end(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"one\n" + b"H" * 1000 + b"\ntwo\n" + b"T" * 300)
    os.utime(log, (0, 1_700_000_000))
    batches = list(ReplaySource("crm", [log], LineFramer(), chunk_bytes=64, max_record_bytes=256).batches(10))
    assert records_of(batches) == [b"one", b"two"]
    rejected = [r for batch in batches for r in batch.rejected]
    assert [r.offset for r in rejected] == [4, 1009]  # an unended last one too
    assert rejected[0].data.strip(b"H") == b"" and len(rejected[0].data) >= 256
    assert batches[-1].checkpoint.offset == log.stat().st_size


def test_replay_resumes_past_its_own_checkpoint(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    first = list(ReplaySource("crm", [log], LineFramer()).batches(2))
    done = {first[0].checkpoint.fingerprint: first[0].checkpoint}
    again = ReplaySource("crm", [log], LineFramer(), done)
    assert records_of(again.batches(100)) == [b"three"] and again.already_read == []
    done = {b.checkpoint.fingerprint: b.checkpoint for b in first}
    whole = ReplaySource("crm", [log], LineFramer(), done)
    assert records_of(whole.batches(100)) == [] and whole.already_read == [str(log)]


def test_replay_keeps_csv_records_that_span_chunks_whole(tmp_path):
    log = tmp_path / "postgres.csv"
    record = b'2026-11-02,"SELECT a,\n  b FROM t WHERE x = ""y""",end'
    log.write_bytes((record + b"\n") * 50)
    batches = ReplaySource("pg", [log], CsvFramer(), chunk_bytes=16).batches(7)
    assert records_of(batches) == [record] * 50


def test_the_tailer_module_offers_replay_too():
    assert ReplayFromTail is ReplaySource


def test_a_copy_of_a_replayed_file_resumes_where_the_original_stopped(tmp_path):
    """Restored from an archive, a log is another inode with the same bytes: reading it
    again would store its events twice. A file that only shares the first line is new."""
    from auditd.sources.framing import FRAMERS

    original = tmp_path / "a.log"
    original.write_bytes(b"".join(b"line %d\n" % i for i in range(100)))
    first = ReplaySource("s", [original], FRAMERS["lines"](), {})
    batches = list(first.batches(1000))
    done = {b.checkpoint.fingerprint: b.checkpoint for b in batches}
    copy = tmp_path / "restored.log"
    copy.write_bytes(original.read_bytes() + b"line 100\n")
    again = list(ReplaySource("s", [copy], FRAMERS["lines"](), done).batches(1000))
    assert [r for b in again for r in b.records] == [b"line 100"]
    other = tmp_path / "other.log"
    other.write_bytes(b"line 0\n" + b"".join(b"else %d\n" % i for i in range(99)))
    fresh = list(ReplaySource("s", [other], FRAMERS["lines"](), done).batches(1000))
    assert sum(len(b.records) for b in fresh) == 100
