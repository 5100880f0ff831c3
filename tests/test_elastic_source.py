"""The Elasticsearch source against a real server: pages, restarts, late documents."""

from __future__ import annotations

import datetime as dt
import threading
import time

import msgspec
import pytest
from elasticsearch import Elasticsearch, helpers

from auditd.config.typed import Duration
from auditd.elastic import templates
from auditd.elastic.client import build_client
from auditd.elastic.documents import event_actions
from auditd.elastic.ecs_format import EcsDocumentDecoder
from auditd.elastic.settings import ElasticSourceSettings
from auditd.elastic.source import AHEAD_PAGES, ElasticEventSource
from auditd.elastic.testing import T0, scratch_settings, synthetic_events, unique_name
from auditd.event import AccessEvent
from auditd.sources.base import Batch, Checkpoint

pytestmark = pytest.mark.elasticsearch

SETTLE = dt.timedelta(minutes=2)


class Clock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def es(elasticsearch_url: str) -> Elasticsearch:
    return build_client(scratch_settings(elasticsearch_url))


def events_index(es: Elasticsearch, name: str | None = None) -> str:
    """A plain index with the events mapping (what the data stream's backing indices get)."""
    index = name or unique_name("neo-src-")
    es.indices.create(index=index, mappings=templates.events_mappings(),
                      settings={"number_of_shards": 2, "number_of_replicas": 0})
    return index


def put(es: Elasticsearch, index: str, events: list[AccessEvent]) -> None:
    indexed, errors = helpers.bulk(es, event_actions(events, index), refresh=True)
    assert (indexed, errors) == (len(events), [])


def crowded_events(count: int) -> list[AccessEvent]:
    """Five events per millisecond: the tiebreaker carries the order within a tick."""
    events = synthetic_events(count, spacing=dt.timedelta(0))
    return [msgspec.structs.replace(e, timestamp=T0 + dt.timedelta(milliseconds=i // 5))
            for i, e in enumerate(events)]


def source(es: Elasticsearch, index: str, clock: Clock, checkpoint: Checkpoint | None = None,
           **changes) -> ElasticEventSource:
    options = {"page_size": 30, "settle": Duration(SETTLE.total_seconds()), **changes}
    settings = ElasticSourceSettings(name="fleet", index=index, **options)
    saved = {checkpoint.fingerprint: checkpoint} if checkpoint else {}
    return ElasticEventSource(settings, es, saved, clock=clock)


def drain(reader: ElasticEventSource, limit: int = 1000) -> list[Batch]:
    batches = []
    for _ in range(limit):
        got = reader.poll(1000)
        if not got:
            return batches
        batches.extend(got)
    raise AssertionError("the source never ran dry")


def ids(batches: list[Batch]) -> list[str]:
    decoder = EcsDocumentDecoder("fleet")
    out = []
    for batch in batches:
        events, quarantined, skipped = decoder.process(batch)
        assert (quarantined, skipped) == ([], 0)
        out.extend(e.event_id for e in events)
    return out


def test_reads_every_document_once_in_pages_and_across_a_restart(es: Elasticsearch) -> None:
    index = events_index(es)
    events = crowded_events(250)
    put(es, index, events)
    clock = Clock(T0 + dt.timedelta(hours=1))

    first = source(es, index, clock)
    early = [first.poll(1000)[0] for _ in range(3)]
    assert [len(b) for b in early] == [30, 30, 30]
    checkpoint = early[-1].checkpoint  # committed with the third batch; then the daemon stops
    resumed = source(es, index, clock, checkpoint)
    late = drain(resumed)

    read = ids(early) + ids(late)
    expected = sorted(events, key=lambda e: (e.timestamp, e.event_id))
    assert read == [e.event_id for e in expected]  # each once, in (time, id) order
    assert checkpoint.offset == 90 and late[-1].checkpoint.offset == 250


def test_decoded_events_are_the_shipped_events(es: Elasticsearch) -> None:
    index = events_index(es)
    events = list(synthetic_events(40, spacing=dt.timedelta(seconds=1)))
    put(es, index, events)
    batches = drain(source(es, index, Clock(T0 + dt.timedelta(hours=1))))
    decoded = [e for batch in batches for e in EcsDocumentDecoder().process(batch)[0]]
    assert decoded == events  # ids, pseudonyms and enrich facts included


def test_documents_are_read_only_once_they_have_settled(es: Elasticsearch) -> None:
    index = events_index(es)
    events = list(synthetic_events(10, spacing=dt.timedelta(minutes=1)))  # T0 .. T0+9m
    put(es, index, events)
    clock = Clock(T0 + dt.timedelta(minutes=6))
    reader = source(es, index, clock)

    assert ids(drain(reader)) == [e.event_id for e in events[:4]]  # older than now - 2 min
    clock.now += dt.timedelta(minutes=10)
    assert ids(drain(reader)) == [e.event_id for e in events[4:]]
    assert drain(reader) == []


def test_a_late_document_within_settle_is_read_and_a_later_one_is_not(es: Elasticsearch) -> None:
    index = events_index(es)
    events = list(synthetic_events(12, spacing=dt.timedelta(minutes=1)))
    put(es, index, events[:10])  # two events are still on their way
    clock = Clock(T0 + dt.timedelta(minutes=12))
    reader = source(es, index, clock)
    assert ids(drain(reader)) == [e.event_id for e in events[:10]]  # up to T0+9m < now - 2m

    late_but_in_time = events[10]  # T0+10m: not yet settled when it arrives
    too_late = msgspec.structs.replace(events[11], timestamp=T0 + dt.timedelta(minutes=5))  # behind the cursor
    put(es, index, [late_but_in_time, too_late])
    clock.now += dt.timedelta(minutes=5)

    assert ids(drain(reader)) == [late_but_in_time.event_id]  # the documented limit: too_late is not read


def test_the_same_event_in_two_backing_indices_is_read_once(es: Elasticsearch) -> None:
    prefix = unique_name("neo-src-")
    events = list(synthetic_events(20, spacing=dt.timedelta(seconds=1)))
    put(es, events_index(es, f"{prefix}-000001"), events[:12])
    put(es, events_index(es, f"{prefix}-000002"), events[10:])  # a retry that crossed a rollover
    reader = source(es, f"{prefix}-*", Clock(T0 + dt.timedelta(hours=1)), page_size=7)

    assert ids(drain(reader)) == [e.event_id for e in events]
    assert reader.stats.duplicates == 2


def test_start_at_end_skips_the_past_and_says_so_durably(es: Elasticsearch) -> None:
    index = events_index(es)
    events = list(synthetic_events(10, spacing=dt.timedelta(minutes=1)))
    put(es, index, events)
    clock = Clock(T0 + dt.timedelta(minutes=7))
    reader = source(es, index, clock, start_at="end")

    (announce,) = reader.poll(1000)  # no records: only a checkpoint to commit
    assert len(announce) == 0 and announce.checkpoint.cursor
    clock.now += dt.timedelta(minutes=10)
    assert ids(drain(reader)) == [e.event_id for e in events[5:]]  # at or after the first start - 2 min


def test_filters_limit_what_is_read(es: Elasticsearch) -> None:
    index = events_index(es)
    events = list(synthetic_events(60, spacing=dt.timedelta(seconds=1)))
    put(es, index, events)
    reader = source(es, index, Clock(T0 + dt.timedelta(hours=1)), filter={"event.action": ["export", "update"]})
    assert ids(drain(reader)) == [e.event_id for e in events if e.action in ("export", "update")]


def test_an_unreachable_cluster_gives_no_batches_and_backs_off() -> None:
    settings = ElasticSourceSettings(name="fleet")
    unreachable = Elasticsearch("http://127.0.0.1:9", request_timeout=2)  # nothing listens on port 9
    reader = ElasticEventSource(settings, unreachable, {}, monotonic=lambda: 100.0)
    assert reader.poll() == []
    assert reader.stats.errors == 1
    assert reader.poll() == []  # within the back-off: not even tried
    assert reader.stats.errors == 1


def test_started_it_reads_on_its_own_thread_each_document_once_and_stops_ahead(es: Elasticsearch) -> None:
    index = events_index(es)
    events = crowded_events(250)
    put(es, index, events)
    clock = Clock(T0 + dt.timedelta(hours=1))
    wake = threading.Event()
    reader = ElasticEventSource(ElasticSourceSettings(name="fleet", index=index, page_size=30, poll_interval_s=0.05,
                                                      settle=Duration(SETTLE.total_seconds())),
                                es, {}, clock=clock, wake=wake)
    reader.start()
    try:
        assert wake.wait(10), "the thread never handed a page over"
        deadline = time.monotonic() + 5
        while len(reader._ready) < AHEAD_PAGES and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # time enough to read on, were it not bounded
        assert len(reader._ready) == AHEAD_PAGES and reader.stats.searches == AHEAD_PAGES
        first = reader.poll(1000)
        checkpoint = first[-1].checkpoint  # committed; then the daemon stops with pages unread
        deadline = time.monotonic() + 5
        while not reader._ready and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        reader.stop()
    resumed = source(es, index, clock, checkpoint)
    read = ids(first) + ids(drain(resumed))
    expected = sorted(events, key=lambda e: (e.timestamp, e.event_id))
    assert read == [e.event_id for e in expected]  # what the stopped thread had read ahead is read again, once


def test_ecs_decoder_quarantines_what_is_not_an_access_event() -> None:
    records = [
        b'{"@timestamp": "2026-03-02T01:00:00Z", "event": {"action": "read", "id": "a:1"}}',
        b"not json",
        b'{"@timestamp": "2026-03-02T01:00:00Z", "event": {"action": "read"}}',
        (b'{"@timestamp": "2026-03-02T01:00:00Z", "event": {"action": "read", "id": "a:2"},'
         b' "neo": {"data": {"record_count": "many"}}}'),
        b"  ",
    ]
    batch = Batch("fleet", "logs-*", "es:logs-*", records, list(range(5)),
                  Checkpoint(source="fleet", fingerprint="es:logs-*", path="logs-*", offset=5))
    events, quarantined, skipped = EcsDocumentDecoder().process(batch)
    assert [e.event_id for e in events] == ["a:1"]
    assert [(q.offset, q.reason.split(":")[0]) for q in quarantined] == [
        (1, "invalid JSON"), (2, "missing event.id"), (3, "not an access event")]
    assert skipped == 1
