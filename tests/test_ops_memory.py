"""The pipeline's large short-lived buffers come from the heap, not from fresh mmaps."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator only")

# a batch's life, a hundred times: chunk buffers of ~100 kB, joined into one blob, freed
BATCHES = """
import resource, sys
from auditd.ops.memory import keep_buffers_in_heap
print(keep_buffers_in_heap() if sys.argv[1] == "tuned" else None)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    parts = [b"x" * (100_000 + 1000 * j) for j in range(40)]
    doc = b"".join(parts)
    del parts, doc
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str, **env: str) -> tuple[str, int]:
    # glibc's allocator as it comes, whatever this shell has set, plus `env`
    clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", BATCHES, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env}).stdout.split()
    return out[0], int(out[1])


def test_freed_buffers_are_reused_instead_of_mapped_again():
    applied, tuned = page_faults("tuned")
    _, plain = page_faults("plain")
    assert applied == "True"
    assert tuned * 10 < plain, (tuned, plain)  # measured: ~2,300 against ~230,000


@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_the_operators_own_malloc_settings_win(env):
    applied, _ = page_faults("tuned", **env)
    assert applied == "False"
