"""The steps of one field's conversion (extract, lower, split, map, checks) and value maps.

Each step takes the value so far and returns the next one; None means "absent from
here on" (a regex that does not match, a list that splits into nothing). A step
raises ValueError, with what it found, for a value it cannot take. Steps are
closures rather than functools.partial with keywords: a partial merges its keyword
dict on every call, and every record calls these.
"""

from __future__ import annotations

from typing import Any, Callable

from auditd.config.regex import LinearRegex

from auditd.decode.values import MAX_COUNT, describe, to_text

Step = Callable[[Any], Any]
NOT_MAPPED = object()  # a lookup without a default raises for values it does not list


def chain(steps: list[Step]) -> Step:
    """Run steps in order; a step giving None makes the value absent."""
    if len(steps) == 1:
        return steps[0]
    frozen = tuple(steps)

    def run(value: Any) -> Any:
        for step in frozen:
            value = step(value)
            if value is None:
                return None
        return value

    return run


def unchanged(value: Any) -> Any:
    return value


def extract_step(pattern: LinearRegex) -> Step:
    """The first group of the first match (the whole match without groups); no match: absent."""
    extract_text = pattern.extract

    def extract(value: Any) -> Any:
        return extract_text(to_text(value))

    return extract


def lower(value: Any) -> Any:
    if type(value) is str:
        return value.lower()
    if isinstance(value, (list, tuple)):
        return [v.lower() if type(v) is str else v for v in value]
    return value


def split_step(separator: str) -> Step:
    def split(value: Any) -> Any:
        if type(value) is not str:
            return value  # already a list
        parts = tuple(p.strip() for p in value.split(separator))
        return tuple(p for p in parts if p) or None

    return split


def map_step(lookup: Callable[[Any], Any]) -> Step:
    """Map a value, or each value of a list (a list-valued entry adds all its items)."""

    def map_each(value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return lookup(value)
        out: list[str] = []
        for item in value:
            mapped = lookup(item)
            if isinstance(mapped, tuple):
                out.extend(mapped)
            else:
                out.append(mapped)
        return out

    return map_each


def vocabulary_step(allowed: frozenset[str]) -> Step:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"unknown value {describe(value)} (valid: {', '.join(sorted(allowed))})")
        return value

    return check


def non_negative(value: int) -> int:
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    if value > MAX_COUNT:
        raise ValueError(f"must be at most {MAX_COUNT:,}, got {describe(value)}")
    return value


def categories_step(known: frozenset[str]) -> Step:
    def check(value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in value if c not in known]
        if unknown:
            raise ValueError(f"unknown data categories {unknown} (valid: {', '.join(sorted(known))})")
        return value

    return check


# --- value maps (fields and categories) ------------------------------------------------


def map_value(value: str | list[str]) -> str | tuple[str, ...]:
    return tuple(value) if isinstance(value, list) else value


def map_table(table: dict[str, Any]) -> dict[str, Any]:
    return {key: map_value(v) for key, v in table.items()}


def exact_entries(table: dict[str, Any]) -> dict[str, Any]:
    """The entries of a map whose keys are not wildcards ('prefix*')."""
    return {k: v for k, v in table.items() if not k.endswith("*")}


def compile_lookup(table: dict[str, Any], default: Any = NOT_MAPPED) -> Callable[[Any], Any]:
    """Exact keys first, then keys ending in '*' by longest prefix, then the default."""
    exact = exact_entries(table)
    prefixes = sorted(((k[:-1], v) for k, v in table.items() if k.endswith("*")), key=lambda kv: -len(kv[0]))

    def lookup(raw: Any) -> Any:
        key = raw if type(raw) is str else to_text(raw)
        mapped = exact.get(key, NOT_MAPPED)
        if mapped is not NOT_MAPPED:
            return mapped
        for prefix, value in prefixes:
            if key.startswith(prefix):
                return value
        if default is NOT_MAPPED:
            raise ValueError(f"{describe(key)} is not in the map")
        return default

    return lookup
