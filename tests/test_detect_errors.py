"""Every rule-file mistake is reported as file:line:column, key path and message, and
all of them are reported together."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.detect.ruleset import load_rules
from auditd.errors import ConfigError

GOOD_RULE = """\
- rule: r1
  desc: d
  condition: event.action = export
  severity: low
  tags: [stable]
"""


def errors(tmp_path: Path, *texts: str) -> list[str]:
    """Load each text as its own file (rules1.yaml, rules2.yaml, ...) and return the
    problems as printed."""
    paths = []
    for i, text in enumerate(texts, start=1):
        path = tmp_path / f"rules{i}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        paths.append(path)
    problems = Problems()
    load_rules(paths, problems, categories={"identity": False, "biometric": True})
    return [str(p).replace(str(tmp_path) + "/", "") for p in problems.items]


def only(found: list[str]) -> str:
    assert len(found) == 1, found
    return found[0]


def test_unknown_key(tmp_path: Path) -> None:
    got = only(errors(tmp_path, GOOD_RULE + "  severty: high\n"))
    assert got.startswith("rules1.yaml:6:3: [0].severty: unknown key 'severty'")
    assert "severity" in got  # the valid keys are listed


def test_wrong_type(tmp_path: Path) -> None:
    got = only(errors(tmp_path, GOOD_RULE.replace("tags: [stable]", "tags: stable")))
    assert got.startswith("rules1.yaml:5:9: [0].tags: expected a list")


def test_bad_severity_lists_the_valid_ones(tmp_path: Path) -> None:
    got = only(errors(tmp_path, GOOD_RULE.replace("severity: low", "severity: urgent")))
    assert got.startswith("rules1.yaml:4:13: [0].severity: expected one of 'info', 'low'")


def test_bad_regex(tmp_path: Path) -> None:
    got = only(errors(tmp_path, GOOD_RULE.replace("event.action = export", "host.name regex 'crm-(web'")))
    assert got.startswith("rules1.yaml:3:14: [0].condition: bad regex 'crm-(web'")
    assert got.endswith("(at character 17)")


def test_unknown_list(tmp_path: Path) -> None:
    text = """\
        - list: egress_actions
          items: [export]
        - rule: r1
          desc: d
          condition: event.action in egres_actions
          severity: low
          tags: [stable]
    """
    got = only(errors(tmp_path, text))
    assert got.startswith("rules1.yaml:5:14: [1].condition: unknown list 'egres_actions' "
                          "(did you mean egress_actions?)")


def test_unknown_macro(tmp_path: Path) -> None:
    got = only(errors(tmp_path, GOOD_RULE.replace("event.action = export", "leaves_company and event.action = export")))
    assert got.startswith("rules1.yaml:3:14: [0].condition: unknown macro 'leaves_company' (at character 1)")


def test_unknown_macro_inside_a_macro_is_located_in_the_macro(tmp_path: Path) -> None:
    text = """\
        - macro: outer
          condition: event.action = read and inner
    """
    got = only(errors(tmp_path, text))
    assert got.startswith("rules1.yaml:2:14: [0].condition: unknown macro 'inner'")


def test_duplicate_rule_id(tmp_path: Path) -> None:
    got = only(errors(tmp_path, GOOD_RULE, GOOD_RULE))
    assert got.startswith("rules2.yaml:1:9: [0].rule: rule 'r1' is already defined at rules1.yaml:1:3;")
    assert "use 'override'" in got


def test_duplicate_list_in_one_file(tmp_path: Path) -> None:
    text = "- list: a\n  items: [x]\n- list: a\n  items: [y]\n"
    got = only(errors(tmp_path, text))
    assert got.startswith("rules1.yaml:3:9: [1].list: list 'a' is already defined at rules1.yaml:1:3")


def test_unknown_field(tmp_path: Path) -> None:
    got = only(errors(tmp_path, GOOD_RULE.replace("event.action = export", "event.action = export and user.idd = E1")))
    assert got.startswith("rules1.yaml:3:14: [0].condition: unknown field 'user.idd' (did you mean user.id")
    assert got.endswith("(at character 27)")


def test_unknown_kind(tmp_path: Path) -> None:
    got = only(errors(tmp_path, GOOD_RULE + "  kind: treshold\n"))
    assert got.startswith("rules1.yaml:6:9: [0].kind: unknown rule kind 'treshold' (valid kinds: match, entitlement, departed, threshold, sequence, baseline, first_seen, off_hours)")


def test_params_on_a_kind_without_params(tmp_path: Path) -> None:
    got = only(errors(tmp_path, GOOD_RULE + "  params: {n: 3}\n"))
    assert got.startswith("rules1.yaml:6:11: [0].params: rule kind 'match' takes no params")


@pytest.mark.parametrize("change,line,message", [
    (("  desc: d\n", ""), 1, "[0]: rule 'r1': missing required key 'desc'"),
    (("tags: [stable]", "tags: [pi, stable]"), 5, "[0].tags: rule 'r1': the first tag is its maturity"),
    (("condition: event.action = export", "condition: event.action = export)"), 3,
     "[0].condition: expected 'and', 'or' or the end of the condition, got ')' (at character 22)"),
    (("condition: event.action = export", "condition: event.action = exprot"), 3,
     "[0].condition: 'event.action' is never 'exprot' (did you mean export?)"),
    (("condition: event.action = export", "condition: neo.data.categories = biometirc"), 3,
     "[0].condition: 'neo.data.categories' is never 'biometirc' (did you mean biometric?)"),
    (("rule: r1", "rule: 'bad id'"), 1, "[0].rule: bad rule name 'bad id'"),
])
def test_rule_mistakes(tmp_path: Path, change: tuple[str, str], line: int, message: str) -> None:
    got = only(errors(tmp_path, GOOD_RULE.replace(*change)))
    assert got.startswith(f"rules1.yaml:{line}:"), got
    assert message in got


def test_title_may_not_name_raw_customer_identifiers(tmp_path: Path) -> None:
    got = errors(tmp_path, GOOD_RULE + '  title: "{user.id} read customer {neo.resource.id}"\n'
                 + "  output_fields: [user.id, neo.purpose]\n")
    assert len(got) == 2
    assert any(g.startswith("rules1.yaml:6:10: [0].title: title: field 'neo.resource.id' may carry a raw")
               for g in got), got
    assert any(g.startswith("rules1.yaml:7:28: [0].output_fields[1]: field 'neo.purpose' may carry") for g in got)


def test_unknown_field_in_title(tmp_path: Path) -> None:
    got = only(errors(tmp_path, GOOD_RULE + '  title: "{user.nme} did it"\n'))
    assert "unknown field 'user.nme'" in got


def test_exception_mistakes(tmp_path: Path) -> None:
    text = GOOD_RULE + """\
  exceptions:
    - name: x
      fields: [user.id, neo.data.record_count]
      values: [[E1, 5], [E2], [E3, lots]]
      reason: r
      owner: o
      expires: 2027-01-01
"""
    got = errors(tmp_path, text)
    assert got[0].startswith("rules1.yaml:9:25: [0].exceptions[0].values[1]: expected 2 value(s)"), got
    assert got[1].startswith("rules1.yaml:9:36: [0].exceptions[0].values[2][1]: 'neo.data.record_count' is a "
                             "number"), got


def test_exception_needs_a_date(tmp_path: Path) -> None:
    text = GOOD_RULE + """\
  exceptions:
    - {name: y, fields: [user.id], values: [E1], reason: r, owner: o, expires: someday}
"""
    got = only(errors(tmp_path, text))
    assert got.startswith("rules1.yaml:7:80: [0].exceptions[0].expires: expected date, got str 'someday'")


def test_exception_fields_are_checked(tmp_path: Path) -> None:
    text = GOOD_RULE + """\
  exceptions:
    - {name: y, fields: [user.idd, neo.data.categories], values: [], reason: r, owner: o, expires: 2027-01-01}
"""
    got = errors(tmp_path, text)
    assert got[0].startswith("rules1.yaml:7:26: [0].exceptions[0].fields[0]: unknown field 'user.idd'")
    assert "exceptions compare single values; 'neo.data.categories' is a list field" in got[1]


def test_sample_mistakes(tmp_path: Path) -> None:
    text = GOOD_RULE + """\
  samples:
    match:
      - {event.action: export, user.idd: E1}
      - {neo.data.record_count: many}
    no_match:
      - {event: {action: exprot}}
"""
    got = errors(tmp_path, text)
    assert got[0].startswith("rules1.yaml:8:32: [0].samples.match[0].user.idd: unknown field 'user.idd'")
    assert any("samples.match[1].neo.data.record_count: 'neo.data.record_count' is a number" in g for g in got)
    assert any("samples.match[1]: a sample needs 'event.action'" in g for g in got)
    assert any("samples.no_match[0].event.action: 'event.action' is never 'exprot'" in g for g in got)


def test_changing_an_undefined_rule(tmp_path: Path) -> None:
    got = only(errors(tmp_path, "- rule: nope\n  severity: high\n  override: {severity: replace}\n"))
    assert got.startswith("rules1.yaml:1:9: [0].rule: cannot change rule 'nope': it is not defined")


def test_override_mistakes(tmp_path: Path) -> None:
    tune = """\
        - rule: r1
          severity: high
          desc: other
          override: {severity: append, title: replace}
        - list: l
          items: [a]
          append: true
          override: {items: append}
    """
    got = errors(tmp_path, GOOD_RULE, tune)
    assert "rules2.yaml:4:24: [0].override.severity: 'severity' can only be replaced" in got[0]
    assert "override names 'title' but the item gives no 'title'" in got[1]
    assert got[2].startswith("rules2.yaml:3:3: [0].desc: 'desc' needs a mode in 'override'")
    assert "use either 'append: true' or 'override', not both" in got[3]


def test_macro_cycle(tmp_path: Path) -> None:
    text = "- macro: a\n  condition: b\n- macro: b\n  condition: a and event.action = read\n"
    got = errors(tmp_path, text)
    assert any("macros refer to each other in a cycle" in g for g in got)


def test_file_level_mistakes(tmp_path: Path) -> None:
    got = errors(tmp_path, "rule: r1\n", "- {list: a, macro: b}\n- 5\n", "- rule: [unclosed\n")
    assert got[0] == "rules1.yaml:1:1: a rule file is a list of items: - list: ..., - macro: ..., - rule: ..."
    assert got[1].startswith("rules2.yaml:1:3: [0]: each item has exactly one of 'list', 'macro' or 'rule'")
    assert got[2].startswith("rules2.yaml:2:3: [1]: each item has exactly one of")
    assert got[3].startswith("rules3.yaml:2:1: invalid YAML")


def test_missing_path_is_reported(tmp_path: Path) -> None:
    problems = Problems()
    load_rules([tmp_path / "absent"], problems)
    assert "rules path not found" in str(problems.items[0])


def test_all_errors_are_collected_before_failing(tmp_path: Path) -> None:
    text = GOOD_RULE + "  severty: high\n" + GOOD_RULE.replace("r1", "r2").replace("event.action = export", "x.y = 1")
    problems = Problems()
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    load_rules([path], problems)
    with pytest.raises(ConfigError) as info:
        problems.raise_if_any()
    assert len(info.value.problems) == 2
    assert "unknown key 'severty'" in str(info.value) and "unknown field 'x.y'" in str(info.value)


def test_switching_off_an_undefined_rule(tmp_path: Path) -> None:
    got = only(errors(tmp_path, "- rule: nope\n  enabled: false\n"))
    assert got.startswith("rules1.yaml:1:9: [0].rule: cannot change rule 'nope': it is not defined")


@pytest.mark.parametrize("kind,params", [
    ("sequence", "{timespan: 5m, max_keys: 0, steps: [{name: a, where: {event.action: read}},"
                 " {name: b, where: {event.action: export}}]}"),
    ("baseline", "{max_keys: -1}"),
    ("first_seen", "{field: source.ip, max_keys: 0}"),
    ("off_hours", "{max_keys: -5}"),
])
def test_a_behaviour_rule_of_no_keys_is_refused(tmp_path: Path, kind: str, params: str) -> None:
    # only threshold checked max_keys: the others loaded with 0 or -1 and kept one key,
    # evicting every other actor's state at each batch (a rule that silently sees nothing)
    text = GOOD_RULE.replace("  desc: d\n", f"  desc: d\n  kind: {kind}\n  params: {params}\n")
    got = only(errors(tmp_path, text))
    assert got.startswith("rules1.yaml:4:"), got
    assert "params.max_keys: must be at least 1" in got
