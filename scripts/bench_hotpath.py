#!/usr/bin/env python3
"""The broker's CPU per message on the hot path, in one process, on the real LMDB store.

    python scripts/bench_hotpath.py [--phase enqueue|bulk|e2e] [--rounds N] [--json] [--profile tottime]
    python scripts/bench_hotpath.py --ab A=SITE_A B=SITE_B [--runs 5] [--phase ...]

No sockets and no other process: the loop's own steps (``handle``, ``tick``, ``take``, the
store's ``commit``) are called the way ``broker/shell/server.py`` calls them, and only their
CPU time (``time.process_time``) is counted, so the neighbours' load on a shared machine moves
the figures far less than any wall-clock rate. ``commit`` includes the kernel's share of the
synced write (pwrite, fdatasync), so it is shown apart from the core's.

- ``enqueue``: one ENQUEUE of one job per pass to a group with no worker (the sequential
  ``enqueue`` of ``bench.py core``): µs of CPU per enqueue.
- ``bulk``: one ENQUEUE of ``--per`` jobs (1,000) per pass to a group with no worker (``bench.py
  core``'s ``enqueue_many``): µs of CPU per job.
- ``e2e``: per round, one ENQUEUE of ``--per`` jobs plus a WAIT for each in one pass (tick
  dispatches them to one worker with as many slots), then one DONE of all their results in the
  next pass (which answers the WAITs): µs of CPU per job, enqueue to WAIT reply.

``--ab`` runs the phase as a child per run, alternating A B A B…, each with ``PYTHONPATH=SITE``
(a directory holding a ``shoal`` package from another commit, as for ``bench_e2e.py --ab``),
and prints medians with min/max.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

KEYS = ("core_us", "commit_us", "total_us")


def _broker(tmp: str) -> tuple[Any, Any]:
    from shoal.broker.core import Broker
    from shoal.broker.storage.store import Store
    from shoal.conf.settings import Settings
    store = Store(tmp)
    broker = Broker(store, Settings())
    broker.load()
    return broker, store


class Pass:
    """One pass of the loop, CPU-timed: handle each message, tick, take, commit."""

    def __init__(self, broker: Any, store: Any) -> None:
        self.broker, self.store = broker, store
        self.core_s = self.commit_s = 0.0

    def __call__(self, messages: list[tuple[bytes, list[bytes]]]) -> list[Any]:
        clock, broker = time.process_time, self.broker
        t0 = clock()
        for identity, frames in messages:
            broker.handle(identity, frames)
        broker.tick()
        batch, outbox = broker.take()
        t1 = clock()
        self.store.commit(batch, broker.clock.wall_ms())
        self.commit_s += clock() - t1
        self.core_s += t1 - t0
        return list(outbox)


def enqueue_phase(step: Pass, n: int) -> Callable[[int], None]:
    from shoal import protocol as P
    from shoal.ids import new_job_id
    client = b"\x00client"
    payload = P.pack({"i": 1})

    def one(i: int) -> None:
        frames = P.encode(P.ENQUEUE, {"rid": i, "jobs": [{"id": new_job_id(), "wf": "noop", "group": "parked",
                                                          "payload": payload}]})
        step([(client, frames)])
    return one


def bulk_phase(step: Pass, per: int) -> Callable[[int], None]:
    from shoal import protocol as P
    from shoal.ids import new_job_id
    client = b"\x00client"
    payloads = [P.pack({"i": i}) for i in range(per)]

    def one(i: int) -> None:
        jobs = [{"id": new_job_id(), "wf": "noop", "group": "parked", "payload": payload} for payload in payloads]
        step([(client, P.encode(P.ENQUEUE, {"rid": i, "jobs": jobs}))])
    return one


def e2e_phase(step: Pass, per: int) -> Callable[[int], None]:
    from shoal import protocol as P
    from shoal.ids import new_job_id
    client, worker = b"\x00client", b"\x00worker"
    step([(worker, P.encode(P.HELLO, {"group": "bench", "pid": 1, "host": "h", "slots": per,
                                      "workflows": {"noop": {}}, "running": []}))])
    payload, value = P.pack({"i": 1}), P.pack(None)

    def one(i: int) -> None:
        ids = [new_job_id() for _ in range(per)]
        rid = i * (per + 1)
        messages = [(client, P.encode(P.ENQUEUE, {"rid": rid, "jobs": [
            {"id": job_id, "wf": "noop", "group": "bench", "payload": payload} for job_id in ids]}))]
        messages += [(client, P.encode(P.WAIT, {"rid": rid + k + 1, "id": job_id})) for k, job_id in enumerate(ids)]
        results = []
        for out in step(messages):
            command, body = P.decode(out.frames)
            if out.identity == worker and command == P.JOB:
                results += [[job["id"], job["token"], value, 0, 1] for job in body["jobs"]]
        if len(results) != per:
            raise RuntimeError(f"{len(results)} of {per} jobs dispatched")
        answered = step([(worker, P.encode(P.DONE, {"results": results}))])
        if sum(1 for out in answered if out.identity == client) != per:
            raise RuntimeError("not every WAIT was answered")
    return one


def measure(args: argparse.Namespace) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix="shoal-bench-hotpath-", dir=os.environ.get("SHOAL_BENCH_TMP", "/tmp"))
    broker, store = _broker(os.path.join(tmp, "data"))
    try:
        step = Pass(broker, store)
        phases = {"enqueue": lambda: enqueue_phase(step, args.rounds), "bulk": lambda: bulk_phase(step, args.per),
                  "e2e": lambda: e2e_phase(step, args.per)}
        one = phases[args.phase]()
        for i in range(args.warmup):
            one(i)
        step.core_s = step.commit_s = 0.0
        profile = cProfile.Profile() if args.profile else None
        if profile:
            profile.enable()
        for i in range(args.warmup, args.warmup + args.rounds):
            one(i)
        if profile:
            profile.disable()
            pstats.Stats(profile, stream=sys.stderr).sort_stats(args.profile).print_stats(40)
        n = args.rounds * (1 if args.phase == "enqueue" else args.per)
        return {"core_us": step.core_s / n * 1e6, "commit_us": step.commit_s / n * 1e6,
                "total_us": (step.core_s + step.commit_s) / n * 1e6}
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def ab(args: argparse.Namespace) -> int:
    from bench_e2e import alternate  # the same alternation as the end-to-end A/B (a script beside this one)

    figs: dict[str, dict[str, list[float]]] = {pair.split("=", 1)[0]: {k: [] for k in KEYS} for pair in args.ab}
    print(f"load at start: {os.getloadavg()[0]:.2f}", flush=True)
    child = ["--json", "--phase", args.phase, "--rounds", str(args.rounds), "--per", str(args.per),
             "--warmup", str(args.warmup)]
    for i, name, fig in alternate(args.ab, args.runs, __file__, child):
        for k in KEYS:
            figs[name][k].append(fig[k])
        print(f"run {i + 1} {name}: " + ", ".join(f"{k[:-3]} {fig[k]:.1f} us" for k in KEYS), flush=True)
    print(f"load at end: {os.getloadavg()[0]:.2f}")
    for name, fig in figs.items():
        print(f"{name}: " + ", ".join(f"{k[:-3]} {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
                                      for k, v in fig.items()) + f" us per {'enqueue' if args.phase == 'enqueue' else 'job'},"
              f" median (min-max) of {args.runs}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=["enqueue", "bulk", "e2e"], default="e2e")
    parser.add_argument("--rounds", type=int, default=0, help="enqueues (enqueue) or rounds of --per jobs (e2e)")
    parser.add_argument("--per", type=int, default=0,
                        help="e2e: jobs per round and the worker's slots (32); bulk: jobs per ENQUEUE (1,000)")
    parser.add_argument("--warmup", type=int, default=0, help="rounds before the measured ones (50; bulk: 5)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", metavar="SORT", help="cProfile the measured rounds, sorted by SORT (to stderr)")
    parser.add_argument("--ab", nargs="+", metavar="NAME=SITE")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or {"enqueue": 2000, "bulk": 30, "e2e": 200}[args.phase]
    args.per = args.per or (1000 if args.phase == "bulk" else 32)
    args.warmup = args.warmup or (5 if args.phase == "bulk" else 50)
    if args.ab:
        return ab(args)
    fig = measure(args)
    print(json.dumps(fig) if args.json else ", ".join(f"{k[:-3]} {v:.1f} us" for k, v in fig.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
