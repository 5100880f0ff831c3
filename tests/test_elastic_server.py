"""The real Elasticsearch test server: indexing, data streams, and a restart."""

from __future__ import annotations

import uuid

import elasticsearch
import pytest
from elasticsearch import helpers

from elastic_server import ElasticServer, require_restartable
# Fixtures imported so this module also runs without conftest; conftest may import
# them too -- a second copy reuses the running server instead of starting another.
from elastic_server import elasticsearch_server, elasticsearch_url  # noqa: F401

pytestmark = pytest.mark.elasticsearch


def unique(prefix: str) -> str:
    # The session's server is shared, and data streams cannot be deleted on it
    # (no _data_stream API in the integ-test distribution): never reuse a name.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def put_events_template(es: elasticsearch.Elasticsearch, stream: str) -> None:
    es.indices.put_index_template(
        name=stream,
        index_patterns=[stream],
        data_stream={},
        priority=500,
        template={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"properties": {
                "@timestamp": {"type": "date"},
                "event": {"properties": {"action": {"type": "keyword"}}},
                "user": {"properties": {"id": {"type": "keyword"}}},
            }},
        },
    )


def access_events(count: int, actor: str = "e1001") -> list[dict[str, object]]:
    return [{"@timestamp": f"2026-03-01T08:00:{second:02d}Z",
             "event": {"action": "read"}, "user": {"id": actor}}
            for second in range(count)]


def create_all(es: elasticsearch.Elasticsearch, stream: str,
               documents: list[dict[str, object]]) -> None:
    # A data stream accepts only op_type=create.
    actions = [{"_op_type": "create", "_index": stream, **doc} for doc in documents]
    indexed, errors = helpers.bulk(es, actions, raise_on_error=False)
    assert errors == [] and indexed == len(documents)


def test_plain_index_and_template_data_stream(elasticsearch_url: str) -> None:
    es = elasticsearch.Elasticsearch(elasticsearch_url, request_timeout=30)
    index = unique("neo-test-plain")
    for number in range(3):
        es.index(index=index, id=str(number), document={"number": number})
    stream = unique("neo-test-events")
    put_events_template(es, stream)

    create_all(es, stream, access_events(4) + access_events(2, actor="e2002"))
    es.indices.refresh(index=[index, stream])

    assert es.count(index=index)["count"] == 3
    assert es.count(index=stream)["count"] == 6
    assert es.count(index=stream, query={"term": {"user.id": "e2002"}})["count"] == 2
    backing_indices = list(es.indices.get(index=stream))
    assert [name.startswith(f".ds-{stream}-") for name in backing_indices] == [True]
    es.indices.delete(index=index)


def test_acknowledged_writes_survive_a_restart(
        elasticsearch_server: ElasticServer) -> None:
    require_restartable(elasticsearch_server)
    es = elasticsearch_server.client()
    stream = unique("neo-test-restart")
    put_events_template(es, stream)
    # Not refreshed before the stop: acknowledged writes are in the translog.
    create_all(es, stream, access_events(5))

    elasticsearch_server.stop()
    with pytest.raises(elasticsearch.ConnectionError):
        es.options(max_retries=0).cluster.health()
    elasticsearch_server.start()

    es.cluster.health(index=stream, wait_for_status="yellow", timeout="60s")
    es.indices.refresh(index=stream)
    assert es.count(index=stream)["count"] == 5
    create_all(es, stream, access_events(1, actor="e3003"))  # still writable
    es.indices.refresh(index=stream)
    assert es.count(index=stream)["count"] == 6
