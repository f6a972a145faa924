#!/usr/bin/env python3
"""The end-to-end phase of ``bench.py core`` alone, and an alternated A/B of it between source trees.

    python scripts/bench_e2e.py [--total 20000] [--concurrency 32] [--json]
    python scripts/bench_e2e.py --ab A=SITE_A B=SITE_B [--runs 3]

The first form runs one end-to-end measurement with whatever ``shoal`` this interpreter
imports. The second runs that first form as a child process per run, alternating A B A B…,
each with ``PYTHONPATH=SITE`` in front (a directory holding a ``shoal`` package assembled
from another commit: ``shoal/`` with ``broker``, ``worker``, ``client``… beside it), and
prints each run, the medians with min/max, and the load average before and after. The
client, broker and worker all come from the tree under test; the phase itself
(``Cluster`` and ``end_to_end``) is the one in ``scripts/bench.py`` next to this file.

``--phase enqueue`` is ``bench.py core``'s sequential enqueue alone (one ``Client``, no worker), with
the broker's CPU per enqueue and the p50/p90 latency. ``--phase worker`` measures the worker alone: a real worker process fed by a stand-in
broker in this process (a ROUTER that answers HELLO with jobs, and every DONE with as many
new jobs as it reported), so the worker's CPU per job is seen without the broker's noise;
``--in-flight 1`` sends one job at a time, and the JOB-to-DONE latency is the two hand-offs'.

``--phase producer`` is the peers benchmark's end to end (``scripts/peers/workload.py``): ``--total``
jobs enqueued one at a time by one sequential caller, the clock stopped when all have run, with the
broker's, the worker's and the client's CPU per job. ``--phase roundtrip`` is its round trip: enqueue,
then wait for the result, one at a time (p50, p99); ``--phase run`` the same as one ``Client.run``
each (the ENQUEUE and its WAIT in one write). The phases with a real broker and worker also
split each process's CPU per job by thread (user + system: the Python threads, libzmq's I/O thread),
printed after a single run and kept in ``--json``.

``--profile DIR`` runs the broker under cProfile (the e2e and enqueue phases); ``--py-spy DIR`` records the broker and worker of a single run with py-spy (its
``--nonblocking`` sampling, so the figures are those of a normal run, within noise).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

SCRIPTS = Path(__file__).resolve().parent
CPU_KEYS = ("broker_cpu_us", "worker_cpu_us", "client_cpu_us", "job_to_done_p50_us", "job_to_done_p99_us", "enqueue_p50_us",
            "enqueue_p90_us", "roundtrip_p50_us", "roundtrip_p99_us")


def load() -> str:
    """The load average as ``uptime`` shows it."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def spy(pids: dict[str, int], out_dir: str | None) -> list[subprocess.Popen[bytes]]:
    """Start py-spy on each process (raw collapsed stacks into ``out_dir/NAME.txt``); none without a dir."""
    if not out_dir:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "--threads",
                              "-r", "250", "-f", "raw", "-o", str(out / f"{name}.txt"), "-p", str(pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items()]


def stop_spies(spies: list[subprocess.Popen[bytes]]) -> None:
    for proc in spies:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        proc.wait(10)


def profile_dir(args: argparse.Namespace) -> Path | None:
    """``--profile DIR``, made if missing (None without the flag)."""
    profile = Path(args.profile).resolve() if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    return profile


@contextlib.contextmanager
def broker_and_worker(bench: Any, name: str, args: argparse.Namespace,
                      profile: Path | None = None) -> Iterator[tuple[Any, Any]]:
    """A bench cluster with its broker up and one worker of ``--concurrency`` slots joined."""
    with bench.Cluster(name, profile_dir=profile) as c:
        c.start_broker()
        worker = c.start_worker("bench", args.concurrency)
        assert c.broker is not None
        yield c, worker


@contextlib.contextmanager
def watched(bench: Any, broker: Any, worker: Any, args: argparse.Namespace) -> Iterator[dict[str, float]]:
    """Around a measured run: py-spy on the broker and worker (with ``--py-spy``), and their CPU per
    job (``--total`` jobs) in the dict yielded, filled when the block ends."""
    pids = {"broker": broker.popen.pid, "worker": worker.popen.pid}
    spies = spy(pids, args.py_spy)
    cpu0 = {name: bench.cpu_seconds(pid) for name, pid in pids.items()}
    threads0 = {name: bench.thread_cpu_seconds(pid) for name, pid in pids.items()}
    cpu: dict[str, Any] = {}
    yield cpu
    for name, pid in pids.items():  # CPU per job: steadier than wall time on a shared machine
        cpu[f"{name}_cpu_us"] = (bench.cpu_seconds(pid) - cpu0[name]) / args.total * 1e6
        per_thread = cpu[f"{name}_threads_us"] = {}  # thread name -> [user, system] us per job
        for thread, (user, system) in bench.thread_cpu_seconds(pid).items():
            user0, system0 = threads0[name].get(thread, (0.0, 0.0))
            per_thread[thread] = [round((user - user0) / args.total * 1e6), round((system - system0) / args.total * 1e6)]
    stop_spies(spies)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One end-to-end run in this interpreter (imports bench.py from this directory)."""
    sys.path.insert(0, str(SCRIPTS))
    import bench  # noqa: E402  (a script beside this one, not a package)

    with broker_and_worker(bench, "e2e-ab", args, profile_dir(args)) as (c, worker):
        with watched(bench, c.broker, worker, args) as cpu:
            result = bench.end_to_end(c.client(), args.total, args.batch)
    return {**result, **cpu}


def measure_producer(args: argparse.Namespace) -> dict[str, Any]:
    """One sequential producer, a real broker and worker: jobs/s until all ``--total`` have run."""
    import time

    sys.path.insert(0, str(SCRIPTS))
    import bench  # noqa: E402

    with broker_and_worker(bench, "e2e-producer", args) as (c, worker):
        client = c.client()
        for i in range(100):  # warm-up: the sockets, the broker's first pages, the worker's first runs
            bench.wait_final(client, client.enqueue("noop", {"i": i}, group="bench"))
        before = int(client.stats()["bench"]["completed"])
        with watched(bench, c.broker, worker, args) as cpu:
            mine0, t0 = _own_cpu(), time.perf_counter()
            handles = [client.enqueue("noop", {"i": i}, group="bench") for i in range(args.total)]
            sent_s = time.perf_counter() - t0
            bench.wait_final(client, handles[-1])
            bench.wait_until(lambda: client.stats()["bench"]["completed"] - before >= args.total, 120, "all jobs",
                             0.001)
            elapsed = time.perf_counter() - t0
            mine = _own_cpu() - mine0
    return {"jobs_s": args.total / elapsed, "elapsed_s": elapsed, "send_s": sent_s,
            "client_cpu_us": mine / args.total * 1e6, **cpu}


def _own_cpu() -> float:
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_roundtrip(args: argparse.Namespace) -> dict[str, Any]:
    """``--total`` sequential enqueue-then-wait round trips through a real broker and worker (the
    peers benchmark's round trip): p50 and p99, and the CPU per job of the broker, the worker and
    this client. ``--phase run``: each is one ``Client.run`` (the ENQUEUE and its WAIT in one write)."""
    import time

    sys.path.insert(0, str(SCRIPTS))
    import bench  # noqa: E402

    with broker_and_worker(bench, "e2e-roundtrip", args) as (c, worker):
        client = c.client()

        def two_calls() -> None:
            bench.wait_final(client, client.enqueue("noop", {"i": 1}, group="bench"))

        def one_trip() -> None:
            if client.run("noop", {"i": 1}, group="bench", timeout=60).status != "completed":
                raise RuntimeError("a round trip's job did not complete")

        once = one_trip if args.phase == "run" else two_calls
        for _ in range(100):  # warm-up: the sockets, the broker's first pages, the worker's first runs
            once()
        with watched(bench, c.broker, worker, args) as cpu:
            mine0, t0 = _own_cpu(), time.perf_counter()
            samples = bench.timed_ms(once, args.total, 0)
            elapsed = time.perf_counter() - t0
            mine = _own_cpu() - mine0
    return {"jobs_s": args.total / elapsed, "elapsed_s": elapsed, "send_s": 0.0,
            "roundtrip_p50_us": bench.percentile(samples, 50) * 1e3,
            "roundtrip_p99_us": bench.percentile(samples, 99) * 1e3,
            "client_cpu_us": mine / args.total * 1e6, **cpu}


def measure_enqueue(args: argparse.Namespace) -> dict[str, Any]:
    """``--total`` sequential ``Client.enqueue`` calls to a group with no worker (``bench.py core``'s
    one-thread enqueue): rate, p50/p90 latency and the broker's CPU per enqueue."""
    import time

    sys.path.insert(0, str(SCRIPTS))
    import bench  # noqa: E402

    with bench.Cluster("e2e-enqueue", profile_dir=profile_dir(args)) as c:
        c.start_broker()
        assert c.broker is not None
        client, pid = c.client(), c.broker.popen.pid
        for i in range(200):  # warm-up: the client's socket, the broker's first pages
            client.enqueue("noop", {"i": i}, group="parked")
        cpu0, t0 = bench.cpu_seconds(pid), time.perf_counter()
        samples = bench.timed_ms(lambda: client.enqueue("noop", {"i": 1}, group="parked"), args.total, 0)
        elapsed = time.perf_counter() - t0
        cpu = bench.cpu_seconds(pid) - cpu0
    return {"jobs_s": args.total / elapsed, "elapsed_s": elapsed, "send_s": 0.0, "broker_cpu_us": cpu / args.total * 1e6,
            "worker_cpu_us": 0.0, "enqueue_p50_us": bench.percentile(samples, 50) * 1e3,
            "enqueue_p90_us": bench.percentile(samples, 90) * 1e3}


def measure_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Feed one real worker ``--total`` no-op jobs from a stand-in ROUTER; wall time and worker CPU."""
    import tempfile
    import time

    import zmq

    sys.path.insert(0, str(SCRIPTS))
    import bench  # noqa: E402
    from shoal import protocol as P
    from shoal.ids import new_job_id

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(SCRIPTS), env.get("PYTHONPATH", "")] if p)
    workdir = tempfile.mkdtemp(prefix="shoal-bench-worker-")
    worker = bench.Proc([sys.executable, "-m", "shoal.worker", "--group", "bench", "--app", "bench_app",
                         "--connect", f"tcp://127.0.0.1:{port}", "--concurrency", str(args.concurrency),
                         "--log-level", "warning"], Path(workdir) / "worker.log", env, Path(workdir))
    payload = P.pack({"i": 1})
    made = [0]
    sent_at: dict[int, float] = {}   # lease token -> when its JOB left
    latencies: list[float] = []

    def jobs(n: int) -> list[bytes]:
        n = min(n, args.total - made[0])
        batch = [{"id": new_job_id(), "token": made[0] + i + 1, "wf": "noop", "payload": payload,
                  "attempt": 1, "max_retries": 0} for i in range(n)]
        made[0] += n
        now = time.perf_counter()
        for job in batch:
            sent_at[job["token"]] = now
        return P.encode(P.JOB, {"jobs": batch})

    try:
        if not router.poll(30_000):
            raise RuntimeError(f"no HELLO from the worker:\n{worker.output()}")
        identity, *frames = router.recv_multipart()
        command, body = P.decode(frames)
        assert command == P.HELLO, command
        spies = spy({"worker": worker.popen.pid}, args.py_spy)
        cpu0, t0, done = bench.cpu_seconds(worker.popen.pid), time.perf_counter(), 0
        router.send_multipart([identity, *jobs(min(int(body["slots"]), args.in_flight or args.total))])
        while done < args.total:
            if not router.poll(10_000):
                raise RuntimeError(f"the worker went quiet after {done} jobs:\n{worker.output()}")
            identity, *frames = router.recv_multipart()
            command, body = P.decode(frames)
            if command == P.DONE:
                done += len(body["results"])
                now = time.perf_counter()
                latencies.extend(now - sent_at.pop(r[1]) for r in body["results"])
                if made[0] < args.total:
                    router.send_multipart([identity, *jobs(len(body["results"]))])
            elif command == P.HEARTBEAT:
                router.send_multipart([identity, *P.encode(P.HEARTBEAT, {})])
        elapsed = time.perf_counter() - t0
        cpu = bench.cpu_seconds(worker.popen.pid) - cpu0
        stop_spies(spies)
    finally:
        worker.stop()
        router.close(0)
        ctx.term()
    latencies.sort()
    return {"jobs_s": args.total / elapsed, "elapsed_s": elapsed, "send_s": 0.0, "broker_cpu_us": 0.0,
            "worker_cpu_us": cpu / args.total * 1e6, "job_to_done_p50_us": bench.percentile(latencies, 50) * 1e6,
            "job_to_done_p99_us": bench.percentile(latencies, 99) * 1e6}


def alternate(pairs: list[str], runs: int, script: str, args: list[str]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Run ``script args`` once per tree (``NAME=SITE``) and round, A B A B …, each child with
    ``PYTHONPATH=SITE`` in front; yields (round, name, the JSON line it printed last)."""
    trees = dict(pair.split("=", 1) for pair in pairs)
    for i in range(runs):
        for name, site in trees.items():
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in [site, env.get("PYTHONPATH", "")] if p)
            out = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True,
                                 check=True).stdout
            yield i, name, json.loads(out.strip().splitlines()[-1])


def ab(args: argparse.Namespace) -> int:
    """Alternate the trees, ``--runs`` each, and print medians."""
    names = [pair.split("=", 1)[0] for pair in args.ab]
    runs: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, dict[str, list[float]]] = {name: {key: [] for key in CPU_KEYS} for name in names}
    print(f"load at start: {load()}", flush=True)
    child = ["--json", "--phase", args.phase, "--total", str(args.total), "--batch", str(args.batch),
             "--concurrency", str(args.concurrency), "--in-flight", str(args.in_flight)]
    for i, name, fig in alternate(args.ab, args.runs, __file__, child):
        runs[name].append(fig["jobs_s"])
        for key in CPU_KEYS:
            if key in fig:  # each phase reports some of them
                cpu[name][key].append(fig[key])
        print(f"run {i + 1} {name}: {fig['jobs_s']:,.0f} jobs/s (send {fig['send_s']:.2f} s), CPU per job: "
              f"broker {fig['broker_cpu_us']:.0f} us, worker {fig['worker_cpu_us']:.0f} us"
              + (f"; JOB to DONE p50 {fig['job_to_done_p50_us']:.0f} us, p99 {fig['job_to_done_p99_us']:.0f} us"
                 if "job_to_done_p50_us" in fig else "")
              + (f"; round trip p50 {fig['roundtrip_p50_us']:.0f} us, p99 {fig['roundtrip_p99_us']:.0f} us"
                 if "roundtrip_p50_us" in fig else "") + " "
              f"[{fig['shoal']}] load {load()}", flush=True)
    print(f"load at end: {load()}")
    for name, values in runs.items():
        print(f"{name}: median {statistics.median(values):,.0f} jobs/s (min {min(values):,.0f}, "
              f"max {max(values):,.0f}) over {len(values)} runs; CPU per job (median): "
              + ", ".join(f"{key[:-3]} {statistics.median(cpu[name][key]):.0f} us" for key in CPU_KEYS
                          if cpu[name][key]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--phase", choices=["e2e", "worker", "enqueue", "producer", "roundtrip", "run"], default="e2e",
                        help="e2e: a real broker; worker: the worker alone, fed by a stand-in broker; "
                             "enqueue: sequential enqueues, no worker (broker CPU per enqueue, p50); "
                             "producer: one sequential producer end to end, as the peers benchmark; "
                             "roundtrip: enqueue then wait, one at a time (p50, p99); "
                             "run: the same round trip as one Client.run each")
    parser.add_argument("--in-flight", type=int, default=0,
                        help="worker phase: at most this many jobs out at once (0: the worker's slots; "
                             "1: one at a time, for the JOB-to-DONE latency)")
    parser.add_argument("--json", action="store_true", help="print one JSON line (used by --ab)")
    parser.add_argument("--ab", nargs="+", metavar="NAME=SITE", help="alternate runs between source trees")
    parser.add_argument("--runs", type=int, default=3, help="runs of each tree with --ab")
    parser.add_argument("--profile", metavar="DIR", help="run the broker under cProfile (DIR/broker-e2e-ab.prof)")
    parser.add_argument("--py-spy", metavar="DIR", help="record the broker and worker with py-spy into DIR")
    args = parser.parse_args(argv)
    if args.ab:
        return ab(args)
    fig = {"e2e": measure, "worker": measure_worker, "enqueue": measure_enqueue,
           "producer": measure_producer, "roundtrip": measure_roundtrip, "run": measure_roundtrip}[args.phase](args)
    if "shoal" not in fig:
        import shoal
        fig["shoal"] = str(Path(shoal.__file__).resolve().parent)
    print(json.dumps(fig) if args.json else f"{fig['jobs_s']:,.0f} jobs/s ({fig['elapsed_s']:.2f} s)")
    for key in ("broker_threads_us", "worker_threads_us"):
        if key in fig and not args.json:
            print(f"{key.split('_')[0]} CPU per job by thread, user + system: " + ", ".join(
                f"{thread} {user} + {system} us" for thread, (user, system) in fig[key].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
