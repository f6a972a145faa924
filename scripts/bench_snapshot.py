"""Snapshots must not stall enqueues: enqueue p99 with snapshots running vs without.

    python scripts/bench_snapshot.py [--fill 200000] [--samples 2000]

Fills a broker with ``fill`` pending jobs (so a snapshot copies tens of MiB), then times single
enqueues, once with snapshots off and once with one taken every 0.2 s (so one is running most
of the time). Target (issue 7): p99 with snapshots <= 2 x p99 without.
"""
from __future__ import annotations

import argparse
import sys
import time

from bench import CONFIG_TOML, Cluster, percentile  # scripts/ is on sys.path when this runs as a script


def measure(snapshots: bool, fill: int, samples: int) -> tuple[float, float, int, float]:
    interval = '"0.2s"' if snapshots else '"24h"'
    toml = CONFIG_TOML.replace("[broker]\n", f"[broker]\nsnapshot_interval = {interval}\nsnapshot_entries = 100000000\n")
    with Cluster("snapshot" if snapshots else "nosnapshot") as c:
        c.config.write_text(toml)
        c.start_broker()
        client = c.client(timeout_s=60)
        for start in range(0, fill, 1000):
            client.enqueue_many("noop", [{"i": i, "pad": "x" * 100} for i in range(start, start + 1000)], group="idle")
        time.sleep(0.5)
        latencies = []
        seen: set[str] = set()  # snapshot directories observed while measuring
        for i in range(samples):
            t0 = time.perf_counter()
            client.enqueue("noop", {"i": i}, group="idle")
            latencies.append((time.perf_counter() - t0) * 1000)
            if i % 50 == 0:  # between samples, outside the timed call
                seen.update(snap["name"] for snap in client.storage()["snapshots"])
        size_mib = client.storage()["file_bytes"] / 2**20
        taken = len(seen)
    return percentile(latencies, 50), percentile(latencies, 99), taken, size_mib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_snapshot.py")
    parser.add_argument("--fill", type=int, default=200_000)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args(argv)
    off50, off99, _, size = measure(False, args.fill, args.samples)
    on50, on99, taken, _ = measure(True, args.fill, args.samples)
    print(f"state: {args.fill:,} jobs, data file {size:.1f} MiB")
    print(f"enqueue without snapshots: p50 {off50:.3f} ms  p99 {off99:.3f} ms")
    print(f"enqueue with snapshots:    p50 {on50:.3f} ms  p99 {on99:.3f} ms  ({taken} snapshots taken during the run)")
    print(f"p99 ratio {on99 / off99:.2f} x (target <= 2: {'ok' if on99 <= 2 * off99 else 'MISS'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
