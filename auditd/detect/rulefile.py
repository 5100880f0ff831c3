"""Rule files: flat lists of `list`, `macro` and `rule` items, merged in load order.

As in Falco, operators tune shipped rules from their own files instead of editing
them: a later item names an earlier list, macro or rule and either appends to it or
replaces keys of it::

    - list: allowed_share_partners        # the shipped list is empty
      items: [P-LOGI]
      append: true                         # shorthand: append every key given
    - rule: bulk_export_of_customer_data
      exceptions: [...]
      override: {exceptions: append, severity: replace}
    - rule: print_of_sensitive_data
      enabled: false                       # a bare `enabled` switches a rule on or off

Defining a name twice without `append`/`override` is an error, so a copied rule
cannot silently shadow a shipped one. Files are only read and checked here; lists
and macros are resolved once every file is in (`spec.py`), so an append in a later
file reaches every rule that uses the list.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from auditd.config.located import Doc, PathKey, Problems, load_yaml_file
from auditd.config.typed import MISSING, convert
from auditd.config.typed import key as yaml_key
from auditd.detect.alert import SEVERITIES
from auditd.detect.condition import And, ConditionError, Or, Origin, parse_appended, parse_condition
from auditd.detect.render import compile_title, unsafe_field_message
from auditd.detect.rule_exceptions import ExceptionItem, ExceptionSpec, build_exception
from auditd.detect.samples import SampleEvent, SamplesItem, build_samples
from auditd.errors import ConfigProblem, Location

Mode = Literal["append", "replace"]
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*\Z")  # rule ids: stable, in alert ids and CLI args
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # list and macro names: no dots, unlike fields
_BOTH: frozenset[str] = frozenset({"append", "replace"})
_REPLACE: frozenset[str] = frozenset({"replace"})
LIST_MODES = {"items": _BOTH}
MACRO_MODES = {"condition": _BOTH}
RULE_MODES = {
    "condition": _BOTH, "exceptions": _BOTH, "tags": _BOTH, "output_fields": _BOTH, "samples": _BOTH,
    "desc": _REPLACE, "severity": _REPLACE, "enabled": _REPLACE, "kind": _REPLACE,
    "params": _REPLACE, "title": _REPLACE,
}


@dataclass(frozen=True, slots=True)
class ListItem:
    name: str = yaml_key("list")
    items: list[str] | None = None
    append: bool = False
    override: dict[str, Mode] | None = None


@dataclass(frozen=True, slots=True)
class MacroItem:
    name: str = yaml_key("macro")
    condition: str | None = None
    append: bool = False
    override: dict[str, Mode] | None = None


@dataclass(frozen=True, slots=True)
class RuleItem:
    name: str = yaml_key("rule")
    desc: str | None = None
    condition: str | None = None
    kind: str | None = None
    params: dict[str, Any] | None = None
    severity: Literal[SEVERITIES] | None = None
    tags: list[str] | None = None
    enabled: bool | None = None
    title: str | None = None
    output_fields: list[str] | None = None
    exceptions: list[ExceptionItem] | None = None
    samples: SamplesItem | None = None
    append: bool = False
    override: dict[str, Mode] | None = None


@dataclass
class ListDraft:
    name: str
    items: list[str]
    where: Location | None


@dataclass
class MacroDraft:
    name: str
    node: Any  # parsed tree; None once any part failed to parse (already reported)
    origin: Origin


@dataclass
class RuleDraft:
    """A rule while files are still being merged; `spec.py` freezes it."""

    id: str
    doc: Doc  # where it was first defined
    path: PathKey
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, tuple[Doc, PathKey]] = field(default_factory=dict)  # the last writer of each key
    condition_text: str = ""
    broken: bool = False  # a key had an error (already reported): the rule is not built


@dataclass
class Definitions:
    lists: dict[str, ListDraft] = field(default_factory=dict)
    macros: dict[str, MacroDraft] = field(default_factory=dict)
    rules: dict[str, RuleDraft] = field(default_factory=dict)  # in load order


def rule_files(paths: Iterable[Path | str], problems: Problems) -> list[Path]:
    """Files in the order given; a folder contributes its *.yaml/*.yml sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        try:
            if p.is_dir():
                out.extend(sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file()))
            elif p.exists():
                out.append(p)
            else:
                problems.items.append(ConfigProblem(Location(str(p), 0, 0), "", "rules path not found"))
        except (OSError, ValueError) as exc:  # an unreadable folder, a NUL in the name
            why = getattr(exc, "strerror", None) or str(exc)
            problems.items.append(ConfigProblem(Location(str(p), 0, 0), "", f"cannot read rules path: {why}"))
    return out


class RuleFileReader:
    """Reads rule files one after another into one set of Definitions."""

    def __init__(self, problems: Problems, *, zone: dt.tzinfo, categories: frozenset[str] | None):
        self.problems = problems
        self.zone = zone
        self.categories = categories
        self.defs = Definitions()
        self._broken: set[tuple[str, str]] = set()  # (type, name) whose definition failed

    def read(self, path: Path) -> None:
        doc = load_yaml_file(path, self.problems)
        if doc is None or doc.data in (None, {}):
            return
        if not isinstance(doc.data, list):
            self.problems.add(doc, (), "a rule file is a list of items: - list: ..., - macro: ..., - rule: ...")
            return
        for i, raw in enumerate(doc.data):
            self._item(doc, (i,), raw)

    def _item(self, doc: Doc, path: PathKey, raw: Any) -> None:
        types = [k for k in ("list", "macro", "rule") if isinstance(raw, dict) and k in raw]
        if len(types) != 1:
            self.problems.add(doc, path, "each item has exactly one of 'list', 'macro' or 'rule'")
            return
        kind = types[0]
        before = len(self.problems.items)
        item = convert({"list": ListItem, "macro": MacroItem, "rule": RuleItem}[kind], raw, doc, path, self.problems)
        if item is MISSING or len(self.problems.items) > before:
            self._broken.add((kind, str(raw.get(kind))))
            return
        name = item.name
        if not (_ID if kind == "rule" else _NAME).match(name):
            what = "letters, digits, '_', '.', ':', '-'" if kind == "rule" else "letters, digits and '_'"
            self.problems.add(doc, path + (kind,), f"bad {kind} name {name!r}: use {what}")
            return
        {"list": self._list, "macro": self._macro, "rule": self._rule}[kind](item, doc, path)

    # --- append / override -----------------------------------------------------------

    def _modes(self, item: Any, present: set[str], allowed: dict[str, frozenset[str]],
               doc: Doc, path: PathKey) -> dict[str, str] | None | bool:
        """None for a new definition, the mode of each key for a change, False on error."""
        if item.append and item.override is not None:
            self.problems.add(doc, path + ("override",), "use either 'append: true' or 'override', not both")
            return False
        if item.override is not None:
            return self._override_modes(item.override, present, allowed, doc, path)
        if not item.append:
            return None
        ok = bool(present)
        if not present:
            self.problems.add(doc, path + ("append",), "'append: true' with nothing to append")
        for key in sorted(present):
            if "append" not in allowed[key]:
                self.problems.add(doc, path + (key,), f"'{key}' cannot be appended to; "
                                  f"use override: {{{key}: replace}}", at_key=True)
                ok = False
        return {k: "append" for k in allowed if k in present} if ok else False

    def _override_modes(self, override: dict[str, str], present: set[str], allowed: dict[str, frozenset[str]],
                        doc: Doc, path: PathKey) -> dict[str, str] | bool:
        ok = bool(override)
        if not override:
            self.problems.add(doc, path + ("override",), "'override' names no key")
        for key, mode in override.items():
            where = path + ("override", key)
            if key not in allowed:
                self.problems.add(doc, where, f"'{key}' cannot be overridden (can: {', '.join(allowed)})")
            elif mode not in allowed[key]:
                self.problems.add(doc, where, f"'{key}' can only be replaced")
            elif key not in present:
                self.problems.add(doc, where, f"override names '{key}' but the item gives no '{key}'")
            else:
                continue
            ok = False
        for key in sorted(present - set(override)):
            self.problems.add(doc, path + (key,), f"'{key}' needs a mode in 'override' (append or replace)",
                              at_key=True)
            ok = False
        return dict(override) if ok else False

    def _undefined(self, kind: str, name: str, doc: Doc, path: PathKey) -> None:
        if (kind, name) not in self._broken:  # its definition already failed: say it once
            self.problems.add(doc, path + (kind,), f"cannot change {kind} '{name}': it is not defined "
                              f"in an earlier item or file")

    def _duplicate(self, kind: str, name: str, first: Location | None, doc: Doc, path: PathKey) -> None:
        self.problems.add(doc, path + (kind,), f"{kind} '{name}' is already defined at {first}; to change "
                          f"it, use 'override' (or 'append: true')")

    # --- lists and macros ------------------------------------------------------------

    def _list(self, item: ListItem, doc: Doc, path: PathKey) -> None:
        modes = self._modes(item, {"items"} if item.items is not None else set(), LIST_MODES, doc, path)
        existing = self.defs.lists.get(item.name)
        if modes is False:
            return
        if modes is None:
            if existing is not None:
                self._duplicate("list", item.name, existing.where, doc, path)
            elif item.items is None:
                self.problems.add(doc, path, "missing required key 'items'")
            else:
                self.defs.lists[item.name] = ListDraft(item.name, list(item.items), doc.where(path))
        elif existing is None:
            self._undefined("list", item.name, doc, path)
        elif modes["items"] == "append":
            existing.items.extend(item.items or ())
        else:
            existing.items = list(item.items or ())

    def _macro(self, item: MacroItem, doc: Doc, path: PathKey) -> None:
        modes = self._modes(item, {"condition"} if item.condition is not None else set(), MACRO_MODES, doc, path)
        existing = self.defs.macros.get(item.name)
        if modes is False:
            return
        if modes is None and existing is not None:
            self._duplicate("macro", item.name, existing.origin.doc.where(existing.origin.path), doc, path)
        elif modes is None and item.condition is None:
            self.problems.add(doc, path, "missing required key 'condition'")
        elif modes is not None and existing is None:
            self._undefined("macro", item.name, doc, path)
        else:
            mode = "replace" if modes is None else modes["condition"]
            origin = Origin(doc, path + ("condition",), item.condition or "")
            node = self._condition(origin, None if existing is None else existing.node, mode)
            if existing is None:
                self.defs.macros[item.name] = MacroDraft(item.name, node, origin)
            else:
                existing.node = node

    def _condition(self, origin: Origin, base: Any, mode: str) -> Any:
        """Parse a condition (mode replace) or an appended one joined to `base`."""
        try:
            if mode == "replace":
                return parse_condition(origin.text, origin)
            joiner, node = parse_appended(origin.text, origin)
        except ConditionError as exc:
            self.problems.add(origin.doc, origin.path, f"{exc.message} (at character {exc.pos + 1})")
            return None
        if base is None:
            return None
        return And((base, node)) if joiner == "and" else Or((base, node))

    # --- rules -------------------------------------------------------------------------

    def _rule(self, item: RuleItem, doc: Doc, path: PathKey) -> None:
        present = {k for k in RULE_MODES if getattr(item, k) is not None}  # iterated in RULE_MODES order
        draft = self.defs.rules.get(item.name)
        if present == {"enabled"} and not item.append and item.override is None:
            if draft is None:  # Falco's shorthand to switch a rule on or off needs the rule
                self._undefined("rule", item.name, doc, path)
                return
            modes: Any = {"enabled": "replace"}
        else:
            modes = self._modes(item, present, RULE_MODES, doc, path)
        if modes is False:
            return
        if modes is None:
            if draft is not None:
                self._duplicate("rule", item.name, draft.doc.where(draft.path), doc, path)
                return
            draft = RuleDraft(item.name, doc, path)
            self.defs.rules[item.name] = draft
            modes = {k: "replace" for k in RULE_MODES if k in present}
        elif draft is None:
            self._undefined("rule", item.name, doc, path)
            return
        before = len(self.problems.items)
        for key, mode in modes.items():
            self._set(draft, key, mode, getattr(item, key), doc, path + (key,))
        if len(self.problems.items) > before:
            draft.broken = True

    def _set(self, draft: RuleDraft, key: str, mode: str, value: Any, doc: Doc, path: PathKey) -> None:
        draft.sources[key] = (doc, path)
        if key == "condition":
            origin = Origin(doc, path, value)
            draft.values[key] = self._condition(origin, draft.values.get(key), mode)
            draft.condition_text = value.strip() if mode == "replace" else _joined(draft.condition_text, value)
            return
        if key == "exceptions":
            value = self._exceptions(draft, value, mode, doc, path)
        elif key == "samples":
            value = build_samples(value, doc, path, self.problems, rule_id=draft.id, zone=self.zone,
                                  categories=self.categories)
        elif key == "output_fields":
            self._check_output(value, doc, path)
        elif key == "title":
            for message in compile_title(value)[1]:
                self.problems.add(doc, path, message)
        if mode == "append":
            value = list(draft.values.get(key, ())) + list(value)
        draft.values[key] = value

    def _exceptions(self, draft: RuleDraft, items: list[ExceptionItem], mode: str, doc: Doc,
                    path: PathKey) -> list[ExceptionSpec]:
        names = {e.name for e in draft.values.get("exceptions", ())} if mode == "append" else set()
        out = []
        for i, item in enumerate(items):
            if item.name in names:
                self.problems.add(doc, path + (i, "name"), f"rule '{draft.id}' already has an exception "
                                  f"named '{item.name}'")
                continue
            names.add(item.name)
            spec = build_exception(item, doc, path + (i,), self.problems)
            if spec is not None:
                out.append(spec)
        return out

    def _check_output(self, names: list[str], doc: Doc, path: PathKey) -> None:
        for i, name in enumerate(names):
            why = unsafe_field_message(name)
            if why:
                self.problems.add(doc, path + (i,), why)


def _joined(base: str, appended: str) -> str:
    """The text of an appended condition as it is evaluated: both sides parenthesised."""
    joiner, _, rest = appended.strip().partition(" ")
    return f"({base}) {joiner} ({rest.strip()})"


def read_definitions(paths: Iterable[Path | str], problems: Problems, *, zone: dt.tzinfo,
                     categories: frozenset[str] | None) -> Definitions:
    reader = RuleFileReader(problems, zone=zone, categories=categories)
    for path in rule_files(paths, problems):
        reader.read(path)
    return reader.defs


__all__ = ["Definitions", "RuleDraft", "SampleEvent", "read_definitions", "rule_files"]
