#!/usr/bin/env python3
"""The broker's CPU while one client enqueues at a fixed pace (what ``[broker] spin`` costs).

    python scripts/bench_paced.py [--rates 100,500,1000,1500,2000] [--seconds 3] [--worker]

A broker on a fresh LMDB directory (``bench.py``'s ``Cluster``, no worker), one ``Client``:
first 2 s idle, then for each rate ``Client.enqueue`` once every 1/rate s for ``--seconds``.
Prints the broker process's CPU (user + system, from ``/proc``) as a share of one core, and
per enqueue. ``--worker``: the jobs go to a group with one worker, so each is followed by its
DONE (what a pass that waits for company costs). ``PYTHONPATH=SITE`` in front runs another tree's package, as for ``bench_bulk.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402


def paced(client: object, pid: int, rate: int, seconds: float, group: str) -> tuple[float, float]:
    """Enqueue at ``rate`` a second for ``seconds``: the broker's CPU share and µs per enqueue."""
    n = int(rate * seconds)
    cpu0, start = bench.cpu_seconds(pid), time.perf_counter()
    for i in range(n):
        due = start + i / rate
        while (left := due - time.perf_counter()) > 0:
            time.sleep(left)
        client.enqueue("noop", None, group=group)  # type: ignore[attr-defined]
    used, elapsed = bench.cpu_seconds(pid) - cpu0, time.perf_counter() - start
    return used / elapsed, used / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,500,1000,1500,2000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--worker", action="store_true", help="enqueue to a group with one worker (8 slots)")
    args = parser.parse_args()
    import shoal
    rows = []
    with bench.Cluster("paced") as cluster:
        cluster.start_broker()
        assert cluster.broker is not None
        pid = cluster.broker.popen.pid
        group = "parked"
        if args.worker:
            cluster.start_worker("bench", 8)
            group = "bench"
        client = cluster.client()
        client.enqueue("noop", None, group=group)
        cpu0 = bench.cpu_seconds(pid)
        time.sleep(2.0)
        rows.append(("idle", (bench.cpu_seconds(pid) - cpu0) / 2.0, 0.0))
        for rate in (int(r) for r in args.rates.split(",")):
            share, per = paced(client, pid, rate, args.seconds, group)
            rows.append((f"{rate:,}/s", share, per))
        client.close()
    print(f"broker CPU at a paced enqueue rate{', one worker' if args.worker else ''} [{Path(shoal.__file__).parent}]")
    for name, share, per in rows:
        print(f"  {name:>8}: {share * 100:5.1f}% of a core" + (f", {per:,.0f} us per enqueue" if per else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
