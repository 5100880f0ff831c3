"""A segment encoded a chunk at a time is the msgpack array of all its events."""

from __future__ import annotations

import datetime as dt
import time

import msgspec
import pytest

from auditd.event import AccessEvent
from auditd.store.sqlite import Segment, Store

T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.timezone.utc)


def events(n: int, start: int = 0) -> list[AccessEvent]:
    # times out of order, so that first and last are not simply the ends
    return [AccessEvent(T0 + dt.timedelta(seconds=(i * 7919) % 1000), "read", event_id=f"e{i}", user_id=f"E{i}")
            for i in range(start, start + n)]


@pytest.mark.parametrize("chunks", [[1], [15], [16], [3, 12], [15, 1], [256, 256, 7], [40000, 30000], [0, 5, 0]])
def test_chunks_make_one_array_of_every_event_in_order(chunks: list[int]):
    segment, everything, at = Segment(), [], 0
    for n in chunks:
        part = events(n, at)
        at += n
        segment.add(part)
        everything += part
    decoded = msgspec.msgpack.decode(segment.doc(), type=list[AccessEvent])
    assert decoded == everything
    assert segment.count == len(everything)
    assert (segment.first, segment.last) == (min(e.timestamp for e in everything), max(e.timestamp for e in everything))


def test_the_store_reads_back_a_segment_written_a_chunk_at_a_time(tmp_path):
    store = Store(tmp_path / "state.db").open()
    segment = Segment()
    for start in range(0, 600, 256):
        segment.add(events(min(256, 600 - start), start))
    with store.transaction() as conn:
        store.insert_segment(conn, "crm", segment)
    assert [e.event_id for e in store.iter_events()] == [f"e{i}" for i in range(600)]
    assert store.count_events() == 600
    store.close()


def test_background_checkpoints_copy_the_wal_while_the_writer_goes_on(tmp_path):
    store = Store(tmp_path / "state.db").open(background_checkpoints=True)
    try:
        for start in range(0, 20000, 2000):
            with store.transaction() as conn:
                store.insert_events(conn, "crm", events(2000, start))
        # the writer's own bound is far away: only the checkpointer can have copied the WAL
        assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] * 65536 >= 256 * 1024 * 1024
        written = sum(len(doc) for (doc,) in store.conn.execute("SELECT doc FROM event_segments"))
        checkpointer = store._checkpointer
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the events reached the database file itself, which only a checkpoint writes
        assert checkpointer.checkpoints >= 2 and (tmp_path / "state.db").stat().st_size > written
    finally:
        store.close()
    assert store._checkpointer is None
    reopened = Store(tmp_path / "state.db").open()
    assert reopened.count_events() == 20000
    reopened.close()


def test_a_store_that_keeps_no_events_counts_them_without_encoding(tmp_path):
    store = Store(tmp_path / "state.db", keep_events=False).open()
    segment = Segment(encode=False)
    segment.add(events(300))
    with store.transaction() as conn:
        store.insert_segment(conn, "crm", segment)
    assert (segment.count, segment.last) == (300, max(e.timestamp for e in events(300)))
    assert store.count_events() == 0
    store.close()


def test_a_wal_that_grew_behind_a_long_reader_is_cut_back_when_it_starts_over(tmp_path):
    """A job's or a person's long read keeps checkpoints from catching up and the WAL
    grows; without journal_size_limit the file kept its largest size for good."""
    import os
    import sqlite3

    from auditd.store.sqlite import WAL_SIZE_LIMIT

    store = Store(tmp_path / "s.db").open()
    store.conn.execute("CREATE TABLE big (b BLOB)")
    reader = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM big").fetchone()  # a snapshot held while the writer goes on
    for _ in range((WAL_SIZE_LIMIT >> 20) + 32):
        store.conn.execute("INSERT INTO big VALUES (?)", (os.urandom(1 << 20),))
    wal = tmp_path / "s.db-wal"
    assert wal.stat().st_size > WAL_SIZE_LIMIT
    reader.execute("ROLLBACK")
    store.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    store.conn.execute("INSERT INTO big VALUES (x'00')")  # the next write starts the WAL over
    assert wal.stat().st_size <= WAL_SIZE_LIMIT
    store.close()
