"""The `elastic:` settings, the documents and the templates (the last against a real server)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from auditd.config.located import Problems, parse_yaml
from auditd.config.typed import MISSING, convert
from auditd.elastic import templates
from auditd.elastic.client import build_client
from auditd.elastic.documents import ecs_document, encode, event_document
from auditd.elastic.ecs_format import decode_document
from auditd.errors import DecodeError
from auditd.elastic.settings import ElasticSettings, ElasticSourceSettings
from auditd.elastic.testing import scratch_settings, synthetic_events
from auditd.event import FIELDS, to_ecs


def load(cls, text: str):
    problems = Problems()
    doc = parse_yaml(text, "/etc/neo-auditd/config.yaml", problems)
    out = convert(cls, doc.data, doc, (), problems) if doc else MISSING
    return out, [str(p) for p in problems.items]


def test_a_full_section_converts_to_frozen_settings() -> None:
    settings, problems = load(ElasticSettings, """
hosts: [https://es1:9200]
ship: {bulk_max_docs: 2000, retry_backoff_max_s: 30}
cluster: {partitions: 8, settle: 5m, start_at: beginning}
sources:
  - {name: fleet, settle: 5m, filter: {host.name: [crm-1, crm-2]}}
""")
    assert problems == []
    (fleet,) = settings.sources
    assert (fleet.index, fleet.settle.seconds, fleet.tiebreaker) == ("logs-neo_auditd.access-*", 300.0, "event.id")
    assert settings.events_data_stream == "logs-neo_auditd.access-default"
    assert settings.events_pattern == "logs-neo_auditd.access-*"
    assert settings.retention.seconds == 184 * 86400  # the legal minimum, not 180 days
    assert (settings.cluster.partitions, settings.cluster.settle.seconds, settings.cluster.start_at) == (
        8, 300.0, "beginning")
    assert settings.fleet == "default"


def test_mistakes_are_located_configuration_errors() -> None:
    _, problems = load(ElasticSettings, """
hosts: [es1:9200]
events_data_stream: NeoEvents
retention: 90d
ship: {bulk_max_dcos: 10}
cluster:
  heartbeat: 20s
  page_size: 50000
""")
    text = "\n".join(problems)
    for expected in (
        ":2:9: hosts[0]: expected an http:// or https:// URL",
        ":3:21: events_data_stream: expected <type>-<dataset>-<namespace>",
        "retention: 90 days is shorter than the legal minimum",
        "ship.bulk_max_dcos: unknown key 'bulk_max_dcos'",
        "cluster.heartbeat: must be at most half of lease_ttl",
        "cluster.page_size: must be at most 10000",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"


def test_a_source_needs_a_name_and_a_sane_page() -> None:
    _, problems = load(ElasticSourceSettings, "name: ''\npage_size: 50000\n")
    assert any("name: must not be empty" in p for p in problems)
    assert any("page_size: must be at most 10000" in p for p in problems)


def test_the_fast_ecs_document_is_to_ecs_and_reads_back() -> None:
    for event in synthetic_events(500):
        assert ecs_document(event) == to_ecs(event)
        shipped = encode(event_document(event, agent="host-a", ingested=dt.datetime.now(dt.timezone.utc).isoformat()))
        assert decode_document(shipped) == event


@pytest.mark.parametrize(("part", "named"), [
    ({"user": {"id": 5}}, "at `user.id`"),
    ({"neo": {"data": {"record_count": "many"}}}, "at `neo.data.record_count`"),
    ({"labels": {"team": [1]}}, "at `labels[...]`"),
])
def test_a_document_of_the_wrong_types_is_refused_naming_the_ecs_field(part: dict, named: str) -> None:
    doc = {"@timestamp": "2026-11-02T01:00:00Z", "event": {"action": "read", "id": "a:1"}, **part}
    with pytest.raises(DecodeError, match="not an access event") as refused:
        decode_document(json.dumps(doc).encode())
    assert named in str(refused.value) and "$[" not in str(refused.value)


@pytest.mark.parametrize(("part", "reason"), [
    ({"source": {"ip": "13812345678"}}, "source.ip: expected an IP address"),
    ({"source": {"ip": "fe80::1%call 13812345678"}}, "source.ip: expected an IP address"),
    ({"destination": {"geo": {"country_iso_code": "call me"}}}, "destination.geo.country_iso_code: expected a two"),
    ({"@timestamp": "9999-12-31T23:59:59Z"}, "@timestamp: 9999-12-31T23:59:59+00:00 is outside the years 1970"),
    ({"neo": {"data": {"record_count": 2**63 - 1}}}, "neo.data.record_count: must be from 0 to 1,000,000,000,000"),
])
def test_a_document_from_another_writer_meets_what_the_file_decoders_hold_to(part: dict, reason: str) -> None:
    """A review: the cluster's documents skipped the shapes, time and count bounds that
    every file decoder holds to, so another writer's free text reached titles."""
    doc = {"@timestamp": "2026-11-02T01:00:00Z", "event": {"action": "read", "id": "a:1"}, **part}
    with pytest.raises(DecodeError, match=reason.replace("(", r"\(").replace("+", r"\+")):
        decode_document(json.dumps(doc).encode())


def test_every_event_field_is_mapped_with_its_type() -> None:
    mapping = templates.events_mappings()
    assert mapping["dynamic"] is False

    def lookup(name: str) -> dict:
        node = {"properties": mapping["properties"]}
        for part in [name] if name == "@timestamp" else name.split("."):
            node = node["properties"][part]
        return node

    expected = {"str": "keyword", "list": "keyword", "int": "long", "bool": "boolean",
                "time": "date", "ip": "ip", "map": "object"}
    for spec in FIELDS.values():
        assert lookup(spec.name)["type"] == expected[spec.kind], spec.name


@pytest.mark.elasticsearch
def test_install_is_idempotent_and_declares_retention(elasticsearch_url: str) -> None:
    settings = scratch_settings(elasticsearch_url)
    es = build_client(settings)
    templates.install(es, settings)
    templates.install(es, settings)  # every start does this
    (template,) = es.indices.get_index_template(
        name=f"neo-auditd-events-{settings.events_pattern[:-2]}")["index_templates"]
    assert template["index_template"]["template"]["lifecycle"]["data_retention"] == "184d"
    assert template["index_template"]["data_stream"] is not None
    for index in (settings.alerts_index, settings.incidents_index, settings.leases_index):
        assert es.indices.exists(index=index)
