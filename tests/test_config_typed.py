"""The located YAML loader and typed conversion: every problem, with file:line:column and key path."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from auditd.config.located import Problems, parse_yaml
from auditd.config.typed import MISSING, Duration, convert
from auditd.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    port: int
    mode: Literal["fast", "safe"] = "safe"


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    items: list[Inner] = field(default_factory=list)
    timeout: Duration = Duration(30)
    path: Path | None = None
    when: dt.datetime | None = None
    tags: dict[str, int] = field(default_factory=dict)

    def check(self):
        if self.name == "forbidden":
            yield "name", "this name is reserved"


def _load(text: str):
    problems = Problems()
    doc = parse_yaml(text, "/etc/neo/config.yaml", problems)
    out = convert(Outer, doc.data, doc, (), problems) if doc else MISSING
    return out, [str(p) for p in problems.items]


def test_valid_document_converts_to_frozen_types():
    out, problems = _load("name: a\ninner: {port: 25}\ntimeout: 15m\npath: data/x.csv\nwhen: 2026-11-02 09:00:00\n")
    assert problems == []
    assert out.inner == Inner(25, "safe")
    assert out.timeout.seconds == 900
    assert out.path == Path("/etc/neo/data/x.csv")
    assert out.when == dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.timezone.utc)  # Asia/Shanghai by default
    with pytest.raises(AttributeError):
        out.name = "b"


def test_every_problem_is_reported_with_line_column_and_key_path():
    text = "name: a\ninner:\n  port: many\n  colour: red\nitems:\n  - port: 1\n  - mode: slow\n"
    out, problems = _load(text)
    assert out is MISSING
    assert "/etc/neo/config.yaml:3:9: inner.port: expected an integer, got str 'many'" in problems
    assert any(p.startswith("/etc/neo/config.yaml:4:3: inner.colour: unknown key 'colour'") for p in problems)
    assert any(p.startswith("/etc/neo/config.yaml:7:5: items[1].port: missing required key") for p in problems)
    assert any("items[1].mode: expected one of 'fast', 'safe', got 'slow'" in p for p in problems)
    assert len(problems) == 4


def test_bool_is_not_an_integer_and_durations_are_checked():
    _, problems = _load("name: a\ninner: {port: true}\ntimeout: soon\n")
    assert any("inner.port: expected an integer, got bool True" in p for p in problems)
    assert any("timeout: expected a duration" in p for p in problems)


def test_cross_field_checks_are_located():
    _, problems = _load("name: forbidden\ninner: {port: 1}\n")
    assert problems == ["/etc/neo/config.yaml:1:7: name: this name is reserved"]


def test_yaml_syntax_error_and_duplicate_keys_are_located():
    problems = Problems()
    assert parse_yaml("a: [1, 2\n", "f.yaml", problems) is None
    assert str(problems.items[0]).startswith("f.yaml:2:1:")
    problems = Problems()
    parse_yaml("a: 1\na: 2\n", "f.yaml", problems)
    assert str(problems.items[0]) == "f.yaml:2:1: a: duplicate key"


def test_raise_if_any_carries_all_problems():
    problems = Problems()
    problems.add(None, ("x",), "one")
    problems.add(None, ("y", 0), "two")
    with pytest.raises(ConfigError) as info:
        problems.raise_if_any()
    assert len(info.value.problems) == 2
    assert "y[0]: two" in str(info.value)


def test_a_key_indented_too_little_names_the_section_it_belongs_to():
    _, problems = _load("name: a\ninner:\n  mode: fast\nport: 1\n")
    assert problems[0].startswith("/etc/neo/config.yaml:4:1: port: unknown key 'port' (did you mean 'inner.port' "
                                  "or 'items[0].port'? indent it under 'inner')")


def test_a_misspelt_required_key_is_one_problem_not_two():
    problems = Problems()
    doc = parse_yaml("name: a\ninner: {prot: 25}\n", "/etc/neo/config.yaml", problems)
    assert convert(Outer, doc.data, doc, (), problems) is MISSING
    assert [str(p) for p in problems.shown] == [
        "/etc/neo/config.yaml:2:9: inner.prot: unknown key 'prot' (did you mean 'port'?) (valid keys: mode, port)"]


def test_a_required_key_in_the_wrong_case_is_one_problem_not_two():
    problems = Problems()
    doc = parse_yaml("name: a\ninner: {PORT: 25}\n", "/etc/neo/config.yaml", problems)
    assert convert(Outer, doc.data, doc, (), problems) is MISSING
    assert [str(p) for p in problems.shown] == [
        "/etc/neo/config.yaml:2:9: inner.PORT: unknown key 'PORT' (did you mean 'port'?) (valid keys: mode, port)"]


def test_yaml_indentation_errors_say_to_check_the_indentation():
    problems = Problems()
    assert parse_yaml("a:\n  b: 1\n    c: 2\n", "f.yaml", problems) is None
    assert str(problems.items[0]).startswith("f.yaml:3:6: invalid YAML: mapping values are not allowed")
    assert "check the indentation of this line" in str(problems.items[0])
