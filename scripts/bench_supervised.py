#!/usr/bin/env python3
"""Sequential ``Client.enqueue`` against a broker that supervises its own workers.

    python scripts/bench_supervised.py [--groups 2] [--workers 2] [--total 2000] [--runs 1]

``bench.py`` runs its brokers with ``--no-supervise``; this one starts a broker as production
does (``supervise = true``), with ``--groups`` groups (1 to 3, ``bench_app``'s) of ``--workers`` always-on workers each
(``bench_app``), waits until they have all said HELLO, then enqueues ``--total`` jobs one at a
time to a group none of them serves, so every pass of the loop carries the supervisor's work
and nothing else runs. Prints enqueues per second and the broker's CPU per enqueue (from
``/proc``). ``PYTHONPATH=SITE`` in front runs another tree's package for the broker, its
workers and the client, as for the ``--ab`` runs of ``bench_e2e.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
from bench_async import cpu_s  # noqa: E402


GROUPS = ("email", "media", "bench")  # the groups of bench_app's workflows (a worker needs one of its own)


def config(names: tuple[str, ...], workers: int) -> str:
    text = '[broker]\nheartbeat_interval = "1s"\n\n[workflows]\napp = "bench_app"\n'
    for name in names:
        text += f"\n[workflows.{name}]\nworkers = {workers}\nconcurrency = 4\n"
    return text


def run(groups: int, workers: int, total: int) -> tuple[float, float]:
    names = GROUPS[:groups]
    bench.CONFIG_TOML = config(names, workers)
    with bench.Cluster("supervised") as cluster:
        cluster.start_broker(supervise=True)
        client = cluster.client()
        deadline = time.monotonic() + 60
        while not all(client.stats().get(g, {}).get("workers", 0) >= workers for g in names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the supervised workers did not all join:\n{cluster.broker.output()}")
            time.sleep(0.1)
        for _ in range(300):  # warm-up, unmeasured
            client.enqueue("noop", {}, group="parked")
        pid = cluster.broker.popen.pid
        cpu_before, started = cpu_s(pid), time.perf_counter()
        for _ in range(total):
            client.enqueue("noop", {}, group="parked")
        seconds, cpu = time.perf_counter() - started, cpu_s(pid) - cpu_before
        client.close()
    return total / seconds, cpu / total * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=2, choices=range(1, len(GROUPS) + 1))
    parser.add_argument("--workers", type=int, default=2, help="always-on workers per group")
    parser.add_argument("--total", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    import shoal
    for _ in range(args.runs):
        rate, cpu_us = run(args.groups, args.workers, args.total)
        print(f"{rate:,.0f} enqueues/s; broker CPU {cpu_us:.0f} us/enqueue "
              f"({args.groups} supervised groups x {args.workers} workers) [{Path(shoal.__file__).parent}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
