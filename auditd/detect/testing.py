"""The logic of `neo-auditd test-rules`: run every rule's samples, check the rule set
for things that are legal but wrong (expired exceptions, conditions that can never or
always hold), and report as text or JSON.

A rule without a sample that must match fails: a rule nobody has seen fire is a rule
nobody knows works (fail2ban's rule for its filters, and ours).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

from auditd.config.located import Problems
from auditd.config.typed import DEFAULT_ZONE
from auditd.detect.compiler import compile_predicate, make_ip_parser
from auditd.detect.condition import And, Const
from auditd.detect.resolve import describe
from auditd.detect.ruleset import Categories, CompiledRule, RuleSet, load_rules
from auditd.detect.samples import SampleEvent
from auditd.errors import EX_CONFIG, ConfigProblem, Location
from auditd.event import AccessEvent

EXPIRY_NOTICE_DAYS = 14  # warn this long before an exception stops applying


@dataclass(frozen=True, slots=True)
class SampleResult:
    rule_id: str
    sample: str  # 'match[0]', 'no_match[2]', or '-' when the rule has no positive sample
    ok: bool
    message: str
    where: Location | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["where"] = str(self.where) if self.where else None
        return out


def run_samples(ruleset: RuleSet) -> list[SampleResult]:
    """Every rule's samples, disabled rules included (their samples still say what
    they would do). Each result says where the sample is written."""
    results: list[SampleResult] = []
    for rule in ruleset.rules:
        samples = rule.spec.samples
        if not any(s.expect_match for s in samples):
            results.append(SampleResult(rule.id, "-", False, "the rule has no sample that must match",
                                        rule.spec.where))
        counts = {True: 0, False: 0}
        for sample in samples:
            label = f"{'match' if sample.expect_match else 'no_match'}[{counts[sample.expect_match]}]"
            counts[sample.expect_match] += 1
            results.append(_run_sample(ruleset, rule, sample, label))
    return results


def _run_sample(ruleset: RuleSet, rule: CompiledRule, sample: SampleEvent, label: str) -> SampleResult:
    event = sample.event
    indexed, rule = rule, ruleset.with_fresh_state(rule)  # every sample starts from empty state
    early = None
    for i, earlier in enumerate(sample.before):
        early = ruleset.check(rule, earlier)
        if early is not None:
            if not sample.expect_match:
                return SampleResult(rule.id, label, False, f"expected no alert, got one at event {i} of the "
                                    f"sequence: {early.title}: {early.reason}", sample.where)
            event = earlier  # a sequence that must match passes at its first alert
            break
    alert = early if early is not None else ruleset.check(rule, event)
    if sample.expect_match and alert is None:
        where = f" in a sequence of {len(sample.before) + 1} events" if sample.before else ""
        return SampleResult(rule.id, label, False, f"expected an alert{where}, got none: " + explain(rule, event),
                            sample.where)
    if not sample.expect_match and alert is not None:
        return SampleResult(rule.id, label, False, f"expected no alert, got: {alert.title}", sample.where)
    if alert is not None and rule.spec.enabled and indexed not in ruleset.index.candidates(event):
        # the condition holds but the index would never show it the event: an index bug
        return SampleResult(rule.id, label, False, "the rule index does not route this event to the rule",
                            sample.where)
    shown = (f"{alert.title}: {alert.reason}" if alert.reason else alert.title) if alert is not None else "no alert"
    return SampleResult(rule.id, label, True, shown, sample.where)


def explain(rule: CompiledRule, event: AccessEvent) -> str:
    """Why a rule did not fire: the first failing part of its condition, or the
    exception that held it back."""
    if rule.predicate(event):
        applying = rule.exception(event) if rule.exception is not None else None
        if applying is not None:
            return f"exception '{applying.name}' applies (until {applying.expires})"
        return "the rule's kind found nothing"
    condition = rule.spec.condition
    parts = condition.items if isinstance(condition, And) else (condition,)
    parse_ip = make_ip_parser(16)
    for part in parts:
        if not compile_predicate(part, parse_ip)(event):
            return f"'{describe(part)}' is false"
    return "the condition is false"  # pragma: no cover - some part must have been false


def check_rules(ruleset: RuleSet, today: dt.date) -> list[ConfigProblem]:
    """Warnings about a rule set that loads but probably does not do what is meant."""
    warnings: list[ConfigProblem] = []
    for rule in ruleset.rules:
        spec = rule.spec
        if isinstance(spec.condition, Const):
            what = "can never hold" if not spec.condition.value else "holds for every event"
            warnings.append(ConfigProblem(spec.where, spec.id, f"the condition {what} (after lists and macros)"))
        if spec.maturity == "deprecated" and spec.enabled:
            warnings.append(ConfigProblem(spec.where, spec.id, "the rule is deprecated"))
        for exc in spec.exceptions:
            days = (exc.expires - today).days
            if days < 0:
                warnings.append(ConfigProblem(exc.where, f"{spec.id}.{exc.name}",
                                              f"exception expired on {exc.expires} (owner {exc.owner}) and no "
                                              f"longer applies; renew or remove it"))
            elif days <= EXPIRY_NOTICE_DAYS:
                warnings.append(ConfigProblem(exc.where, f"{spec.id}.{exc.name}",
                                              f"exception expires on {exc.expires}, in {days} day(s) "
                                              f"(owner {exc.owner})"))
    return warnings


@dataclass(frozen=True, slots=True)
class Report:
    exit_code: int  # 0 all passed, 1 a sample failed, 78 the rules do not load
    text: str


def run_rule_tests(paths: Iterable[Path | str], *, categories: Categories | None = None,
                   zone: tzinfo = DEFAULT_ZONE, today: dt.date | None = None, as_json: bool = False,
                   verbose: bool = False) -> Report:
    """Load rules, run their samples and checks; what `neo-auditd test-rules` prints."""
    problems = Problems()
    ruleset = load_rules(paths, problems, categories=categories, zone=zone)
    if problems:
        return Report(EX_CONFIG, format_problems(problems.shown, as_json=as_json))
    results = run_samples(ruleset)
    warnings = check_rules(ruleset, today or dt.datetime.now(zone).date())
    render = report_json if as_json else render_report
    return Report(1 if any(not r.ok for r in results) else 0, render(results, warnings, verbose=verbose))


def format_problems(problems: list[ConfigProblem], *, as_json: bool) -> str:
    if as_json:
        return json.dumps({"ok": False, "errors": [_problem_dict(p) for p in problems]}, ensure_ascii=False, indent=2)
    return "\n".join(f"error: {p}" for p in problems) + f"\n{len(problems)} error(s); rules not loaded"


def render_report(results: list[SampleResult], warnings: Iterable[ConfigProblem] = (), *,
                  verbose: bool = False) -> str:
    """Failures (every result when verbose), warnings, and a summary line."""
    warnings = list(warnings)
    lines = []
    for r in results:
        if verbose or not r.ok:
            where = f"{r.where}: " if r.where else ""
            lines.append(f"{'PASS' if r.ok else 'FAIL'} {r.rule_id} {r.sample}: {where}{r.message}")
    lines.extend(f"warning: {w}" for w in warnings)
    rules, samples, failed = _counts(results)
    lines.append(f"{rules} rules, {samples} samples: {len(results) - failed} passed, {failed} failed, "
                 f"{len(warnings)} warning(s)")
    return "\n".join(lines)


def report_json(results: list[SampleResult], warnings: Iterable[ConfigProblem] = (), *,
                verbose: bool = False) -> str:
    rules, samples, failed = _counts(results)
    return json.dumps({
        "ok": not failed, "rules": rules, "samples": samples, "passed": len(results) - failed, "failed": failed,
        "results": [r.as_dict() for r in results if verbose or not r.ok],
        "warnings": [_problem_dict(w) for w in warnings],
    }, ensure_ascii=False, indent=2)


def _counts(results: list[SampleResult]) -> tuple[int, int, int]:
    rules = len({r.rule_id for r in results})
    samples = sum(r.sample != "-" for r in results)
    return rules, samples, sum(not r.ok for r in results)


def _problem_dict(p: ConfigProblem) -> dict[str, Any]:
    return {"where": str(p.location) if p.location else None, "key": p.key_path, "message": p.message}
