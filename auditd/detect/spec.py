"""Frozen rule specifications, built once every rule file has been read.

This is the step where lists and macros are final, so each rule's condition is
resolved (macros inlined, lists expanded, constants typed and folded) and the rule
is checked as a whole: required keys, maturity tag, kind and its parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from auditd.config.located import Problems
from auditd.config.typed import MISSING, convert
from auditd.detect.condition import MacroRef
from auditd.detect.kinds import DEFAULT_KIND, KINDS, RuleKind
from auditd.detect.resolve import BROKEN, ListDef, MacroDef, Resolver
from auditd.detect.rule_exceptions import ExceptionSpec
from auditd.detect.rulefile import Definitions, RuleDraft
from auditd.detect.samples import SampleEvent
from auditd.errors import Location

MATURITIES = ("stable", "incubating", "sandbox", "deprecated")
# kinds whose verdict needs more than one event: only they gain from every host's events
# (a per-event kind sees one event, wherever it runs)
CLUSTER_KINDS = ("threshold", "sequence", "first_seen", "baseline")
REQUIRED = ("desc", "condition", "severity", "tags")


@dataclass(frozen=True, slots=True)
class RuleSpec:
    id: str
    desc: str
    kind: str
    severity: str
    tags: tuple[str, ...]  # the first is the maturity
    enabled: bool
    condition: Any  # resolved and folded (resolve.FieldTest / And / Or / Not / Const)
    condition_text: str  # as written, appended parts joined, for reports
    title: str | None = None
    output_fields: tuple[str, ...] = ()
    exceptions: tuple[ExceptionSpec, ...] = ()
    samples: tuple[SampleEvent, ...] = ()
    params: Any = None
    # local: every daemon runs it on the events it reads; cluster: the Elasticsearch lease
    # holder runs it on every host's events (auditd.elastic.cluster_rules)
    scope: str = "local"
    where: Location | None = field(default=None, compare=False)

    @property
    def maturity(self) -> str:
        return self.tags[0]


def build_specs(defs: Definitions, problems: Problems, *, zone: tzinfo, categories: frozenset[str] | None,
                kinds: Mapping[str, RuleKind] = KINDS) -> list[RuleSpec]:
    """Every rule that is complete and correct, in load order; problems for the rest."""
    lists = {name: ListDef(name, tuple(d.items)) for name, d in defs.lists.items()}
    macros = {name: MacroDef(name, d.node, d.origin) for name, d in defs.macros.items()}
    resolver = Resolver(lists, macros, problems, categories=categories, zone=zone)
    for name, macro in macros.items():
        resolver.resolve(MacroRef(name, 0, macro.origin))  # unused macros are checked too
    out = []
    for draft in defs.rules.values():
        spec = finish_rule(draft, resolver, problems, kinds)
        if spec is not None:
            out.append(spec)
    return out


def finish_rule(draft: RuleDraft, resolver: Resolver, problems: Problems,
                kinds: Mapping[str, RuleKind] = KINDS) -> RuleSpec | None:
    values = draft.values
    ok = True
    for key in REQUIRED:
        if key not in values:
            problems.add(draft.doc, draft.path, f"rule '{draft.id}': missing required key '{key}'")
            ok = False
    tags = tuple(values.get("tags", ()))
    if "tags" in values and (not tags or tags[0] not in MATURITIES):
        doc, path = draft.sources["tags"]
        problems.add(doc, path, f"rule '{draft.id}': the first tag is its maturity, one of "
                     f"{', '.join(MATURITIES)}; got {tags[0] if tags else 'no tags'}")
        ok = False
    kind_name = values.get("kind", DEFAULT_KIND)
    kind = kinds.get(kind_name)
    if kind is None:
        doc, path = draft.sources["kind"]
        problems.add(doc, path, f"unknown rule kind '{kind_name}' (valid kinds: {', '.join(kinds)})")
    params = _params(draft, kind_name, kind, problems) if kind is not None else MISSING
    scope = values.get("scope", "local")
    if scope == "cluster" and kind is not None and kind_name not in CLUSTER_KINDS:
        doc, path = draft.sources["scope"]
        problems.add(doc, path, f"rule '{draft.id}': scope cluster is for the kinds that need many events "
                     f"({', '.join(CLUSTER_KINDS)}); a '{kind_name}' rule sees one event at a time: "
                     "remove 'scope' (every daemon runs it on its own events)")
        ok = False
    node = values.get("condition")
    condition = BROKEN if node is None else resolver.resolve(node)
    if not ok or draft.broken or kind is None or params is MISSING or condition is BROKEN:
        return None
    return RuleSpec(
        id=draft.id, desc=values["desc"].strip(), kind=kind_name, severity=values["severity"], tags=tags,
        enabled=values.get("enabled", True), condition=condition, condition_text=draft.condition_text,
        title=values.get("title"), output_fields=tuple(values.get("output_fields", ())),
        exceptions=tuple(values.get("exceptions", ())), samples=tuple(values.get("samples", ())),
        params=params, scope=scope, where=draft.doc.where(draft.path),
    )


def _params(draft: RuleDraft, kind_name: str, kind: RuleKind, problems: Problems) -> Any:
    raw = draft.values.get("params")
    doc, path = draft.sources.get("params", (draft.doc, draft.path + ("params",)))
    if kind.params_type is None:
        if raw is not None:
            problems.add(doc, path, f"rule kind '{kind_name}' takes no params")
            return MISSING
        return None
    before = len(problems.items)
    out = convert(kind.params_type, raw or {}, doc, path, problems)
    return MISSING if len(problems.items) > before else out
