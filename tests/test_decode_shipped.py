"""The shipped formats (neo-crm, pgaudit, cloudtrail) and the normaliser around them."""

from __future__ import annotations

import json

import dataclasses
import datetime as dt

import pytest

from auditd.decode import Normaliser, shipped_format_names
from auditd.event import ACTIONS, AccessEvent
from auditd.sources.base import Batch, Checkpoint
from decode_helpers import cloudtrail, jl, one_event, reason, run, shipped

UTC = dt.timezone.utc
FINGERPRINT = "0123456789abcdef0123456789abcdef"


T0 = "2026-11-02T09:00:00+08:00"
PG_ROW = (
    '2015-08-12 16:13:44.813 UTC,"alice","db",1,"10.0.0.9:5432",s1,7,"SELECT",2015-08-12 16:13:43 UTC,'
    '2/1,0,LOG,00000,"AUDIT: OBJECT,3,1,READ,SELECT,TABLE,public.account,""select *\n  from account"",<none>"'
    ',,,,,,,,,"psql"'
)


# --- the shipped formats ------------------------------------------------------------------


def test_every_shipped_format_loads():
    assert shipped_format_names() == ["cloudtrail", "cloudtrail-files", "neo-crm", "pgaudit"]
    assert [(f.name, f.kind, f.framing, f.typed) for f in map(shipped, shipped_format_names())] == [
        ("cloudtrail", "jsonl", "lines", True),
        ("cloudtrail-files", "json", "json", True),
        ("neo-crm", "jsonl", "lines", True),
        ("pgaudit", "pgaudit", "csv", False),
    ]


# docs/example-access-log.md: operation -> action
NEO_CRM_OPS = {
    "auth.login": "login",
    "auth.logout": "logout",
    "customer.view": "read",
    "customer.search": "search",
    "customer.export": "export",
    "customer.unmask": "unmask",
    "customer.update": "update",
    "customer.delete": "delete",
    "customer.share": "share",
    "order.view": "read",
    "order.list": "list",
    "order.export": "export",
    "address.view": "read",
    "payment.view": "read",
    "points.view": "read",
    "location.view": "read",
    "face.view": "read",
    "report.print": "print",
}
NEO_CRM_CATEGORIES = {
    "customer": ("identity",),
    "address": ("contact",),
    "order": ("order",),
    "payment": ("property",),
    "points": ("property",),
    "location": ("location",),
    "face": ("biometric",),
}


@pytest.mark.parametrize("op, action", sorted(NEO_CRM_OPS.items()))
def test_neo_crm_operations_map_to_actions(op, action):
    assert one_event(shipped("neo-crm"), jl(ts=T0, op=op, result="ok")).action == action


@pytest.mark.parametrize("res_type, categories", sorted(NEO_CRM_CATEGORIES.items()))
def test_neo_crm_resource_types_map_to_categories(res_type, categories):
    event = one_event(shipped("neo-crm"), jl(ts=T0, op="customer.view", res={"type": res_type, "id": "X"}))
    assert event.categories == categories


@pytest.mark.parametrize("where", ["ip", "dest"])
def test_an_address_field_holds_an_address_or_the_line_is_quarantined(where):
    """A hostile trial: ip "13812345678" (a phone number) passed as source.ip and reached
    the incident's title and the regulator report verbatim."""
    fmt = shipped("neo-crm")
    good = dict(ts="2026-11-02T09:15:03.123+08:00", emp={"id": "E10023"}, op="customer.view",
                res={"type": "customer", "id": "C1"}, subjects=["C1"], count=1, result="ok")

    def with_address(address: str) -> bytes:
        return jl(**good, **({"ip": address} if where == "ip" else {"dest": {"ip": address, "country": "CN"}}))

    field = "source.ip" if where == "ip" else "destination.ip"
    for record in (with_address("13812345678"), with_address("10.0.0.1; DROP")):
        events, quarantined, _ = run(fmt, jl(**good), record, jl(**good))  # the chunk path, then each record
        assert len(events) == 2 and len(quarantined) == 1
        assert quarantined[0].reason.startswith(f"{field}: expected an IP address, got ")
    for address in ("10.20.3.15", "2001:db8::1", "::ffff:10.0.0.1", "06.237.252.245"):  # the last: as logs write
        assert one_event(fmt, with_address(address)) is not None
    # a scope id may hold any text: a review found it passed as an address
    events, quarantined, _ = run(fmt, jl(**good), with_address("fe80::1%call 13812345678"), jl(**good))
    assert len(events) == 2 and quarantined[0].reason.startswith(f"{field}: expected an IP address")


def test_a_mapped_value_must_have_its_fields_shape(tmp_path):
    """A review: a map to 'cn' passed check, then exact matches kept 'cn' while wildcard
    ones were quarantined: which path a record took decided."""
    from auditd.config.located import Problems
    from auditd.decode import load_format

    problems = Problems()
    path = tmp_path / "odd.yaml"
    path.write_text("extends: neo-crm\nfields:\n  destination.geo.country_iso_code:\n"
                    "    {path: dest.country, map: {china: cn, 'sing*': SG}}\n")
    load_format(path, problems)
    assert any("destination.geo.country_iso_code holds a two-letter country code such as CN, not 'cn'" in str(p)
               for p in problems.items), problems.items


def test_a_destination_country_is_a_country_code_or_the_line_is_quarantined():
    """The same trial: dest.country "13812345678" reached the entitlement reason in the
    incident's title ('destination country 13812345678 is outside the allowed')."""
    fmt = shipped("neo-crm")
    good = dict(ts="2026-11-02T09:15:03.123+08:00", emp={"id": "E10023"}, op="customer.share",
                res={"type": "customer", "id": "C1"}, subjects=["C1"], count=1, result="ok")
    bad = jl(**good, dest={"partner": "P-X", "country": "13812345678"})
    events, quarantined, _ = run(fmt, jl(**good), bad, jl(**good))
    assert len(events) == 2 and [q.reason for q in quarantined] == [
        "destination.geo.country_iso_code: expected a two-letter country code such as CN, got '13812345678' "
        "(extract: takes one out of a longer text) (path dest.country)"]
    assert one_event(fmt, jl(**good, dest={"partner": "P-X", "country": "SG"})).destination_country == "SG"


def test_neo_crm_whole_record():
    record = jl(
        ts="2026-11-02T09:15:03.123+08:00",
        app="crm",
        host="crm-web-01",
        req="r-00000001",
        emp={"id": "E10023", "name": "张伟"},
        ip="10.20.3.15",
        op="customer.share",
        res={"type": "customer", "id": "C00012345", "store": "S021"},
        subjects=["C00012345"],
        count=1,
        fields=["name", "phone", "address"],
        masked=True,
        ticket="T-2026-000123",
        purpose="after-sales",
        result="denied",
        dest={"partner": "P-LOGI", "host": "sftp.logi.example", "ip": "198.51.100.7", "country": "CN"},
    )
    event = one_event(shipped("neo-crm"), record)
    assert event == AccessEvent(
        timestamp=dt.datetime(2026, 11, 2, 1, 15, 3, 123000, tzinfo=UTC),
        action="share",
        outcome="denied",
        user_id="E10023",
        user_name="张伟",
        source_ip="10.20.3.15",
        host_name="crm-web-01",
        service_name="crm",
        request_id="r-00000001",
        resource_type="customer",
        resource_id="C00012345",
        resource_store="S021",
        categories=("identity",),
        record_count=1,
        subject_ids=("C00012345",),
        fields=("name", "phone", "address"),
        masked=True,
        purpose="after-sales",
        ticket="T-2026-000123",
        destination_partner="P-LOGI",
        destination_host="sftp.logi.example",
        destination_ip="198.51.100.7",
        destination_country="CN",
        event_id=f"{FINGERPRINT[:16]}:0",
        log_path="/var/log/app.log",
        log_offset=0,
        dataset="neo-crm.access",
    )
    assert [
        one_event(shipped("neo-crm"), jl(ts=T0, op="auth.login", result=r)).outcome for r in ("ok", "denied", "error")
    ] == ["success", "denied", "failure"]


@pytest.mark.parametrize(
    "audit_class, command, action",
    [
        ("READ", "SELECT", "read"),
        ("WRITE", "INSERT", "update"),
        ("WRITE", "UPDATE", "update"),
        ("WRITE", "DELETE", "delete"),
        ("WRITE", "TRUNCATE", "delete"),
        ("ROLE", "GRANT", "grant"),
        ("ROLE", "REVOKE", "revoke"),
        ("READ", "COPY", "export"),
        ("WRITE", "COPY", "update"),
        ("DDL", "CREATE TABLE", "update"),
        ("FUNCTION", "EXECUTE", "read"),
        ("MISC", "SET", "read"),
    ],
)
def test_pgaudit_class_and_command_map_to_actions(audit_class, command, action):
    row = PG_ROW.replace("READ,SELECT", f"{audit_class},{command}")
    event = one_event(shipped("pgaudit"), row.encode())
    assert (event.action, event.labels["command"], event.labels["class"]) == (action, command, audit_class)
    assert (event.user_id, event.source_ip, event.resource_type) == ("alice", "10.0.0.9", "table")


@pytest.mark.parametrize(
    "event_name, action",
    [
        ("GetObject", "download"),
        ("ListObjects", "list"),
        ("ListBuckets", "list"),
        ("PutObject", "update"),
        ("DeleteObject", "delete"),
        ("GetBucketAcl", "read"),
        ("DescribeInstances", "read"),
        ("PutBucketPolicy", "grant"),
        ("PutBucketAcl", "grant"),
        ("ConsoleLogin", "login"),
        ("AssumeRole", "login"),
    ],
)
def test_cloudtrail_event_names_map_to_actions(event_name, action):
    assert one_event(shipped("cloudtrail"), cloudtrail(eventName=event_name)).action == action


def test_cloudtrail_outcome_user_and_resource():
    fmt = shipped("cloudtrail")
    denied = one_event(
        fmt,
        cloudtrail(
            eventName="GetObject",
            errorCode="AccessDenied",
            requestParameters={"bucketName": "crm-exports", "key": "2026/11/all.csv"},
        ),
    )
    assert (denied.outcome, denied.user_id, denied.user_name) == (
        "denied",
        "arn:aws:iam::123456789123:user/pedro",
        "pedro",
    )
    assert (denied.resource_type, denied.resource_id, denied.source_ip) == (
        "s3",
        "crm-exports/2026/11/all.csv",
        "1.2.3.4",
    )
    assert one_event(fmt, cloudtrail(eventName="GetObject", errorCode="NoSuchKey")).outcome == "failure"
    assert (
        one_event(fmt, cloudtrail(eventName="ConsoleLogin", responseElements={"ConsoleLogin": "Failure"})).outcome
        == "failure"
    )
    assert (
        one_event(fmt, cloudtrail(eventName="ConsoleLogin", responseElements={"ConsoleLogin": "Success"})).outcome
        == "success"
    )
    assert one_event(fmt, cloudtrail(eventName="AssumeRole", sourceIPAddress="ec2.amazonaws.com")).source_ip is None



def test_a_dynamodb_item_read_is_an_event_whose_resource_is_the_table():
    # main quarantined it as "internal error: ValueError: expected text, got an object":
    # DynamoDB's requestParameters.key is the item's key map (benchmarks/fuzz_decoders.py found it)
    record = cloudtrail(eventSource="dynamodb.amazonaws.com", eventName="GetItem",
                        requestParameters={"tableName": "customers", "key": {"id": {"S": "C10023"}}})
    for name in ("cloudtrail", "cloudtrail-files"):
        event = one_event(shipped(name), record)
        assert (event.resource_type, event.resource_id, event.labels["event_name"]) == (
            "dynamodb", "customers", "GetItem")
        assert "C10023" not in repr(event)
    odd = cloudtrail(eventName="GetObject", requestParameters={"bucketName": "crm-exports", "key": ["a"]})
    assert one_event(shipped("cloudtrail"), odd).resource_id == "crm-exports"
    # a bucket name that is not text is not a well-formed S3 record: quarantined, with where and what
    broken = cloudtrail(eventName="GetObject", requestParameters={"bucketName": {"x": 1}})
    assert reason(shipped("cloudtrail"), broken) == (
        "categories: expected text, got an object {'x': 1} (path requestParameters.bucketName)")


def test_cloudtrail_keeps_an_api_call_it_does_not_map_as_other():
    # main quarantined it: "event.action: 'Frobnicate' is not in the map (path eventName)"
    event = one_event(shipped("cloudtrail"), cloudtrail(eventName="Frobnicate"))
    assert (event.action, event.labels["event_name"]) == ("other", "Frobnicate")
    assert one_event(shipped("cloudtrail"), cloudtrail(eventName="GetObject")).labels["event_name"] == "GetObject"


def test_cloudtrail_maps_every_identity_field_so_rules_can_key_on_the_credential():
    record = json.loads(cloudtrail(eventName="GetObject", userAgent="aws-cli/2.13", additionalEventData={"MFAUsed": "No"}))
    record["userIdentity"] = {
        "type": "AssumedRole", "principalId": "AROAEXAMPLE:alice", "accountId": "123456789012",
        "arn": "arn:aws:sts::123456789012:assumed-role/Admin/alice", "accessKeyId": "ASIAEXAMPLE",
        "sessionContext": {
            "sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE", "userName": "Admin",
                              "arn": "arn:aws:iam::123456789012:role/Admin", "accountId": "123456789012"},
            "attributes": {"mfaAuthenticated": "true", "creationDate": "2026-11-02T01:00:00Z"}}}
    labels = one_event(shipped("cloudtrail"), json.dumps(record).encode()).labels
    assert {k: labels[k] for k in (
        "principal_arn", "principal_id", "principal_account", "user_type", "access_key_id", "session_issuer_arn",
        "session_issuer_type", "session_issuer_name", "mfa_authenticated", "mfa_used", "user_agent")} == {
        "principal_arn": "arn:aws:sts::123456789012:assumed-role/Admin/alice", "principal_id": "AROAEXAMPLE:alice",
        "principal_account": "123456789012", "user_type": "AssumedRole", "access_key_id": "ASIAEXAMPLE",
        "session_issuer_arn": "arn:aws:iam::123456789012:role/Admin", "session_issuer_type": "Role",
        "session_issuer_name": "Admin", "mfa_authenticated": "true", "mfa_used": "No",
        "user_agent": record["userAgent"]}


# --- the normaliser -------------------------------------------------------------------------


def test_event_provenance_is_deterministic():
    fmt = shipped("neo-crm")
    records = [jl(ts=T0, op="customer.view"), b"", jl(ts=T0, op="auth.login")]
    first, second = run(fmt, *records), run(fmt, *records)
    assert first == second
    events, quarantined, skipped = first
    third = len(records[0]) + 1 + len(records[1]) + 1
    assert [(e.event_id, e.log_offset) for e in events] == [
        (f"{FINGERPRINT[:16]}:0", 0),
        (f"{FINGERPRINT[:16]}:{third}", third),
    ]
    assert {(e.log_path, e.dataset) for e in events} == {("/var/log/app.log", "neo-crm.access")}
    assert (quarantined, skipped) == ([], 1)  # the blank line


def test_a_bug_costs_one_record_not_the_batch():
    fmt = shipped("neo-crm")
    calls = iter([ZeroDivisionError("boom"), None])

    def facts(record: bytes):
        problem = next(calls)
        if problem:
            raise problem
        return fmt.facts(record)

    events, quarantined, _ = run(
        dataclasses.replace(fmt, facts=facts), jl(ts=T0, op="read"), jl(ts=T0, op="auth.login")
    )
    assert [e.action for e in events] == ["login"]
    assert quarantined[0].reason == "internal error: ZeroDivisionError: boom"


def test_normaliser_names_the_source_as_configured():
    fmt = shipped("neo-crm")
    batch = Batch(
        "batch-source", "/p", FINGERPRINT, [b"garbage"], [0], Checkpoint("batch-source", FINGERPRINT, "/p", 8)
    )
    assert Normaliser(fmt, "crm").process(batch)[1][0].source == "crm"
    assert Normaliser(fmt).process(batch)[1][0].source == "batch-source"
    assert Normaliser(fmt).process(batch, "given")[1][0].source == "given"


def test_all_actions_are_reachable_from_neo_crm():
    reached = {one_event(shipped("neo-crm"), jl(ts=T0, op=op)).action for op in NEO_CRM_OPS}
    assert reached <= set(ACTIONS)
