"""Format kinds, mapping features, located config errors, and formats that extend others."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from auditd.config.located import Problems, parse_yaml
from auditd.config.typed import convert
from auditd.decode import Format, load_format
from auditd.decode.kinds import KINDS
from auditd.decode.settings import FormatSettings
from decode_helpers import jl, one_event, reason, run

UTC = dt.timezone.utc


# --- helpers -----------------------------------------------------------------------------


def load(tmp_path: Path, text: str, name: str = "format.yaml") -> tuple[Format | None, list[str]]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    problems = Problems()
    fmt = load_format(path, problems)
    return fmt, [str(p) for p in problems.items]


def compiled(tmp_path: Path, text: str) -> Format:
    fmt, problems = load(tmp_path, text)
    assert problems == [] and fmt is not None
    return fmt


BASE_FIELDS = """
fields:
  "@timestamp": {path: ts}
  event.action: {path: op}
"""


# --- the registry of kinds --------------------------------------------------------------


def test_kind_registry_is_one_literal_dict():
    assert sorted(KINDS) == ["csv", "json", "jsonl", "kv", "pgaudit", "regex"]


def test_unknown_kind_is_located_and_lists_the_valid_kinds(tmp_path):
    fmt, problems = load(tmp_path, "kind: xml\n" + BASE_FIELDS)
    assert fmt is None
    assert problems == [
        f"{tmp_path}/format.yaml:1:7: kind: unknown kind 'xml' (valid kinds: csv, json, jsonl, kv, pgaudit, regex)"
    ]


def test_jsonl_reads_nested_paths(tmp_path):
    fmt = compiled(tmp_path, "kind: jsonl\n" + BASE_FIELDS + "  user.id: {path: who.id}\n")
    event = one_event(fmt, jl(ts="2026-11-02T09:15:03+08:00", op="read", who={"id": "E1"}))
    assert (event.timestamp, event.action, event.user_id) == (
        dt.datetime(2026, 11, 2, 1, 15, 3, tzinfo=UTC),
        "read",
        "E1",
    )


def test_jsonl_record_that_is_not_an_object_is_quarantined(tmp_path):
    fmt = compiled(tmp_path, "kind: jsonl\n" + BASE_FIELDS)
    assert reason(fmt, b"[1, 2]") == "expected a JSON object, got an array"


CSV_FORMAT = """
kind: csv
options:
  columns: [when, who, what, note, extra]
  min_columns: 4
  skip_header: true
fields:
  "@timestamp": {path: when}
  event.action: {path: what}
  user.id: {path: who}
  labels.note: {path: note}
  labels.extra: {path: extra}
"""


def test_csv_names_columns_and_keeps_quoted_newlines(tmp_path):
    fmt = compiled(tmp_path, CSV_FORMAT)
    event = one_event(fmt, b'2026-11-02T09:00:00Z,E7,read,"two\nlines, quoted ""here"""')
    assert event.user_id == "E7" and event.labels == {"note": 'two\nlines, quoted "here"'}


def test_csv_accepts_rows_down_to_min_columns_and_rejects_others(tmp_path):
    fmt = compiled(tmp_path, CSV_FORMAT)
    assert one_event(fmt, b"2026-11-02T09:00:00Z,E7,read,n,x").labels == {"note": "n", "extra": "x"}
    assert reason(fmt, b"2026-11-02T09:00:00Z,E7,read") == "3 CSV columns, expected 4 to 5"
    assert reason(fmt, b"a,b,c,d,e,f") == "6 CSV columns, expected 4 to 5"
    assert reason(fmt, b'a,"unbalanced') == "invalid CSV: unexpected end of data"


def test_csv_header_row_is_skipped_not_quarantined(tmp_path):
    events, quarantined, skipped = run(compiled(tmp_path, CSV_FORMAT), b"when,who,what,note,extra")
    assert (events, quarantined, skipped) == ([], [], 1)


KV_FORMAT = """
kind: kv
fields:
  "@timestamp": {path: time, time_format: epoch_s}
  event.action: {path: act}
  user.name: {path: user}
  user.id: {path: emp.id}
"""


def test_kv_pairs_with_quoted_values_and_dotted_keys(tmp_path):
    fmt = compiled(tmp_path, KV_FORMAT)
    event = one_event(fmt, b'time=1700000000 act=read user="Zhang \\"Wei\\" Jr" emp.id=E1')
    assert event.user_name == 'Zhang "Wei" Jr' and event.user_id == "E1"
    assert event.timestamp == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert one_event(fmt, b"time=1700000000 act=read user='single quoted'").user_name == "single quoted"


def test_kv_garbage_and_unterminated_quotes_are_quarantined(tmp_path):
    fmt = compiled(tmp_path, KV_FORMAT)
    assert reason(fmt, b'time=1 act=read user="Zhang') == "not a key=value pair at column 17: 'user=\"Zhang'"
    assert reason(fmt, b"just some words") == "not a key=value pair at column 1: 'just some words'"


REGEX_FORMAT = r"""
kind: regex
options:
  pattern: '^(?P<ts>\S+) (?P<user>\w+) (?P<op>\w+)(?: (?P<count>\S+))?'
fields:
  "@timestamp": {path: ts, time_format: "%Y-%m-%dT%H:%M:%S", timezone: Europe/Paris}
  event.action: {path: op}
  user.id: {path: user}
  neo.data.record_count: {path: count}
"""


def test_regex_named_groups_become_the_record(tmp_path):
    fmt = compiled(tmp_path, REGEX_FORMAT)
    event = one_event(fmt, b"2026-01-02T03:04:05 bob read 12")
    assert (event.user_id, event.action, event.record_count) == ("bob", "read", 12)
    assert event.timestamp == dt.datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)  # Paris is UTC+1 in January
    assert one_event(fmt, b"2026-01-02T03:04:05 bob read").record_count == 1  # an optional group left out
    assert reason(fmt, b"no match") == "does not match the format's pattern"


def test_bad_regex_is_a_located_config_error(tmp_path):
    fmt, problems = load(tmp_path, "kind: regex\noptions: {pattern: '(?P<ts>'}\n" + BASE_FIELDS)
    assert fmt is None
    assert problems == [
        f"{tmp_path}/format.yaml:2:20: options.pattern: invalid regular expression: "
        "missing ): (?P<ts>"
    ]


def test_regex_without_named_groups_is_a_config_error(tmp_path):
    _, problems = load(tmp_path, "kind: regex\noptions: {pattern: '(\\w+)'}\n" + BASE_FIELDS)
    assert problems == [f"{tmp_path}/format.yaml:2:20: options.pattern: needs named groups, such as (?P<user>\\S+)"]


PG_FORMAT = """
kind: pgaudit
fields:
  "@timestamp": {path: log_time, time_format: postgres}
  event.action: {join: [audit.class, audit.command], map: {READ/SELECT: read, WRITE/*: update}}
  user.id: {path: user_name}
  neo.resource.id: {path: audit.object_name}
  neo.data.record_count: {path: audit.rows}
  labels.statement: {path: audit.statement}
"""
PG_ROW = (
    '2015-08-12 16:13:44.813 UTC,"alice","db",1,"10.0.0.9:5432",s1,7,"SELECT",2015-08-12 16:13:43 UTC,'
    '2/1,0,LOG,00000,"AUDIT: OBJECT,3,1,READ,SELECT,TABLE,public.account,""select *\n  from account"",<none>"'
    ',,,,,,,,,"psql"'
)


def test_pgaudit_reads_the_audit_fields_of_a_csvlog_row(tmp_path):
    event = one_event(compiled(tmp_path, PG_FORMAT), PG_ROW.encode())
    assert (event.user_id, event.action, event.resource_id) == ("alice", "read", "public.account")
    assert event.labels == {"statement": "select *\n  from account"}
    assert event.timestamp == dt.datetime(2015, 8, 12, 16, 13, 44, 813000, tzinfo=UTC)


def test_pgaudit_takes_23_24_and_26_columns_and_the_rows_field(tmp_path):
    fmt = compiled(tmp_path, PG_FORMAT)
    newer = PG_ROW + ',"client backend",,123'
    rows = PG_ROW.replace("<none>", "<none>,42")
    assert one_event(fmt, newer.encode()).resource_id == "public.account"
    assert one_event(fmt, (PG_ROW + ',"client backend"').encode()).resource_id == "public.account"
    assert one_event(fmt, rows.encode()).record_count == 42


def test_pgaudit_rows_that_are_not_audit_lines_are_skipped(tmp_path):
    other = (
        "2015-08-12 16:13:43.813 UTC,,,22608,,55cb70b7.5850,1,,2015-08-12 16:13:43 UTC,,0,LOG,00000,"
        '"autovacuum launcher started",,,,,,,,"AutoVacLauncherMain, autovacuum.c:413",""'
    )
    events, quarantined, skipped = run(compiled(tmp_path, PG_FORMAT), other.encode(), PG_ROW.encode())
    assert (len(events), quarantined, skipped) == (1, [], 1)


def test_pgaudit_malformed_audit_line_is_quarantined(tmp_path):
    row = PG_ROW.replace('OBJECT,3,1,READ,SELECT,TABLE,public.account,""select *\n  from account"",<none>', "OBJECT,3")
    assert (
        reason(compiled(tmp_path, PG_FORMAT), row.encode())
        == "AUDIT message has 2 fields, expected 9 (or 10 with rows)"
    )


# --- mapping features -------------------------------------------------------------------


def jsonl_format(tmp_path: Path, fields: str, categories: str = "") -> Format:
    return compiled(tmp_path, "kind: jsonl\n" + BASE_FIELDS + fields + categories)


T0 = "2026-11-02T09:00:00+08:00"


def test_candidate_paths_first_present_wins_and_empty_counts_as_absent(tmp_path):
    fmt = jsonl_format(tmp_path, "  user.id: {paths: [a.arn, b, c]}\n")
    assert one_event(fmt, jl(ts=T0, op="read", a={"arn": ""}, b=None, c="third")).user_id == "third"
    assert one_event(fmt, jl(ts=T0, op="read", a={"arn": "first"}, c="third")).user_id == "first"
    assert one_event(fmt, jl(ts=T0, op="read")).user_id is None


def test_constant_value(tmp_path):
    fmt = jsonl_format(tmp_path, "  service.name: {value: crm}\n  labels.team: {value: sec}\n")
    event = one_event(fmt, jl(ts=T0, op="read"))
    assert (event.service_name, event.labels) == ("crm", {"team": "sec"})


def test_map_with_default_and_prefix_patterns(tmp_path):
    fmt = jsonl_format(
        tmp_path,
        "  event.outcome: {path: r, map: {ok: success, 'err.denied*': denied, 'err.*': failure}, default: unknown}\n",
    )
    outcomes = [one_event(fmt, jl(ts=T0, op="read", r=r)).outcome for r in ("ok", "err.denied.acl", "err.io", "weird")]
    assert outcomes == ["success", "denied", "failure", "unknown"]
    assert one_event(fmt, jl(ts=T0, op="read")).outcome == "success"  # absent: the event's default


def test_unmapped_value_without_default_is_quarantined_with_the_value(tmp_path):
    fmt = compiled(
        tmp_path,
        """
kind: jsonl
fields:
  "@timestamp": {path: ts}
  event.action: {path: op, map: {customer.view: read}}
""",
    )
    assert reason(fmt, jl(ts=T0, op="customer.fly")) == "event.action: 'customer.fly' is not in the map (path op)"


def test_unknown_action_without_a_map_is_quarantined(tmp_path):
    fmt = jsonl_format(tmp_path, "")
    assert reason(fmt, jl(ts=T0, op="fly")).startswith("event.action: unknown value 'fly' (valid: delete, download,")


def test_split_lower_and_extract(tmp_path):
    fmt = jsonl_format(
        tmp_path,
        """  neo.data.fields: {path: cols, split: ",", lower: true}
  source.ip: {path: peer, extract: '^([0-9.]+):\\d+$'}
  neo.resource.type: {path: kind, lower: true}
""",
    )
    event = one_event(fmt, jl(ts=T0, op="read", cols="Name, PHONE,,address", peer="10.0.0.1:5432", kind="TABLE"))
    assert (event.fields, event.source_ip, event.resource_type) == (("name", "phone", "address"), "10.0.0.1", "table")
    assert one_event(fmt, jl(ts=T0, op="read", peer="[local]")).source_ip is None  # no match: absent


def test_join_skips_absent_parts(tmp_path):
    fmt = jsonl_format(tmp_path, "  neo.resource.id: {join: [bucket, key]}\n")
    assert one_event(fmt, jl(ts=T0, op="read", bucket="b", key="k/x.txt")).resource_id == "b/k/x.txt"
    assert one_event(fmt, jl(ts=T0, op="read", bucket="b")).resource_id == "b"


def test_list_targets_take_lists_and_single_values_and_map_each_item(tmp_path):
    fmt = jsonl_format(
        tmp_path,
        "  user.roles: {path: roles, map: {adm: [admin, auditor], '*': staff}}\n"
        "  neo.data.subject_ids: {path: subjects}\n",
    )
    event = one_event(fmt, jl(ts=T0, op="read", roles=["adm", "x"], subjects=[10023, "C2"]))
    assert event.user_roles == ("admin", "auditor", "staff") and event.subject_ids == ("10023", "C2")
    assert one_event(fmt, jl(ts=T0, op="read", subjects="C9")).subject_ids == ("C9",)


def test_required_field_missing_is_quarantined(tmp_path):
    fmt = jsonl_format(tmp_path, "  user.id: {path: emp, required: true}\n")
    assert reason(fmt, jl(ts=T0, op="read")) == "missing required field 'user.id' (path emp): expected a value, found none"
    assert reason(fmt, jl(ts=T0, op="read", emp="")) == "missing required field 'user.id' (path emp): expected a value, found none"
    assert reason(fmt, jl(op="read", emp="E1")) == "missing required field '@timestamp' (path ts): expected a value, found none"
    assert reason(fmt, jl(ts=T0, emp="E1")) == "missing required field 'event.action' (path op): expected a value, found none"


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"count": "abc"}, "neo.data.record_count: expected an integer, got 'abc' (path count)"),
        ({"count": True}, "neo.data.record_count: expected an integer, got True (path count)"),
        ({"count": -3}, "neo.data.record_count: must not be negative, got -3 (path count)"),
        ({"masked": "maybe"}, "neo.data.masked: expected true or false, got 'maybe' (path masked)"),
        ({"who": {"id": 1}}, "user.id: expected text, got an object {'id': 1} (path who)"),
        ({"ts": "yesterday"}, "@timestamp: expected an ISO 8601 time, got 'yesterday' (path ts)"),
    ],
)
def test_wrong_types_are_quarantined_with_the_reason(tmp_path, value, expected):
    fmt = jsonl_format(
        tmp_path, "  neo.data.record_count: {path: count}\n  neo.data.masked: {path: masked}\n  user.id: {path: who}\n"
    )
    assert reason(fmt, jl(**{"ts": T0, "op": "read", **value})) == expected


def test_text_values_convert_to_numbers_and_booleans(tmp_path):
    fmt = jsonl_format(
        tmp_path, "  neo.data.record_count: {path: count}\n  neo.data.masked: {path: masked}\n  user.id: {path: who}\n"
    )
    event = one_event(fmt, jl(ts=T0, op="read", count="12", masked="false", who=10023))
    assert (event.record_count, event.masked, event.user_id) == (12, False, "10023")


@pytest.mark.parametrize(
    "time_format, timezone, raw, expected",
    [
        ("iso8601", None, "2026-11-02T09:15:03.123+08:00", dt.datetime(2026, 11, 2, 1, 15, 3, 123000, tzinfo=UTC)),
        ("iso8601", None, "2026-11-02T09:15:03", dt.datetime(2026, 11, 2, 1, 15, 3, tzinfo=UTC)),  # Asia/Shanghai
        ("iso8601", "UTC", "2026-11-02 09:15:03", dt.datetime(2026, 11, 2, 9, 15, 3, tzinfo=UTC)),
        ("iso8601", None, "2026-11-02T01:15:03Z", dt.datetime(2026, 11, 2, 1, 15, 3, tzinfo=UTC)),
        ("epoch_s", None, 1700000000.5, dt.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)),
        ("epoch_ms", None, "1700000000123", dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        ("%d/%b/%Y:%H:%M:%S %z", None, "02/Nov/2026:09:15:03 +0800", dt.datetime(2026, 11, 2, 1, 15, 3, tzinfo=UTC)),
        ("%Y%m%d %H%M%S", "America/New_York", "20260702 120000", dt.datetime(2026, 7, 2, 16, 0, tzinfo=UTC)),
        ("postgres", None, "2015-08-12 16:13:43.810 UTC", dt.datetime(2015, 8, 12, 16, 13, 43, 810000, tzinfo=UTC)),
        ("postgres", None, "2015-08-12 16:13:43 +08", dt.datetime(2015, 8, 12, 8, 13, 43, tzinfo=UTC)),
        ("postgres", None, "2015-08-12 16:13:43.1 CST", dt.datetime(2015, 8, 12, 8, 13, 43, 100000, tzinfo=UTC)),
    ],
)
def test_time_formats_and_timezones(tmp_path, time_format, timezone, raw, expected):
    zone = f", timezone: {timezone}" if timezone else ""
    fmt = compiled(
        tmp_path,
        f"""
kind: jsonl
fields:
  "@timestamp": {{path: ts, time_format: "{time_format}"{zone}}}
  event.action: {{value: read}}
""",
    )
    event = one_event(fmt, jl(ts=raw))
    assert event.timestamp == expected and event.timestamp.tzinfo is UTC


def test_labels_from_a_map_and_from_single_keys_merge(tmp_path):
    fmt = jsonl_format(tmp_path, "  labels: {path: tags}\n  labels.req: {path: req}\n")
    assert one_event(fmt, jl(ts=T0, op="read", tags={"a": "1", "b": 2}, req="r-1")).labels == {
        "a": "1",
        "b": "2",
        "req": "r-1",
    }


CATEGORIES = """
categories:
  path: res.type
  lower: true
  map: {customer: [identity], payment: property, 'crm.*': [order, contact]}
  default: [identity]
"""


def test_categories_from_a_value_with_default_for_unlisted_values(tmp_path):
    fmt = jsonl_format(tmp_path, "", CATEGORIES)

    def categories(res):
        return one_event(fmt, jl(ts=T0, op="read", **({"res": res} if res is not None else {}))).categories

    assert categories({"type": "Payment"}) == ("property",)
    assert categories({"type": "crm.orders"}) == ("order", "contact")
    assert categories({"type": "coupon"}) == ("identity",)  # present but not listed: the default
    assert categories(None) == ()  # absent: no categories
    assert categories({"type": ["customer", "payment", "customer"]}) == ("identity", "property")


def test_categories_merge_with_categories_mapped_as_a_field(tmp_path):
    fmt = jsonl_format(tmp_path, "  neo.data.categories: {path: cats}\n", CATEGORIES)
    assert one_event(fmt, jl(ts=T0, op="read", cats=["contact"], res={"type": "payment"})).categories == (
        "contact",
        "property",
    )
    assert reason(fmt, jl(ts=T0, op="read", cats=["propety"])).startswith(
        "neo.data.categories: unknown data categories ['propety']"
    )


def test_compiled_format_is_shared_by_events_without_sharing_their_labels(tmp_path):
    fmt = jsonl_format(tmp_path, "  labels.team: {value: sec}\n")
    first, second = run(fmt, jl(ts=T0, op="read"), jl(ts=T0, op="read"))[0]
    first.labels["team"] = "changed"
    assert second.labels == {"team": "sec"}


# --- located config errors -------------------------------------------------------------


def test_unknown_target_field_is_located(tmp_path):
    _, problems = load(tmp_path, "kind: jsonl\n" + BASE_FIELDS + "  user.idd: {path: u}\n")
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{tmp_path}/format.yaml:6:3: fields.user.idd: unknown target field 'user.idd' (valid: @timestamp,"
    )


def test_bad_timezone_is_located(tmp_path):
    _, problems = load(
        tmp_path,
        'kind: jsonl\nfields:\n  "@timestamp":\n    path: ts\n    timezone: Asia/Shangai\n  event.action: {path: op}\n',
    )
    assert problems == [
        f"{tmp_path}/format.yaml:5:15: fields.@timestamp.timezone: unknown time zone 'Asia/Shangai' "
        "(did you mean 'Asia/Shanghai'?)"
    ]


def test_every_problem_of_a_file_is_reported_together(tmp_path):
    _, problems = load(
        tmp_path,
        """kind: jsonl
fields:
  "@timestamp": {path: ts, time_format: "whenever"}
  event.action: {path: op, map: {x: fly}}
  event.id: {value: x}
  neo.entitlement.granted: {path: g}
  neo.data.record_count: {path: a, paths: [b]}
  user.id: {path: u, split: ","}
  source.ip: {path: ip, extract: '(['}
categories: {path: t, map: {a: [propety]}}
""",
    )
    where = [re.match(r".*?:(\d+):\d+: ([^:]+):", p).groups() for p in problems]
    assert sorted(where) == sorted(
        [
            ("3", "fields.@timestamp.time_format"),
            ("4", "fields.event.action.map.x"),
            ("5", "fields.event.id"),
            ("6", "fields.neo.entitlement.granted"),
            ("7", "fields.neo.data.record_count"),
            ("8", "fields.user.id.split"),
            ("9", "fields.source.ip.extract"),
            ("10", "categories.map.a"),
        ]
    )
    joined = "\n".join(problems)
    for text in (
        "expected a strptime format",
        "unknown event.action 'fly'",
        "'event.id' cannot be mapped",
        "the enrich stage decides it",
        "give exactly one of path, paths, join, value",
        "split makes a list",
        "invalid regular expression",
        "unknown data category 'propety'",
    ):
        assert text in joined
    assert len(problems) == 8


def test_required_targets_must_be_mapped(tmp_path):
    _, problems = load(tmp_path, "kind: jsonl\nfields:\n  user.id: {path: u}\n")
    assert problems == [
        f"{tmp_path}/format.yaml:2:1: fields: '@timestamp' must be mapped: every event needs it",
        f"{tmp_path}/format.yaml:2:1: fields: 'event.action' must be mapped: every event needs it",
    ]


def test_unknown_keys_and_kind_options_are_located(tmp_path):
    _, problems = load(
        tmp_path, "kind: csv\noptions: {colums: [a]}\n" + BASE_FIELDS + "  user.id: {path: u, lowercase: true}\n"
    )
    assert any("options.colums: unknown key 'colums' (did you mean 'columns'?)" in p for p in problems)
    assert not any("missing required key 'columns'" in p for p in problems)  # the same mistake, said once
    assert any("fields.user.id.lowercase: unknown key 'lowercase'" in p for p in problems)


def test_unknown_format_name_lists_the_known_ones():
    problems = Problems()
    assert load_format("neo-cmr", problems) is None
    assert str(problems.items[0]) == (
        "<config>: unknown format 'neo-cmr' (did you mean 'neo-crm'?) (known formats: cloudtrail, cloudtrail-files, "
        "neo-crm, pgaudit; "
        "or give the path of a .yaml file)"
    )


# --- extends and formats in the daemon's config -----------------------------------------


def test_a_file_extends_a_shipped_format(tmp_path):
    fmt = compiled(
        tmp_path,
        """
extends: pgaudit
dataset: ours.pgaudit
fields:
  labels.application: null      # dropped
  labels.statement: {path: audit.statement}
categories:
  path: audit.object_name
  lower: true
  map: {public.account: [identity, property]}
""",
    )
    event = one_event(fmt, PG_ROW.replace("public.account", "PUBLIC.ACCOUNT").encode())
    assert event.categories == ("identity", "property")
    assert "application" not in event.labels and event.labels["statement"] == "select *\n  from account"
    assert (event.dataset, event.service_name, fmt.framing) == ("ours.pgaudit", "postgresql", "csv")


def test_formats_in_the_daemon_config_are_located_there(tmp_path):
    config = tmp_path / "neo-auditd.yaml"
    config.write_text("""formats:
  pgaudit:
    extends: pgaudit
    categories: {path: audit.object_name, map: {public.account: [identiy]}}
  mine:
    kind: jsonl
    fields:
      "@timestamp": {path: ts}
      event.action: {path: op}
      user.idd: {path: u}
""")
    problems = Problems()
    doc = parse_yaml(config.read_text(), str(config), problems)
    custom = convert(dict[str, FormatSettings], doc.data["formats"], doc, ("formats",), problems)
    assert load_format("pgaudit", problems, custom=custom, referrer=doc, key_path=("sources", 0, "format")) is None
    assert load_format("mine", problems, custom=custom, referrer=doc, key_path=("sources", 1, "format")) is None
    found = [str(p) for p in problems.items]
    assert (
        found[0] == f"{config}:4:65: formats.pgaudit.categories.map.public.account: unknown data category 'identiy' "
        "(valid: biometric, contact, device, identity, location, media, order, property)"
    )
    assert found[1].startswith(f"{config}:10:7: formats.mine.fields.user.idd: unknown target field 'user.idd'")


def test_configured_categories_replace_the_default_names(tmp_path):
    problems = Problems()
    text = "kind: jsonl\n" + BASE_FIELDS + "categories: {path: t, map: {a: [loyalty]}}\n"
    (tmp_path / "f.yaml").write_text(text)
    assert load_format(tmp_path / "f.yaml", problems, categories=frozenset({"loyalty"})) is not None
    assert not problems


def test_a_format_that_extends_itself_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    problems = Problems()
    assert load_format(tmp_path / "a.yaml", problems) is None
    assert "extends itself" in str(problems.items[0])
