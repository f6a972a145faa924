"""``bench.py steps``: the overhead of one durable ``step.run`` against a bare enqueue round trip.

    python scripts/bench_steps.py [--steps N] [--jobs J]

A worker runs ``step-timer`` jobs, each timing ``n`` no-op ``step.run`` calls from inside the
handler (each is a STEP request, a synced commit and the reply). The same broker also answers
bare ``enqueue`` calls from the client (each a request, a synced commit and the ack). Target
(issue 6): step.run p50 <= 1.5 x the enqueue p50.
"""
from __future__ import annotations

import argparse
import sys
import time

from bench import Cluster, percentile  # scripts/ is on sys.path when this runs as a script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_steps.py", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="steps per job (default 50)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs, one at a time (default 20)")
    parser.add_argument("--enqueues", type=int, default=1000, help="bare enqueues timed (default 1000)")
    args = parser.parse_args(argv)
    with Cluster("steps") as c:
        c.start_broker()
        c.start_worker("bench", 1)
        client = c.client()
        client.wait(client.enqueue("step-timer", {"n": 5}, group="bench"), timeout=30)  # warm up
        steps: list[float] = []
        for _ in range(args.jobs):
            result = client.wait(client.enqueue("step-timer", {"n": args.steps}, group="bench"), timeout=120)
            steps.extend(result.value)
        enqueues = []
        for i in range(args.enqueues):
            t0 = time.perf_counter()
            client.enqueue("noop", {"i": i}, group="bench-idle")
            enqueues.append((time.perf_counter() - t0) * 1000)
    s50, s99 = percentile(steps, 50), percentile(steps, 99)
    e50, e99 = percentile(enqueues, 50), percentile(enqueues, 99)
    print(f"step.run (n={len(steps)}):        p50 {s50:.3f} ms   p99 {s99:.3f} ms")
    print(f"bare enqueue (n={len(enqueues)}):  p50 {e50:.3f} ms   p99 {e99:.3f} ms")
    verdict = "ok" if s50 <= 1.5 * e50 else "MISS"
    print(f"ratio p50 {s50 / e50:.2f} x (target <= 1.5: {verdict}), p99 {s99 / e99:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
