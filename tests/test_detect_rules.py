"""Rule files: loading in order, append/override, exceptions and their expiry, alerts,
the index (routing must equal evaluating every rule) and the kind registry."""

from __future__ import annotations

import datetime as dt
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditd.config.located import Problems
from auditd.detect.alert import alert_id
from auditd.detect.kinds import KINDS, KindContext, MatchKind, Verdict
from auditd.detect.ruleset import RuleSet, load_rules
from auditd.detect.testing import check_rules
from auditd.event import ACTIONS, AccessEvent

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "rules"
CATEGORIES = {"identity": False, "contact": False, "media": False, "property": True, "location": True,
              "device": False, "biometric": True, "order": False}
UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def ev(**kw: Any) -> AccessEvent:
    kw.setdefault("timestamp", T0)
    kw.setdefault("action", "read")
    kw.setdefault("event_id", "e-1")
    return AccessEvent(**kw)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(*paths: Path | str, **kw: Any) -> RuleSet:
    problems = Problems()
    ruleset = load_rules(paths, problems, categories=CATEGORIES, **kw)
    assert not problems, "\n".join(str(p) for p in problems.items)
    return ruleset


def fired(ruleset: RuleSet, event: AccessEvent) -> list[str]:
    return [a.rule_id for a in ruleset.evaluate(event)]


BASE = """
- list: egress
  items: [export, share]
- list: partners
  items: []
- macro: leaves
  condition: event.action in egress
- rule: bulk_egress
  desc: many records leave
  condition: leaves and neo.data.record_count >= 100
  severity: high
  tags: [stable, pi]
  title: "{user.id} moved {neo.data.record_count} records ({neo.data.categories})"
  output_fields: [user.id, neo.data.record_count]
- rule: share_unlisted
  desc: share with a partner not listed
  condition: event.action = share and not neo.destination.partner in partners
  severity: medium
  tags: [stable, partner]
"""


# --- loading and merging ----------------------------------------------------------------


def test_base_rules_fire(tmp_path: Path) -> None:
    rs = load(write(tmp_path, "base.yaml", BASE))
    event = ev(action="share", record_count=500, destination_partner="P1")
    assert fired(rs, event) == ["bulk_egress", "share_unlisted"]
    assert fired(rs, ev(action="export", record_count=5)) == []


def test_folder_loads_files_sorted_by_name(tmp_path: Path) -> None:
    write(tmp_path, "10-base.yaml", BASE)
    write(tmp_path, "20-tune.yaml", """
        - list: partners
          items: [P1]
          append: true
    """)
    write(tmp_path, "notes.txt", "not a rule file")
    rs = load(tmp_path)
    assert fired(rs, ev(action="share", destination_partner="P1")) == []
    assert fired(rs, ev(action="share", destination_partner="P2")) == ["share_unlisted"]


def test_list_override_replaces_and_append_reaches_every_user(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", BASE)
    tune = write(tmp_path, "tune.yaml", """
        - list: egress
          items: [download]
          override: {items: replace}
    """)
    rs = load(base, tune)
    assert fired(rs, ev(action="download", record_count=100)) == ["bulk_egress"]
    assert fired(rs, ev(action="export", record_count=100)) == []


def test_macro_append_is_parenthesised(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", """
        - macro: m
          condition: event.action = read or event.action = export
        - rule: r
          desc: d
          condition: m
          severity: low
          tags: [stable]
    """)
    tune = write(tmp_path, "tune.yaml", """
        - macro: m
          condition: and neo.data.record_count > 10
          append: true
    """)
    rs = load(base, tune)
    # Falco's textual append would give 'read or (export and count > 10)'
    assert fired(rs, ev(action="read", record_count=1)) == []
    assert fired(rs, ev(action="read", record_count=11)) == ["r"]
    assert rs.rule("r").spec.condition_text == "m"


def test_rule_condition_append_and_key_overrides(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", BASE)
    tune = write(tmp_path, "tune.yaml", """
        - rule: bulk_egress
          condition: and not user.id = E-BATCH
          append: true
        - rule: bulk_egress
          severity: critical
          tags: [reviewed]
          override: {severity: replace, tags: append}
    """)
    rs = load(base, tune)
    spec = rs.rule("bulk_egress").spec
    assert spec.severity == "critical" and spec.tags == ("stable", "pi", "reviewed")
    assert spec.condition_text == ("(leaves and neo.data.record_count >= 100) and (not user.id = E-BATCH)")
    assert fired(rs, ev(action="export", record_count=100, user_id="E-BATCH")) == []
    assert fired(rs, ev(action="export", record_count=100, user_id="E1")) == ["bulk_egress"]


def test_enabled_false_switches_a_rule_off(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", BASE)
    tune = write(tmp_path, "tune.yaml", """
        - rule: share_unlisted
          enabled: false
    """)
    rs = load(base, tune)
    assert not rs.rule("share_unlisted").spec.enabled
    assert fired(rs, ev(action="share", record_count=1)) == []
    assert rs.check(rs.rule("share_unlisted"), ev(action="share")) is not None  # still checkable


# --- exceptions -----------------------------------------------------------------------

EXCEPTIONS = """
- rule: bulk_egress
  exceptions:
    - name: logistics_handover
      fields: [user.id, neo.destination.partner]
      values: [[E20001, P-LOGI], [E20002, P-LOGI]]
      reason: contract LOG-2026-07
      owner: dpo@example.com
      expires: 2027-06-30
    - name: batch_account
      fields: [user.id]
      values: [E-BATCH]
      reason: nightly job
      owner: ops@example.com
      expires: 2026-01-31
  override: {exceptions: append}
"""


def test_exception_is_a_tuple_lookup(tmp_path: Path) -> None:
    rs = load(write(tmp_path, "base.yaml", BASE), write(tmp_path, "exc.yaml", EXCEPTIONS))
    handover = dict(action="export", record_count=500, destination_partner="P-LOGI")
    assert fired(rs, ev(user_id="E20001", **handover)) == []
    assert fired(rs, ev(user_id="E20003", **handover)) == ["bulk_egress"]
    assert fired(rs, ev(user_id="E20001", **{**handover, "destination_partner": "P-X"})) == ["bulk_egress"]
    counters = rs.stats.snapshot()["bulk_egress"]
    assert (counters.matches, counters.excepted, counters.alerts) == (3, 1, 2)


@pytest.mark.parametrize("local_time,excepted", [
    ("2027-06-30T23:59:00+08:00", True),  # the expiry date is inclusive, in the company's zone
    ("2027-07-01T00:01:00+08:00", False),  # 2027-06-30T16:01Z: already the 1st in Shanghai
])
def test_exception_expires_by_event_date_in_company_zone(tmp_path: Path, local_time: str, excepted: bool) -> None:
    rs = load(write(tmp_path, "base.yaml", BASE), write(tmp_path, "exc.yaml", EXCEPTIONS))
    event = ev(timestamp=dt.datetime.fromisoformat(local_time).astimezone(UTC), action="export",
               record_count=500, user_id="E20001", destination_partner="P-LOGI")
    assert (fired(rs, event) == []) is excepted


def test_expired_exception_is_reported_as_a_warning(tmp_path: Path) -> None:
    rs = load(write(tmp_path, "base.yaml", BASE), exc := write(tmp_path, "exc.yaml", EXCEPTIONS))
    warnings = check_rules(rs, dt.date(2026, 11, 2))
    assert [w.key_path for w in warnings] == ["bulk_egress.batch_account"]
    assert str(warnings[0]).startswith(f"{exc}:10:")  # where the exception is written
    assert "expired on 2026-01-31" in warnings[0].message
    soon = check_rules(rs, dt.date(2027, 6, 20))
    assert any("expires on 2027-06-30, in 10 day(s)" in w.message for w in soon)


def test_exception_replace_drops_the_shipped_ones(tmp_path: Path) -> None:
    rs = load(write(tmp_path, "base.yaml", BASE), write(tmp_path, "exc.yaml", EXCEPTIONS),
              write(tmp_path, "more.yaml", """
                - rule: bulk_egress
                  exceptions: []
                  override: {exceptions: replace}
              """))
    assert rs.rule("bulk_egress").spec.exceptions == ()


# --- alerts -----------------------------------------------------------------------------


def test_alert_contents(tmp_path: Path) -> None:
    rs = load(write(tmp_path, "base.yaml", BASE))
    event = ev(action="export", record_count=300, user_id="E10023", categories=("identity", "location"),
               subject_ids=("ps-1", "ps-2"), resource_id="C00012345", event_id="crm:42")
    (alert,) = rs.evaluate(event)
    assert alert.alert_id == alert_id("bulk_egress", "crm:42")
    assert alert.title == "E10023 moved 300 records (identity,location)"
    assert "C00012345" not in alert.title
    assert (alert.severity, alert.rule_kind, alert.actor) == ("high", "match", "E10023")
    assert alert.sensitive  # location is a sensitive category
    assert alert.subject_ids == ("ps-1", "ps-2") and alert.tags == ("stable", "pi")
    assert alert.output_fields == {"user.id": "E10023", "neo.data.record_count": 300}
    assert rs.evaluate(event) == [alert]  # deterministic


def test_default_title_names_rule_action_and_actor(tmp_path: Path) -> None:
    rs = load(write(tmp_path, "base.yaml", BASE))
    (alert,) = rs.evaluate(ev(action="share", user_id="E7"))
    assert alert.title == "share_unlisted: share by E7"


# --- index ------------------------------------------------------------------------------

INDEXED = """
- rule: by_dataset
  desc: d
  condition: event.dataset in (neo-crm, pos) and neo.data.record_count > 10
  severity: low
  tags: [stable]
- rule: action_or
  desc: d
  condition: (event.action = export and user.id = E1) or (event.action = login and event.dataset = pos)
  severity: low
  tags: [stable]
- rule: never
  desc: d
  condition: event.action in nothing
  severity: low
  tags: [sandbox]
- list: nothing
  items: []
"""


def test_index_buckets(tmp_path: Path) -> None:
    rs = load(write(tmp_path, "a.yaml", INDEXED))
    ids = lambda e: [r.id for r in rs.index.candidates(e)]  # noqa: E731
    assert ids(ev(action="export", dataset="pos")) == ["by_dataset", "action_or"]
    assert ids(ev(action="read", dataset="other")) == []
    assert ids(ev(action="login", dataset="other")) == ["action_or"]
    assert ids(ev(action="read", dataset="neo-crm")) == ["by_dataset"]


def test_an_operation_no_format_maps_is_routed_as_other(tmp_path: Path) -> None:
    # main: 'other' was no action, so a rule on it was an error ("unknown event.action")
    rs = load(write(tmp_path, "other.yaml", """
        - rule: unmapped_api
          desc: d
          condition: event.action = other and labels.event_name startswith Send
          severity: low
          tags: [sandbox]
        - rule: reads
          desc: d
          condition: event.action = read
          severity: low
          tags: [sandbox]
        - rule: any_cloudtrail
          desc: d
          condition: event.dataset = aws.cloudtrail
          severity: low
          tags: [sandbox]
    """))
    other = ev(action="other", dataset="aws.cloudtrail", labels={"event_name": "SendCommand"})
    assert [r.id for r in rs.index.candidates(other)] == ["unmapped_api", "any_cloudtrail"]
    assert [a.rule_id for a in rs.evaluate(other)] == ["unmapped_api", "any_cloudtrail"]


events = st.builds(
    ev,
    action=st.sampled_from(ACTIONS),
    outcome=st.sampled_from(["success", "denied", "failure"]),
    dataset=st.sampled_from(["neo-crm", "pos", "other", ""]),
    service_name=st.sampled_from([None, "crm", "pos"]),
    user_id=st.sampled_from([None, "E1", "E10023", "E9401"]),
    source_ip=st.sampled_from([None, "10.20.3.15", "203.0.113.9"]),
    host_name=st.sampled_from([None, "crm-web-01", "db-admin-07", "crm-web-93"]),
    resource_type=st.sampled_from([None, "customer", "payment", "face", "coupon"]),
    categories=st.lists(st.sampled_from(sorted(CATEGORIES)), max_size=3).map(tuple),
    record_count=st.sampled_from([1, 24, 25, 500, 1000, 5000]),
    masked=st.sampled_from([None, True, False]),
    sensitive=st.booleans(),
    purpose=st.sampled_from([None, "after-sales"]),
    ticket=st.sampled_from([None, "T-1"]),
    destination_partner=st.sampled_from([None, "P-LOGI"]),
    destination_country=st.sampled_from([None, "CN", "SG"]),
    actor_known=st.sampled_from([None, True, False]),
    actor_departed=st.sampled_from([None, True, False]),
)


@pytest.fixture(scope="module")
def shipped_and_indexed(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    folder = tmp_path_factory.mktemp("rules")
    write(folder, "indexed.yaml", INDEXED)
    write(folder, "exc.yaml", """
        - rule: bulk_export_of_customer_data
          exceptions:
            - {name: e, fields: [user.id], values: [E1], reason: r, owner: o, expires: 2030-01-01}
          override: {exceptions: append}
    """)
    return load(SHIPPED, folder)


@settings(max_examples=300, deadline=None)
@given(event=events)
def test_indexed_evaluation_equals_every_rule(shipped_and_indexed: RuleSet, event: AccessEvent) -> None:
    rs = shipped_and_indexed
    brute = [a for a in (rs.check(r, event) for r in rs.rules if r.spec.enabled) if a is not None]
    assert rs.evaluate(event) == brute


# --- stats ------------------------------------------------------------------------------


def test_stats_count_evaluations_matches_and_time(tmp_path: Path) -> None:
    rs = load(write(tmp_path, "base.yaml", BASE), timing_every=2)
    for event in [ev(action="export", record_count=100), ev(action="share"), ev(action="read"), ev(action="export")]:
        rs.evaluate(event)
    s = rs.stats.snapshot()
    assert (s["bulk_egress"].evaluations, s["bulk_egress"].matches, s["bulk_egress"].alerts) == (3, 1, 1)
    assert (s["share_unlisted"].evaluations, s["share_unlisted"].alerts) == (1, 1)
    assert s["bulk_egress"].timed == 2 and s["bulk_egress"].seconds > 0


# --- kinds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinimumParams:
    min_fields: int


class FieldCountKind:
    """A stand-in for a later kind: fires when enough fields were returned."""

    params_type = MinimumParams

    def build(self, rule: Any, params: MinimumParams, context: KindContext):
        def detect(event: AccessEvent) -> Verdict | None:
            n = len(event.fields)
            return Verdict(reason=f"{n} fields") if n >= params.min_fields else None
        return detect


def test_a_kind_plugs_in_through_the_registry(tmp_path: Path) -> None:
    kinds = {**KINDS, "field_count": FieldCountKind()}
    path = write(tmp_path, "k.yaml", """
        - rule: wide_read
          desc: many fields at once
          kind: field_count
          params: {min_fields: 3}
          condition: event.action = read
          severity: low
          tags: [sandbox]
    """)
    problems = Problems()
    rs = load_rules([path], problems, kinds=kinds)
    assert not problems
    assert rs.evaluate(ev(fields=("a", "b"))) == []
    (alert,) = rs.evaluate(ev(fields=("a", "b", "c")))
    assert (alert.rule_kind, alert.reason) == ("field_count", "3 fields")
    assert isinstance(KINDS["match"], MatchKind) and "field_count" not in KINDS


def test_check_warns_about_constant_and_deprecated_rules(tmp_path: Path) -> None:
    rs = load(write(tmp_path, "a.yaml", INDEXED + """
- rule: old
  desc: d
  condition: event.action = read or true
  severity: low
  tags: [deprecated]
"""))
    messages = {w.key_path: w.message for w in check_rules(rs, dt.date(2026, 11, 2))}
    assert messages["never"] == "the condition can never hold (after lists and macros)"
    assert [w.message for w in check_rules(rs, dt.date(2026, 11, 2)) if w.key_path == "old"] == [
        "the condition holds for every event (after lists and macros)", "the rule is deprecated"]


@pytest.fixture(scope="module")
def benchmark_rules(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    """The 50 rules of benchmarks/replay.py: many fields routed at once (actions, categories,
    service), regexes and negated CIDRs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_replay", REPO / "benchmarks" / "replay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp("bench_rules")
    text = module.fifty_rules().replace("match: []", "match: [{event.action: read}]")
    (folder / "bench.yaml").write_text(text)
    problems = Problems()
    ruleset = load_rules([SHIPPED, folder], problems)
    assert [str(p) for p in problems.items] == []
    return ruleset


@settings(max_examples=300, deadline=None)
@given(event=events)
def test_routing_on_many_fields_equals_every_rule(benchmark_rules: RuleSet, event: AccessEvent) -> None:
    rs = benchmark_rules
    brute = [a for a in (rs.check(r, event) for r in rs.rules if r.spec.enabled) if a is not None]
    assert rs.evaluate(event) == brute
    assert rs.evaluate_all([event, event]) == brute + brute


class EverySecondKind:
    """A stateful stand-in: fires on every second match per user, and records the order
    in which it was shown events."""

    params_type = None

    def __init__(self) -> None:
        self.seen: list[str] = []

    def build(self, rule: Any, params: Any, context: KindContext):
        counts: dict[str | None, int] = {}

        def detect(event: AccessEvent) -> Verdict | None:
            self.seen.append(f"{rule.id}:{event.event_id}")
            counts[event.user_id] = counts.get(event.user_id, 0) + 1
            return Verdict(reason="second") if counts[event.user_id] % 2 == 0 else None
        return detect


STATEFUL = """
- rule: every_second_egress
  desc: d
  kind: every_second
  condition: event.action in (export, share, print) or neo.data.record_count > 100
  severity: low
  tags: [sandbox]
- rule: every_second_read
  desc: d
  kind: every_second
  condition: event.action in (read, export) and neo.data.categories in (contact)
  severity: low
  tags: [sandbox]
"""


@settings(max_examples=150, deadline=None)
@given(batch=st.lists(events, max_size=40), every=st.integers(min_value=1, max_value=7))
def test_a_list_at_once_is_the_events_one_by_one_in_order(tmp_path_factory, batch, every) -> None:
    folder = tmp_path_factory.mktemp("stateful")
    write(folder, "s.yaml", STATEFUL)
    batch = [msgspec.structs.replace(e, event_id=f"e{i}") for i, e in enumerate(batch)]
    runs = []
    for at_once in (True, False):
        kind = EverySecondKind()
        problems = Problems()
        rs = load_rules([SHIPPED, folder], problems, categories=CATEGORIES,
                        kinds={**KINDS, "every_second": kind}, timing_every=every)
        assert not problems
        alerts = rs.evaluate_all(batch) if at_once else [a for e in batch for a in rs.evaluate(e)]
        s = rs.stats.snapshot()
        runs.append(([(a.rule_id, a.event_ids) for a in alerts], kind.seen,
                     {r: (c.evaluations, c.matches, c.alerts, c.timed) for r, c in s.items()}))
    assert runs[0] == runs[1]
