"""Regexes from configuration run on RE2: linear in the line, refused where RE2 cannot go.

`^(a+)+$` against 100,000 a's and a '!' takes Python's re longer than the age of the
universe; the daemon must finish the line and go on. A construct RE2 does not run
(a back-reference, look-around) is refused by `check` with file, line and reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.config.regex import RegexError, compile_regex
from auditd.enrich.pseudonym import create_key_file

# Each backtracks exponentially on Python's re against a long run of 'a' that does not match.
CATASTROPHIC = [r"^(a+)+$", r"^(a|aa)+$", r"^(a|a?)+$", r"(a*)*b", r"^(\w+\s?)*$", r"(.*a){12}$"]


def neo(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


# --- the engine ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_answer_on_a_100k_line(pattern: str) -> None:
    regex = compile_regex(pattern)
    line = "a" * 100_000 + "!"
    assert regex.search(line) is False
    assert regex.extract(line) is None
    assert regex.search("aaaa") is (pattern != r"(a*)*b" and pattern != r"(.*a){12}$")


@pytest.mark.parametrize("pattern, why", [
    (r"(a)\1", "back-references (\\1, (?P=name)) are not supported"),
    (r"(?P<x>a)(?P=x)", "back-references (\\1, (?P=name)) are not supported"),
    (r"foo(?=bar)", "look-ahead and look-behind ((?=, (?!, (?<=, (?<!) are not supported"),
    (r"(?<!x)foo", "look-ahead and look-behind ((?=, (?!, (?<=, (?<!) are not supported"),
    (r"(?>a+)b", "atomic groups and possessive repeats are not supported"),
    (r"a++b", "atomic groups and possessive repeats are not supported"),
    (r"abc\Z", "\\Z is written \\z (end of text)"),
    (r"\u4e2d", "\\uXXXX is written \\x{XXXX}"),
    (r"x{1001}", "invalid regular expression: invalid repetition size: {1001}"),
    (r"(unclosed", "invalid regular expression: missing ): (unclosed"),
])
def test_what_re2_cannot_run_is_refused_with_the_reason(pattern: str, why: str) -> None:
    with pytest.raises(RegexError) as info:
        compile_regex(pattern)
    assert str(info.value).startswith(why)


def test_what_changes_for_rule_authors() -> None:
    assert compile_regex(r"^\p{Han}+$").search("张伟")
    assert not compile_regex(r"^\w+$").search("张伟")  # \w is ASCII-only on RE2
    assert compile_regex(r"^E\d{5}$").search("E10023")
    assert compile_regex("2026").search("T-2026-1")  # a search, not a full match
    assert compile_regex(r"^\x{4e2d}").search("中国")
    assert compile_regex(r"^(?P<user>\S+) (?P<op>\w+)( (?P<note>.*))?").named_groups("张伟 view") == \
        {"user": "张伟", "op": "view"}
    assert compile_regex(r"id=(\d+)").extract("x id=42 y") == "42"
    assert compile_regex(r"id=\d+").extract("x id=42 y") == "id=42"
    assert compile_regex(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d+$").extract("10.1.2.3:5432") == "10.1.2.3"


def test_a_rules_regex_is_answered_from_a_bounded_cache_per_value() -> None:
    from auditd.config import regex as module

    regex = compile_regex(r"^E9\d")
    for i in range(module.CACHE_ENTRIES + 100):
        regex.search(f"E{i}")
    assert regex.search("E901") and not regex.search("E101")
    long_value = "E90" + "x" * module.CACHED_VALUE_CHARS
    assert regex.search(long_value)  # long values are matched, not cached


# --- through the daemon's own commands ----------------------------------------------------


def _deployment(folder: Path, rules: str, extra: str = "", source_format: str = "neo-crm") -> Path:
    create_key_file(folder / "pseudonym.key")
    (folder / "rules.d").mkdir()
    (folder / "rules.d" / "local.yaml").write_text(rules)
    config = folder / "config.yaml"
    config.write_text(
        "state_dir: state\nsources:\n  - name: crm\n    paths: [access.log]\n"
        f"    format: {source_format}\npseudonym:\n  key_file: pseudonym.key\n"
        "rules:\n  include_shipped: false\n  paths: [rules.d]\nops:\n  metrics: {enabled: false}\n" + extra)
    return config


def _rule(condition: str, rule_id: str = "patterns") -> str:
    return (f"- rule: {rule_id}\n  desc: d\n  condition: {condition}\n  severity: low\n  tags: [sandbox]\n"
            "  samples:\n    match: [{event.action: read, host.name: aaa, user.id: aaa}]\n"
            "    no_match: [{event.action: read, host.name: b, user.id: b}]\n")


def _line(host: str, user: str, n: int) -> str:
    return json.dumps({
        "ts": f"2026-11-02T10:00:{n:02d}.000+08:00", "app": "crm", "host": host, "req": f"r-{n}",
        "emp": {"id": user, "name": "x"}, "ip": "10.20.1.5", "op": "order.view",
        "res": {"type": "order", "id": f"O{n}", "store": "S011"}, "subjects": ["C1"], "count": 1,
        "fields": ["items"], "masked": True, "result": "ok"}) + "\n"


def test_a_100k_character_line_against_catastrophic_rules_finishes_and_the_pipeline_goes_on(tmp_path) -> None:
    """Today's main: the replay never ends (killed by the timeout)."""
    condition = " or ".join(f"{field} regex '{p}'" for field, p in zip(
        ["host.name", "user.id", "host.name", "user.id", "host.name", "user.id"], CATASTROPHIC))
    config = _deployment(tmp_path, _rule(f"event.action = read and ({condition})"))
    long = "a" * 100_000 + "!"
    (tmp_path / "access.log").write_text(_line(long, long, 1) + _line("aaa", "E1", 2) + _line("b", "aaa", 3)
                                         + _line("crm-web-01", "E10001", 4))
    result = neo("replay", "-c", str(config), "--json", str(tmp_path / "access.log"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events"] == 4 and summary["quarantined"] == 0
    assert summary["alerts_by_rule"] == {"patterns": 2}  # the two short lines that match; not the long one


def test_a_catastrophic_format_pattern_and_extract_finish_on_a_100k_line(tmp_path) -> None:
    formats = (
        "formats:\n  app:\n    kind: regex\n    options:\n"
        "      pattern: '^(?P<ts>\\S+) (?P<user>\\S+) (?P<op>[a-z]+) (?P<note>\\S*?)(?P<bad>(a+)+b)?$'\n"
        "    fields:\n"
        "      '@timestamp': {path: ts}\n      user.id: {path: user}\n      event.action: {path: op}\n"
        "      neo.ticket: {path: note, extract: '^((a|aa)+)$'}\n")
    config = _deployment(tmp_path, _rule("event.action = read and neo.ticket exists"), formats, "app")
    (tmp_path / "access.log").write_text(
        "2026-11-02T10:00:01+08:00 E1 read " + "a" * 100_000 + "!\n"
        "2026-11-02T10:00:02+08:00 E1 read aaaa\n")
    result = neo("replay", "-c", str(config), "--json", str(tmp_path / "access.log"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events"] == 2 and summary["alerts_by_rule"] == {"patterns": 1}


@pytest.mark.parametrize("where, text, key", [
    ("rule", "host.name regex '(a)\\\\1'", "[0].condition"),
    ("pattern", "'^(?P<ts>\\S+) (?P<user>\\S+)(?=x)'", "formats.app.options.pattern"),
    ("extract", "'(a)\\1'", "formats.app.fields.user.id.extract"),
])
def test_check_refuses_what_re2_cannot_run_with_file_line_and_reason(tmp_path, where, text, key) -> None:
    """Today's main accepts all three and runs them on re."""
    if where == "rule":
        config = _deployment(tmp_path, _rule(f"event.action = read and {text}"))
        path = tmp_path / "rules.d" / "local.yaml"
    else:
        pattern = text if where == "pattern" else "'^(?P<ts>\\S+) (?P<user>\\S+)'"
        extract = f", extract: {text}" if where == "extract" else ""
        config = _deployment(tmp_path, _rule("event.action = read"),
                             "formats:\n  app:\n    kind: regex\n    options:\n"
                             f"      pattern: {pattern}\n    fields:\n"
                             f"      '@timestamp': {{path: ts}}\n"
                             f"      user.id: {{path: user{extract}}}\n      event.action: {{value: read}}\n", "app")
        path = config
    result = neo("check", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 78, result.stdout + result.stderr
    [problem] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert problem.startswith(f"error: {path}:")
    assert f" {key}: " in problem
    assert ("back-references" in problem) or ("look-ahead" in problem)
    assert "re2.cc" not in result.stderr and "WARNING: All log messages" not in result.stderr  # RE2's C++ log is off


def test_replace_each_rewrites_every_match_once_and_never_what_it_wrote():
    from auditd.config.regex import compile_regex

    ids = compile_regex(r"\bC\d{8}\b")
    assert ids.replace_each("C00000001 saw 店C00000002, not XC00000003", lambda m: f"<{m[-1]}>") == \
        "<1> saw 店<2>, not XC00000003"
    hexes = compile_regex(r"[0-9a-f]{4}")  # matches what it writes: replaced once all the same
    assert hexes.replace_each("abcd 1234", lambda m: "p:beefbeef") == "p:beefbeef p:beefbeef"
    assert compile_regex(r"x*").replace_each("abc", lambda m: "Z") == "abc"  # empty matches replace nothing
    assert ids.replace_each("C00000001 " * 5, lambda m: "p", limit=2) == "p p " + "C00000001 " * 3
    assert ids.replace_each("no ids here", lambda m: 1 / 0) == "no ids here"


def test_the_runtime_scrubs_an_alerts_words_and_actor_and_leaves_clean_alerts_alone():
    import datetime as dt

    from auditd.detect.alert import Alert
    from auditd.enrich.pseudonym import IdScrubber
    from auditd.runtime import Runtime

    scrubber = IdScrubber([r"\bC\d{8}\b"], lambda raw: "p:" + raw[-2:])
    runtime = object.__new__(Runtime)  # only the scrubber is read
    object.__setattr__(runtime, "id_scrubber", scrubber)
    at = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)
    raw = Alert(alert_id="a", rule_id="r", rule_kind="threshold", severity="high", title="C00000012 read 9",
                timestamp=at, event_ids=("e",), actor="C00000034", reason="store C00000056",
                output_fields={"x": ["C00000078"]})
    clean = Alert(alert_id="b", rule_id="r", rule_kind="match", severity="low", title="E1 read",
                  timestamp=at, event_ids=("f",), actor="E1")
    scrubbed, same = runtime.scrubbed([raw, clean])
    assert (scrubbed.title, scrubbed.actor, scrubbed.reason, scrubbed.output_fields) == \
        ("p:12 read 9", "p:34", "store p:56", {"x": ["p:78"]})
    assert same is clean
    object.__setattr__(runtime, "id_scrubber", None)
    assert runtime.scrubbed([raw])[0] is raw
