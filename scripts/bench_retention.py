"""Disk use under a steady load levels off: finished jobs expire and snapshots trim the log.

    python scripts/bench_retention.py [--seconds 60] [--rate 500]

Runs a broker (retention 5 s, a snapshot every 20,000 log entries) and one worker, enqueues
``rate`` jobs per second in batches, and prints the store's sizes every few seconds.
"""
from __future__ import annotations

import argparse
import sys
import time

from bench import CONFIG_TOML, Cluster  # scripts/ is on sys.path when this runs as a script

TOML = CONFIG_TOML.replace("[broker]\n", "[broker]\nsnapshot_entries = 20000\n") + """
[workflows.bench]
retention = "5s"
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_retention.py")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=500, help="jobs per second (default 500)")
    args = parser.parse_args(argv)
    with Cluster("retention") as c:
        c.config.write_text(TOML)
        c.start_broker()
        c.start_worker("bench", 16)
        client = c.client()
        started = time.monotonic()
        next_report = started
        sent = 0
        print(f"{'t (s)':>6} {'sent':>8} {'done':>8} {'live MiB':>9} {'file MiB':>9} {'jobs':>7} {'log':>7} snapshots")
        while time.monotonic() - started < args.seconds:
            client.enqueue_many("noop", [{"i": sent + i} for i in range(args.rate // 10)], group="bench")
            sent += args.rate // 10
            time.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
            if time.monotonic() >= next_report:
                next_report += 5
                s = client.storage()
                done = client.stats()["bench"]["completed"]
                print(f"{time.monotonic() - started:6.0f} {sent:8,} {done:8,} {s['used_bytes'] / 2**20:9.1f} "
                      f"{s['file_bytes'] / 2**20:9.1f} {s['entries']['jobs']:7,} {s['entries']['log']:7,} "
                      f"{len(s['snapshots'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
