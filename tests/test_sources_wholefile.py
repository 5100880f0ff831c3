"""Whole files: gzip and CloudTrail documents are read once each, when complete, and a
broken, truncated or exploding file is reported, never fatal and never held in memory."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import zlib
from collections import Counter
from pathlib import Path

import pytest

from auditd.sources.base import NO_FILE, Checkpoint
from auditd.sources.framing import JsonDocumentFramer, LineFramer
from auditd.sources.replay import ReplaySource
from auditd.sources.settings import FileSourceSettings
from auditd.sources.tail import FileTailer
from auditd.sources.wholefile import DONE, Limits, pieces

GRACE_S = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A tailer of whole files and what it committed (records, rejections, checkpoints)."""

    def __init__(self, *patterns: Path, framer=LineFramer, **options) -> None:
        options = {"use_inotify": False, "poll_interval_s": 1.0, "drain_grace_s": GRACE_S, **options}
        self.settings = FileSourceSettings(name="aws", paths=patterns, format="x", **options)
        self.framer = framer
        self.clock = Clock()
        self.checkpoints: dict[str, Checkpoint] = {}
        self.records: list[bytes] = []
        self.rejected: list = []
        self.tailer = self.new_tailer()

    def new_tailer(self) -> FileTailer:
        return FileTailer(self.settings, self.framer(), dict(self.checkpoints), first_start=not self.checkpoints,
                          clock=self.clock)

    def poll(self, max_records: int = 1000, *, commit: bool = True) -> list:
        self.clock.now += 1.0
        batches = [b for b in self.tailer.poll(max_records) if b.fingerprint != NO_FILE]
        if commit:
            for batch in batches:
                self.records += batch.records
                self.rejected += batch.rejected
                self.checkpoints[batch.checkpoint.fingerprint] = batch.checkpoint
                for key in batch.forget:
                    self.checkpoints.pop(key, None)
        return batches

    def settle(self, rounds: int = 6, max_records: int = 1000) -> None:
        for _ in range(rounds):
            self.poll(max_records)

    def crash(self) -> None:
        self.tailer.stop()
        self.tailer = self.new_tailer()


def lines(n: int, prefix: str = "rec") -> list[bytes]:
    return [b"%s %05d" % (prefix.encode(), i) for i in range(n)]


def write_gz(path: Path, records: list[bytes]) -> None:
    path.write_bytes(gzip.compress(b"".join(r + b"\n" for r in records)))


def cloudtrail_doc(n: int, start: int = 0) -> bytes:
    records = [{"eventTime": "2026-11-02T01:00:00Z", "eventName": f"Get{i}", "eventSource": "s3.amazonaws.com"}
               for i in range(start, start + n)]
    return json.dumps({"Records": records}).encode()


@pytest.fixture
def old_mtime():
    """Files written by a test are 'new' by the wall clock; age them so the quiet time has passed."""
    def age(path: Path) -> None:
        os.utime(path, (os.stat(path).st_atime, os.stat(path).st_mtime - 3600))
    return age


def test_a_gzip_file_named_by_the_glob_is_read_once_when_quiet(tmp_path):
    write_gz(tmp_path / "a.jsonl.gz", lines(5))
    rig = Rig(tmp_path / "*.jsonl.gz")
    rig.poll()
    assert rig.records == []  # just written: it may still grow
    rig.settle()
    assert rig.records == lines(5)
    (checkpoint,) = rig.checkpoints.values()
    assert checkpoint.cursor == DONE and checkpoint.offset == (tmp_path / "a.jsonl.gz").stat().st_size
    rig.crash()
    shutil.copy(tmp_path / "a.jsonl.gz", tmp_path / "copy.jsonl.gz")  # same bytes, another inode
    os.rename(tmp_path / "a.jsonl.gz", tmp_path / "renamed.jsonl.gz")
    rig.settle()
    assert rig.records == lines(5)  # never read twice
    rig.tailer.stop()


def test_a_gzip_file_that_grows_is_read_only_once_it_has_stopped(tmp_path):
    path = tmp_path / "a.json.gz"
    rig = Rig(tmp_path / "*.json.gz")
    data = gzip.compress(b"".join(r + b"\n" for r in lines(50)))
    path.write_bytes(data[:20])
    for end in range(40, len(data), 20):  # a slow writer, one chunk per poll
        rig.poll()
        with open(path, "ab") as fh:
            fh.write(data[end - 20:end])
    with open(path, "ab") as fh:
        fh.write(data[(len(data) - 1) // 20 * 20:])
    assert rig.records == [] and rig.rejected == []
    rig.settle()
    assert rig.records == lines(50) and rig.rejected == []
    rig.tailer.stop()


def test_a_plain_glob_never_reads_compressed_rotations(tmp_path):
    (tmp_path / "access.log").write_bytes(b"live\n")
    write_gz(tmp_path / "access.log.2.gz", [b"old, read before as access.log.1"])
    rig = Rig(tmp_path / "access.log*")
    rig.settle()
    assert rig.records == [b"live"]
    rig.tailer.stop()


def test_a_truncated_gzip_keeps_its_complete_records_and_quarantines_the_rest(tmp_path, old_mtime):
    data = gzip.compress(b"".join(r + b"\n" for r in lines(2000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    old_mtime(tmp_path / "cut.jsonl.gz")
    rig = Rig(tmp_path / "*.gz")
    rig.settle()
    assert 0 < len(rig.records) < 2000 and rig.records == lines(2000)[: len(rig.records)]
    (rejected,) = rig.rejected
    assert rejected.reason.startswith("truncated gzip: expected the end of the stream, found the end of the file")
    rig.tailer.stop()


def test_corrupt_gzip_and_data_after_it_are_reported(tmp_path, old_mtime):
    good = gzip.compress(b"one\ntwo\n")
    (tmp_path / "bad.gz").write_bytes(good[:12] + b"\x00garbage" * 20)
    (tmp_path / "tail.gz").write_bytes(good + b"not gzip")
    for name in ("bad.gz", "tail.gz"):
        old_mtime(tmp_path / name)
    rig = Rig(tmp_path / "*.gz")
    rig.settle()
    assert rig.records == [b"one", b"two"]
    reasons = sorted(r.reason for r in rig.rejected)
    assert reasons[0].startswith("expected another gzip member after 8 inflated bytes, found other data")
    assert reasons[1].startswith("not valid gzip data (after 0 inflated bytes)")
    rig.tailer.stop()


def test_a_gzip_bomb_is_cut_at_max_decompressed_bytes_without_holding_it(tmp_path, old_mtime):
    bomb = tmp_path / "bomb.jsonl.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(bomb, "wb") as fh:  # 512 MiB of newlines in about half a megabyte
        for _ in range(512):
            fh.write(compressor.compress(b"\n" * (1024 * 1024)))
        fh.write(compressor.flush())
    assert bomb.stat().st_size < 2 * 1024 * 1024
    old_mtime(bomb)
    rig = Rig(tmp_path / "*.gz", read_chunk_bytes=64 * 1024, max_record_bytes=64 * 1024,
              max_decompressed_bytes=256 * 1024)
    rig.settle(max_records=100_000)
    (rejected,) = rig.rejected
    assert rejected.reason.startswith("inflates past max_decompressed_bytes (262144): a gzip bomb")
    assert len(rig.records) == 256 * 1024  # blank lines up to the cap (the decoder skips them)
    rig.tailer.stop()


def test_cloudtrail_documents_are_read_whole_and_resume_after_a_crash_mid_file(tmp_path, old_mtime):
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(cloudtrail_doc(25)))
    (tmp_path / "b.json").write_bytes(json.dumps(json.loads(cloudtrail_doc(5, 100)), indent=2).encode())
    for name in ("a.json.gz", "b.json"):
        old_mtime(tmp_path / name)
    rig = Rig(tmp_path / "*.json.gz", tmp_path / "*.json", framer=JsonDocumentFramer)
    rig.poll(max_records=10)
    rig.poll(max_records=10)
    read_before = list(rig.records)
    assert len(read_before) == 20
    rig.poll(max_records=10, commit=False)  # read, never committed: the crash loses it
    rig.crash()
    rig.settle(max_records=10)
    names = Counter(json.loads(r)["eventName"] for r in rig.records)
    assert set(names) == {f"Get{i}" for i in (*range(25), *range(100, 105))} and set(names.values()) == {1}
    assert sorted(cp.cursor for cp in rig.checkpoints.values()) == [DONE, DONE]
    rig.tailer.stop()


def test_a_broken_or_oversized_document_is_rejected_with_the_reason(tmp_path, old_mtime):
    (tmp_path / "cut.json").write_bytes(cloudtrail_doc(3)[:-10])
    (tmp_path / "big.json").write_bytes(cloudtrail_doc(20_000))
    for name in ("cut.json", "big.json"):
        old_mtime(tmp_path / name)
    rig = Rig(tmp_path / "*.json", framer=JsonDocumentFramer, max_document_bytes=1024 * 1024)
    rig.settle()
    assert rig.records == []
    assert sorted(r.reason.split(" (")[0] for r in rig.rejected) == [
        "expected a document of at most max_document_bytes", "the document ends inside a JSON value"]
    rig.tailer.stop()


def test_start_at_end_remembers_whole_files_found_at_the_first_start_without_reading_them(tmp_path, old_mtime):
    write_gz(tmp_path / "old.jsonl.gz", lines(3, "old"))
    old_mtime(tmp_path / "old.jsonl.gz")
    rig = Rig(tmp_path / "*.gz", start_at="end")
    rig.settle()
    write_gz(tmp_path / "new.jsonl.gz", lines(2, "new"))
    rig.settle()
    assert rig.records == lines(2, "new")
    rig.tailer.stop()


def test_whole_files_are_closed_once_read(tmp_path, old_mtime):
    for i in range(30):
        write_gz(tmp_path / f"{i:02d}.jsonl.gz", lines(1, f"f{i}"))
        old_mtime(tmp_path / f"{i:02d}.jsonl.gz")
    before = len(os.listdir("/proc/self/fd"))
    rig = Rig(tmp_path / "*.gz")
    rig.settle()
    assert len(rig.records) == 30 and len(os.listdir("/proc/self/fd")) < before + 5  # not one per file
    rig.tailer.stop()


def test_a_whole_file_gone_for_forget_after_s_is_forgotten(tmp_path, old_mtime):
    write_gz(tmp_path / "a.jsonl.gz", lines(1))
    old_mtime(tmp_path / "a.jsonl.gz")
    rig = Rig(tmp_path / "*.gz", forget_after_s=5.0)
    (tmp_path / "keep.log").write_bytes(b"")
    rig.settle()
    assert len(rig.checkpoints) == 1
    os.unlink(tmp_path / "a.jsonl.gz")
    rig.settle(rounds=8)
    assert len(rig.checkpoints) == 1  # forgotten, but no batch has carried it yet
    write_gz(tmp_path / "b.jsonl.gz", lines(1, "b"))
    old_mtime(tmp_path / "b.jsonl.gz")
    rig.settle()
    assert [cp.path for cp in rig.checkpoints.values()] == [str(tmp_path / "b.jsonl.gz")]
    rig.tailer.stop()


# -- replay ------------------------------------------------------------------------------------
def test_replay_reads_gzip_and_documents_and_never_twice(tmp_path):
    write_gz(tmp_path / "a.jsonl.gz", lines(4))
    replay = ReplaySource("aws", [tmp_path / "a.jsonl.gz"], LineFramer())
    batches = list(replay.batches(3))
    assert [r for b in batches for r in b.records] == lines(4) and batches[-1].checkpoint.cursor == DONE
    done = {b.checkpoint.fingerprint: b.checkpoint for b in batches}
    assert [r for b in ReplaySource("aws", [tmp_path / "a.jsonl.gz"], LineFramer(), done).batches(3)
            for r in b.records] == []
    (tmp_path / "ct.json.gz").write_bytes(gzip.compress(cloudtrail_doc(7)))
    records = [r for b in ReplaySource("aws", [tmp_path / "ct.json.gz"], JsonDocumentFramer()).batches(5)
               for r in b.records]
    assert [json.loads(r)["eventName"] for r in records] == [f"Get{i}" for i in range(7)]


def test_replay_skips_a_fifo_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "fifo.log")
    (tmp_path / "a.log").write_bytes(b"a\n")
    replay = ReplaySource("crm", [tmp_path / "fifo.log", tmp_path / "a.log"], LineFramer())
    assert [r for b in replay.batches(10) for r in b.records] == [b"a"]
    assert [(Path(r.path).name, r.reason) for r in replay.refused] == [("fifo.log", "fifo")]


def test_pieces_of_a_multi_member_gzip_are_one_stream(tmp_path):
    path = tmp_path / "cat.gz"
    path.write_bytes(gzip.compress(b"a\nb") + gzip.compress(b"c\nd\n"))  # `cat x.gz y.gz`
    fd = os.open(path, os.O_RDONLY)
    try:
        out = list(pieces(fd, LineFramer(), Limits(4, 64, 1024, 1 << 20)))
    finally:
        os.close(fd)
    assert [r for p in out for r in p.records] == [b"a", b"bc", b"d"] and not any(p.rejected for p in out)


def test_a_record_over_max_record_bytes_in_a_gzip_file_is_rejected_once(tmp_path, old_mtime):
    (tmp_path / "long.jsonl.gz").write_bytes(gzip.compress(b"one\n" + b"H" * 300_000 + b"\ntwo\n"))
    old_mtime(tmp_path / "long.jsonl.gz")
    rig = Rig(tmp_path / "*.gz", read_chunk_bytes=64 * 1024, max_record_bytes=64 * 1024)
    rig.settle()
    assert rig.records == [b"one", b"two"]
    (rejected,) = rig.rejected
    assert rejected.offset == 4 and rejected.data == b"H" * (64 * 1024)
    assert rejected.reason.startswith("expected a record of at most max_record_bytes (65536)")
    rig.tailer.stop()
