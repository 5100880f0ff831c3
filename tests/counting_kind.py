"""A small stateful rule kind for the tests of the detector-state seam: it counts each
actor's events in the store-backed state and alerts at every `every`-th one.

Run as a script it is the daemon (`neo-auditd run`) with this kind registered:
    python tests/counting_kind.py CONFIG
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from auditd.detect.kind_types import KindContext, Verdict
from auditd.detect.kinds import KINDS
from auditd.detect.state import DEFAULT_MAX_KEYS, StateStore, rule_state_hash


@dataclass(frozen=True, slots=True)
class CountParams:
    every: int = 10
    max_keys: int = DEFAULT_MAX_KEYS


class CountKind:
    params_type = CountParams

    def build(self, rule: Any, params: CountParams, context: KindContext):
        store = context.state if context.state is not None else StateStore.in_memory()
        state = store.rule(rule.id, rule_state_hash(rule.kind, rule.condition, params), int,
                           max_keys=params.max_keys)

        def detect(event) -> Verdict | None:
            key = event.user_id or "-"
            n = state.get(key, 0) + 1
            state.put(key, n)
            return Verdict(reason=f"event {n} of {key}") if n % params.every == 0 else None

        return detect


WITH_COUNT = MappingProxyType({**KINDS, "test_count": CountKind()})

if __name__ == "__main__":
    from auditd.logs import setup_logging
    from auditd.service import serve

    setup_logging("INFO")
    sys.exit(serve(Path(sys.argv[1]), kinds=WITH_COUNT))
