#!/usr/bin/env python3
"""``AsyncClient.enqueue`` from many tasks on one event loop, with the CPU each side spends.

    python scripts/bench_async.py [--in-flight 64] [--per-task 200] [--runs 1]

A broker on a fresh LMDB directory (``bench.py``'s ``Cluster``), no worker; ``--in-flight``
tasks each await ``--per-task`` enqueues on one ``AsyncClient``. Prints jobs per second and
the CPU per job of this process (the client, its zmq thread included) and of the broker
(read from ``/proc``). ``PYTHONPATH=SITE`` in front runs another tree's package, as for the
``--ab`` runs of ``bench_e2e.py``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Cluster  # noqa: E402

from shoal import AsyncClient  # noqa: E402


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(endpoint: str, broker_pid: int, in_flight: int, per_task: int) -> tuple[float, float, float]:
    async with AsyncClient(endpoint, timeout=30) as client:
        await client.enqueue("noop", {}, group="bench")  # connected before the clock starts

        async def task() -> None:
            for i in range(per_task):
                await client.enqueue("noop", {"i": i}, group="bench")

        broker0, self0, t0 = cpu_s(broker_pid), self_cpu_s(), time.perf_counter()
        await asyncio.gather(*(task() for _ in range(in_flight)))
        elapsed = time.perf_counter() - t0
        n = in_flight * per_task
        return n / elapsed, (self_cpu_s() - self0) / n * 1e6, (cpu_s(broker_pid) - broker0) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--per-task", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    import shoal
    for run in range(args.runs):
        with Cluster(f"async-{run}") as c:
            c.start_broker()
            assert c.broker is not None
            rate, client_us, broker_us = asyncio.run(measure(c.endpoint, c.broker.popen.pid, args.in_flight,
                                                             args.per_task))
        print(f"{rate:,.0f} jobs/s; client CPU {client_us:.0f} us/job; broker CPU {broker_us:.0f} us/job "
              f"[{os.path.dirname(shoal.__file__)}] load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
