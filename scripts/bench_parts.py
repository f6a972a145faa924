#!/usr/bin/env python3
"""Where one phase of ``bench_hotpath.py`` spends its time, step by step, in µs a job.

    python scripts/bench_parts.py [--phase bulk|e2e|enqueue] [--rounds N]

The same in-process broker and messages as ``bench_hotpath.py``; the named steps below are
wrapped in ``time.perf_counter`` (nested steps are inside their callers' figures, and the
wrappers add about 0.1 µs a call). ``PYTHONPATH=SITE`` in front measures another tree.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_hotpath  # noqa: E402

STEPS = [  # (module, class or None, function, label)
    ("shoal.protocol", None, "decode", "decode"),
    ("shoal.broker.core.handlers.enqueue", None, "admit", "admit"),
    ("shoal.broker.core.admission", "Admission", "known", "admit: known"),
    ("shoal.broker.core.admission", "Admission", "refusal", "admit: refusal"),
    ("shoal.broker.core.jobs", "JobTable", "create_many", "admit: create_many"),
    ("shoal.broker.core.handlers.worker", None, "on_done", "on_done"),
    ("shoal.broker.core.handlers.timers", None, "dispatch", "tick: dispatch"),
    ("shoal.broker.storage.store", "Store", "commit", "commit"),
    ("shoal.broker.storage.store", "Store", "_ops", "commit: _ops"),
    ("shoal.broker.storage.store", "Store", "_apply_live", "commit: _apply_live"),
    ("shoal.broker.storage.wal", "WriteAheadFile", "append", "commit: write-ahead append"),
]


def wrap(acc: collections.Counter[str]) -> None:
    import importlib
    for module_name, cls_name, name, label in STEPS:
        module = importlib.import_module(module_name)
        owner: Any = getattr(module, cls_name) if cls_name else module
        if not hasattr(owner, name):
            continue  # a tree without this step
        original = getattr(owner, name)

        def timed(*args: Any, _original: Any = original, _label: str = label, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                acc[_label] += time.perf_counter() - started
        setattr(owner, name, timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=("bulk", "e2e", "enqueue"), default="bulk")
    parser.add_argument("--rounds", type=int, default=0, help="measured rounds (default: 60 bulk, 300 e2e, 3000 enqueue)")
    args = parser.parse_args()
    acc: collections.Counter[str] = collections.Counter()
    wrap(acc)
    per = {"bulk": 1000, "e2e": 32, "enqueue": 1}[args.phase]
    rounds = args.rounds or {"bulk": 60, "e2e": 300, "enqueue": 3000}[args.phase]
    warmup = 5 if args.phase == "bulk" else 50
    ns = argparse.Namespace(phase=args.phase, rounds=rounds, per=per, warmup=warmup, profile=None, json=False)
    figures = bench_hotpath.measure(ns)
    jobs = (rounds + warmup) * per  # the wrappers count the warm-up rounds too
    import shoal
    print(f"{args.phase}: {rounds} rounds of {per}, CPU (bench_hotpath): core {figures['core_us']:.1f}, "
          f"commit {figures['commit_us']:.1f} us a job [{Path(shoal.__file__).parent}]")
    for label, seconds in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"  {label:28s} {seconds / jobs * 1e6:7.2f} us a job (wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
