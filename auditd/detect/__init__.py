"""detect: rule files in, alerts out.

    ruleset = load_rules(paths, problems, categories=settings.categories)
    alerts = ruleset.evaluate(event)

Modules, in the order data flows through them: ``condition`` (tokenizer and parser),
``rulefile`` (list/macro/rule items, append and override), ``resolve`` (fields, lists,
macros, typed constants, folding), ``spec`` (frozen rules), ``compiler`` (closures),
``rule_exceptions``, ``render`` (titles), ``kinds`` (the registry), ``index`` (routing
and counters), ``ruleset`` (the entry point) and ``testing`` (samples, test-rules).
"""

from auditd.detect.alert import SEVERITIES, Alert, alert_id
from auditd.detect.kinds import KINDS, KindContext, Verdict
from auditd.detect.ruleset import CompiledRule, RuleSet, load_rules

__all__ = ["KINDS", "SEVERITIES", "Alert", "CompiledRule", "KindContext", "RuleSet", "Verdict", "alert_id",
           "load_rules"]
