#!/usr/bin/env python3
"""Fuzz the config, rule-file and directory loaders: hostile inputs per second, and any failure.

Each input is one seed file of the example deployment or the shipped rules with one
thing broken (tests/config_fuzz.py: wrong types and ranges, near-miss words, deleted,
renamed and added keys, YAML 1.1 number tokens, empty, truncated, binary, deep and
alias-bomb files). Every input must be accepted, or refused with every problem at
file:line:column; an exception that escapes, an unlocated problem or an internal
error is a failure, printed with the input's description and saved for replay.

    python benchmarks/fuzz_config.py                       # 100,000 inputs, one process (~30 min)
    python benchmarks/fuzz_config.py --inputs 5000 --jobs 2 --seed 7
    python benchmarks/fuzz_config.py --via check           # the whole of `check` per input (slower)

By default an input goes through the loader of the file it breaks, as `check` and a
SIGHUP reload run it (a broken config through the whole of `check`); `--via check`
runs `check` for every input. The pytest suite runs the same generator with capped
examples (tests/test_config_hostile.py).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROGRESS_EVERY = 5000  # a line on stderr per worker
MEMORY_LIMIT_BYTES = 3 * 1024**3  # per worker
sys.path.insert(0, str(REPO / "tests"))

from config_fuzz import Deployment, mutate  # noqa: E402


def _worker(args: tuple[int, int, str, str]) -> dict:
    seed, count, via, out_dir = args
    # An input that makes a loader allocate without end (a key file of /dev/zero did)
    # is a MemoryError here, reported as a failure, rather than the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, resource.getrlimit(resource.RLIMIT_AS)[1]))
    rnd = random.Random(seed)
    codes: collections.Counter[int] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    failures: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="neo-fuzz-") as folder:
        deployment = Deployment(Path(folder))
        started = time.perf_counter()
        for i in range(count):
            mutation = mutate(rnd, deployment)
            deployment.write(mutation)
            outcome = deployment.check(deployment.config_for(mutation)) if via == "check" \
                else deployment.load(mutation)
            codes[outcome.code] += 1
            kinds[f"{mutation.file}: {mutation.kind}"] += 1
            failure = outcome.failure
            if (i + 1) % PROGRESS_EVERY == 0:
                print(f"  [{seed}] {i + 1:,}/{count:,} inputs, {len(failures) + (failure is not None)} failure(s), "
                      f"{(i + 1) / (time.perf_counter() - started):,.0f}/s", file=sys.stderr, flush=True)
            if failure is not None:
                saved = Path(out_dir) / f"failure-{seed}-{i}-{Path(mutation.file).name}"
                saved.write_bytes(mutation.text.encode("utf-8", "surrogatepass"))
                failures.append({"input": mutation.describe(), "saved": str(saved), "failure": failure})
        seconds = time.perf_counter() - started
    return {"codes": codes, "kinds": kinds, "failures": failures, "seconds": seconds, "count": count}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="processes (each runs inputs/jobs)")
    parser.add_argument("--via", choices=("loaders", "check"), default="loaders")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "neo-auditd-fuzz",
                        help="where failing inputs are saved")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    per_job = [args.inputs // args.jobs + (1 if j < args.inputs % args.jobs else 0) for j in range(args.jobs)]
    tasks = [(args.seed * 1000 + j, n, args.via, str(args.out)) for j, n in enumerate(per_job)]
    started = time.perf_counter()
    if args.jobs == 1:
        results = [_worker(tasks[0])]
    else:
        with multiprocessing.Pool(args.jobs) as pool:
            results = pool.map(_worker, tasks)
    wall = time.perf_counter() - started

    codes: collections.Counter[int] = sum((r["codes"] for r in results), collections.Counter())
    kinds: collections.Counter[str] = sum((r["kinds"] for r in results), collections.Counter())
    failures = [f for r in results for f in r["failures"]]
    total = sum(r["count"] for r in results)
    print(f"fuzz_config: {total:,} inputs in {wall:.1f} s = {total / wall:,.0f} inputs/s "
          f"({args.jobs} process(es), via {args.via}, seed {args.seed})")
    print(f"  accepted {codes.get(0, 0):,}, refused with located problems {codes.get(78, 0):,}, "
          f"failures {len(failures):,}")
    by_file: collections.Counter[str] = collections.Counter()
    by_mutation: collections.Counter[str] = collections.Counter()
    for key, n in kinds.items():
        file, _, kind = key.partition(": ")
        by_file[file] += n
        by_mutation[kind] += n
    print("  by file: " + ", ".join(f"{k} {v:,}" for k, v in sorted(by_file.items())))
    print("  by mutation: " + ", ".join(f"{k} {v:,}" for k, v in by_mutation.most_common()))
    by_kind = collections.Counter(f["failure"].splitlines()[-1][:160] for f in failures)
    for line, n in by_kind.most_common():
        example = next(f for f in failures if f["failure"].splitlines()[-1][:160] == line)
        print(f"\nFAILURE x{n}: {line}\n  e.g. {example['input']} (saved: {example['saved']})\n"
              + "\n".join("    " + s for s in example["failure"].splitlines()[-12:]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
