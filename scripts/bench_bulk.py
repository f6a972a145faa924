#!/usr/bin/env python3
"""``Client.enqueue_many`` in calls of 1,000 jobs against a real broker (no worker).

    python scripts/bench_bulk.py [--calls 20] [--per 1000] [--runs 3]

A broker on a fresh LMDB directory (``bench.py``'s ``Cluster``), one ``Client``: 5 calls
unmeasured, then ``--runs`` timed rounds of ``--calls`` calls; prints the median rate.
``PYTHONPATH=SITE`` in front runs another tree's package, as for the ``--ab`` runs of
``bench_e2e.py``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--per", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import shoal
    with bench.Cluster("bulk") as cluster:
        cluster.start_broker()
        client = cluster.client()
        items = [{"i": i} for i in range(args.per)]
        for _ in range(5):
            client.enqueue_many("noop", items, group="bench")
        rates = []
        for _ in range(args.runs):
            started = time.perf_counter()
            for _ in range(args.calls):
                client.enqueue_many("noop", items, group="bench")
            rates.append(args.calls * args.per / (time.perf_counter() - started))
        client.close()
    print(f"bulk x{args.per}: {statistics.median(rates):,.0f} jobs/s (median of {args.runs}) "
          f"[{Path(shoal.__file__).parent}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
