"""Shoal benchmarks: real broker and worker processes on loopback, LMDB under /tmp.

    python scripts/bench.py [core] [--quick] [--repeat N] [--json] [--concurrency 32] [--profile DIR] [--keep]
    python scripts/bench.py hol [--cpu] [--nice N] [--quick] [--repeat N] [--json]
    python scripts/bench.py steps [--steps N] [--jobs J]     (scripts/bench_steps.py)
    python scripts/bench.py retention [--seconds S]          (scripts/bench_retention.py)
    python scripts/bench.py replay [--entries N]             (scripts/bench_replay.py)
    python scripts/bench.py snapshot [--jobs N] [--samples S] (scripts/bench_replay.py)
    python scripts/bench.py breakdown | trace [--producer] [--quick] [--repeat N] [--json]
    python scripts/bench.py curve [--quick] [--repeat N] [--json]   (scripts/bench_curve.py)

``core`` (the default) measures enqueue throughput (one thread, sixteen threads on one
client, ``enqueue_many`` batches), end-to-end throughput through one worker process,
round-trip latency, and the floor of this machine measured in the same run (a raw
pyzmq DEALER/ROUTER round trip between two processes, one synced LMDB commit).
``hol`` (head-of-line) measures the latency of an ``email`` job while the ``media``
group is idle, then while all its slots are busy with a backlog behind them
(``--cpu``: the media jobs burn CPU instead of sleeping). ``breakdown`` and ``trace``
take the round trip apart: the same requests on a bare socket and through ``Client``,
and the time of each leg as seen by a broker whose socket and store calls are
timestamped from outside; ``trace --producer`` does the same for one sequential producer
on the real ``Client``, with the group's worker running every job and without one, so the
legs that grow when a worker shares the machine show side by side.

Every measurement starts its own broker on a fresh LMDB directory (so one phase's
backlog never weighs on the next) and the workers it needs; the workers load
``scripts/bench_app.py``. The whole run is repeated (three times by default) and the
table shows each figure's median with its range; ``--json`` prints every run.
Temporary directories go under ``$SHOAL_BENCH_TMP`` (default ``/tmp``): keep it on the
disk you mean to measure, since every acknowledged enqueue waits for an fsync there.
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import platform
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lmdb
import zmq

from shoal import Client
from shoal import protocol as P
from shoal.ids import id_to_str, new_job_id

SCRIPTS = Path(__file__).resolve().parent
TMP_ROOT = Path(os.environ.get("SHOAL_BENCH_TMP", "/tmp"))  # same disk as the repo on our machines
TRACED_BROKER = "_traced-broker"  # internal: bench.py _traced-broker CONFIG DATA EVENTS
CONFIG_TOML = """
[broker]
heartbeat_interval = "1s"
"""


# --- figures --------------------------------------------------------------------------
def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def timed_ms(fn: Callable[[], Any], samples: int, warmup: int) -> list[float]:
    """Wall time of ``fn()`` in milliseconds, ``samples`` times after ``warmup`` unmeasured calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


# --- processes ------------------------------------------------------------------------
class Proc:
    """A subprocess writing to a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], cwd: Path) -> None:
        self.log = log
        self._fh = open(log, "ab")
        self.popen = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """Send ``signum``, wait, then SIGKILL whatever is left."""
        if self.alive():
            self.popen.send_signal(signum)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._fh.close()


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; raise naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


class Cluster:
    """One broker on a fresh LMDB directory plus the workers a phase needs."""

    def __init__(self, name: str, keep: bool = False, profile_dir: Path | None = None) -> None:
        self.name = name
        self.keep = keep
        self.profile_dir = profile_dir
        self.dir = Path(tempfile.mkdtemp(prefix=f"shoal-bench-{name}-", dir=TMP_ROOT))
        self.config = self.dir / "shoal.toml"
        # SHOAL_BENCH_BROKER: extra [broker] lines for an experiment (say 'spin = "0s"'), off by default
        self.config.write_text(CONFIG_TOML + os.environ.get("SHOAL_BENCH_BROKER", "").replace(";", "\n") + "\n")
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in [str(SCRIPTS), self.env.get("PYTHONPATH", "")] if p)
        for var in ("SHOAL_BROKER", "SHOAL_CONFIG", "SHOAL_DATA", "SHOAL_SERVER"):
            self.env.pop(var, None)
        self.broker: Proc | None = None
        self.workers: list[Proc] = []
        self.clients: list[Client] = []
        self.endpoint = ""

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_broker(self, traced_events: Path | None = None, supervise: bool = False) -> None:
        """Start the broker and wait until it listens (``traced_events``: the traced broker of ``trace``;
        ``supervise``: the broker starts the workers the config asks for, as in production)."""
        args = ["-m", "shoal.broker", "--config", str(self.config), "--data", str(self.dir / "data"),
                "--bind", "tcp://127.0.0.1:*", *([] if supervise else ["--no-supervise"]), "--log-level", "warning"]
        if traced_events is not None:
            args = [str(Path(__file__).resolve()), TRACED_BROKER, str(self.config), str(self.dir / "data"),
                    str(traced_events)]
        elif self.profile_dir is not None:
            args = ["-m", "cProfile", "-o", str(self.profile_dir / f"broker-{self.name}.prof"), *args]
        self.broker = Proc([sys.executable, *args], self.dir / "broker.log", self.env, self.dir)
        broker = self.broker

        def listening() -> Any:
            if not broker.alive():
                raise RuntimeError(f"the broker exited:\n{broker.output()}")
            return re.search(r"listening on (\S+)", broker.output())

        self.endpoint = wait_until(listening, 30, "the broker to listen").group(1)

    def start_worker(self, group: str, concurrency: int) -> Proc:
        """Start a worker of ``group`` and wait until the broker counts it."""
        before = self.workers_in(group)
        args = [sys.executable, "-m", "shoal.worker", "--group", group, "--app", "bench_app",
                "--connect", self.endpoint, "--concurrency", str(concurrency), "--config", str(self.config),
                "--log-level", "warning"]
        proc = Proc(args, self.dir / f"worker-{group}-{len(self.workers)}.log", self.env, self.dir)
        self.workers.append(proc)

        def joined() -> bool:
            if not proc.alive():
                raise RuntimeError(f"the {group} worker exited:\n{proc.output()}")
            return self.workers_in(group) > before

        wait_until(joined, 30, f"a {group} worker to join")
        return proc

    def client(self, timeout_s: float = 30.0) -> Client:
        c = Client(self.endpoint, timeout=timeout_s)
        self.clients.append(c)
        return c

    def workers_in(self, group: str) -> int:
        c = self.clients[0] if self.clients else self.client()
        return int(c.stats().get(group, {}).get("workers", 0))

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for w in self.workers:
            w.stop(signal.SIGKILL)  # abandoned jobs do not matter: the data directory goes too
        if self.broker is not None:
            self.broker.stop(signal.SIGINT, timeout_s=60)  # SIGINT lets cProfile write its file
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# --- the floor --------------------------------------------------------------------------
ECHO_SERVER = """
import os, sys, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
if os.environ.get("BENCH_CURVE_SECRET"):  # the curve phase's floor: the same echo over CURVE
    sock.curve_server = True
    sock.curve_secretkey = os.environ["BENCH_CURVE_SECRET"].encode()
    sock.curve_publickey = os.environ["BENCH_CURVE_PUBLIC"].encode()
sock.bind("tcp://127.0.0.1:*")
print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
while True:
    frames = sock.recv_multipart()
    if frames[-1] == b"stop":
        break
    sock.send_multipart(frames)
"""


def zmq_roundtrip_ms(samples: int, curve: bool = False, body_bytes: int = 32) -> list[float]:
    """A raw DEALER -> ROUTER -> DEALER round trip to another process on loopback (``curve``: over CURVE)."""
    env = dict(os.environ)
    server_public, server_secret = zmq.curve_keypair()
    if curve:
        env.update(BENCH_CURVE_SECRET=server_secret.decode(), BENCH_CURVE_PUBLIC=server_public.decode())
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True, env=env)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve:
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = server_public
    try:
        assert server.stdout is not None
        sock.connect(server.stdout.readline().strip())
        frames = [b"SHOAL1", b"PING", b"\x80" * body_bytes]

        def once() -> None:
            sock.send_multipart(frames)
            sock.recv_multipart()

        return timed_ms(once, samples, warmup=200)
    finally:
        sock.send_multipart([b"stop"])
        server.wait(10)
        sock.close(0)
        ctx.term()


def lmdb_commit_ms(samples: int) -> list[float]:
    """One synced LMDB write transaction with one small put, as the broker opens its store."""
    path = tempfile.mkdtemp(prefix="shoal-bench-lmdb-", dir=TMP_ROOT)
    env = lmdb.open(path, map_size=64 << 20, sync=True, metasync=True, writemap=False)
    counter = iter(range(10**9))
    value = b"x" * 100

    def once() -> None:
        with env.begin(write=True) as txn:
            txn.put(next(counter).to_bytes(8, "big"), value)

    try:
        return timed_ms(once, samples, warmup=20)
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)


# --- core measurements -------------------------------------------------------------------
def enqueue_one_thread(client: Client, n: int) -> float:
    """Jobs per second of ``enqueue`` called ``n`` times in a row from one thread."""
    t0 = time.perf_counter()
    for i in range(n):
        client.enqueue("noop", {"i": i}, group="bench")
    return n / (time.perf_counter() - t0)


def enqueue_threads(client: Client, threads: int, per_thread: int) -> float:
    """Jobs per second of ``enqueue`` from ``threads`` threads sharing one client."""
    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            for i in range(per_thread):
                client.enqueue("noop", {"i": i}, group="bench")
        except BaseException as exc:  # reported below, after the clock stops
            errors.append(exc)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return threads * per_thread / elapsed


def enqueue_async(endpoint: str, in_flight: int, total: int) -> float:
    """Jobs per second of ``AsyncClient.enqueue`` with ``in_flight`` tasks on one event loop."""
    from shoal import AsyncClient

    async def main() -> float:
        async with AsyncClient(endpoint, timeout=30.0) as client:
            per_task = total // in_flight

            async def task() -> None:
                for i in range(per_task):
                    await client.enqueue("noop", {"i": i}, group="bench")

            await client.enqueue("noop", {"i": -1}, group="bench")  # connected before the clock starts
            t0 = time.perf_counter()
            await asyncio.gather(*(task() for _ in range(in_flight)))
            return per_task * in_flight / (time.perf_counter() - t0)

    return asyncio.run(main())


def enqueue_batches(client: Client, total: int, batch: int) -> float:
    """Jobs per second of ``enqueue_many`` in batches of ``batch`` (client-side encoding included)."""
    t0 = time.perf_counter()
    for start in range(0, total, batch):
        client.enqueue_many("noop", [{"i": i} for i in range(start, min(total, start + batch))], group="bench")
    return total / (time.perf_counter() - t0)


def end_to_end(client: Client, total: int, batch: int) -> dict[str, float]:
    """Send ``total`` jobs in ``enqueue_many`` batches and stop the clock when all have completed.

    Completion: wait (pushed by the broker) for the last job enqueued, then poll
    ``stats()["bench"]["completed"]`` every millisecond until it reaches ``total``: at that
    point at most ``concurrency`` jobs are still out, so few polls are needed, and the
    broker is not made to walk 20,000 active jobs for every poll during the run.
    """
    before = int(client.stats().get("bench", {}).get("completed", 0))
    t0 = time.perf_counter()
    last = ""
    for start in range(0, total, batch):
        last = client.enqueue_many("noop", [{"i": i} for i in range(start, min(total, start + batch))],
                                   group="bench")[-1]
    sent_s = time.perf_counter() - t0
    client.wait(last, timeout=300)
    wait_until(lambda: client.stats()["bench"]["completed"] - before >= total, 120, "all jobs to complete", 0.001)
    elapsed = time.perf_counter() - t0
    stats = client.stats()["bench"]
    if stats["failed"] or stats["dead"]:
        raise RuntimeError(f"end-to-end run had failures: {stats}")
    return {"jobs_s": total / elapsed, "elapsed_s": elapsed, "send_s": sent_s}


def wait_final(client: Client, job_id: str) -> int:
    """``wait`` until the job completed; returns how often the broker answered with a job not final yet.

    ``wait`` must only return final jobs; the count shows a broker race (see BENCHMARKS.md),
    and re-waiting keeps the figures honest about what a caller would have to do.
    """
    early = 0
    while True:
        result = client.wait(job_id, timeout=60)
        if result.status == "completed":
            return early
        if result.status not in ("pending", "scheduled", "running"):
            raise RuntimeError(f"job {job_id} ended {result.status}: {result.error}")
        early += 1


def roundtrip_ms(client: Client, workflow: str, group: str, samples: int, warmup: int) -> tuple[list[float], int]:
    """Enqueue then wait, one job at a time: (milliseconds per sample, early answers to wait)."""
    early = [0]

    def once() -> None:
        early[0] += wait_final(client, client.enqueue(workflow, None, group=group))

    return timed_ms(once, samples, warmup), early[0]


def core_params(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    return {"enqueue_n": 500 if quick else 2_000, "threads": 16, "per_thread": 100 if quick else 500,
            "enqueue_many_total": 10_000 if quick else 50_000, "enqueue_many_batch": 1_000,
            "async_in_flight": 64, "async_total": 3_200 if quick else 12_800,
            "e2e_total": 5_000 if quick else 20_000, "e2e_batch": 100, "concurrency": args.concurrency,
            "roundtrip_samples": 300 if quick else 1_000, "roundtrip_warmup": 100,
            "zmq_samples": 1_000 if quick else 3_000, "commit_samples": 100 if quick else 300}


def run_core(args: argparse.Namespace, p: dict[str, Any], run: int) -> dict[str, float]:
    """One pass over every core measurement; each phase on its own broker."""
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)

    def cluster(name: str) -> Cluster:
        return Cluster(f"{name}-{run}", keep=args.keep, profile_dir=profile_dir)

    fig: dict[str, float] = {}
    progress("floor: raw zmq round trip, synced LMDB commit")
    zmq_rt = zmq_roundtrip_ms(p["zmq_samples"])
    commit = lmdb_commit_ms(p["commit_samples"])
    fig["zmq_rt_p50_ms"], fig["zmq_rt_p99_ms"] = percentile(zmq_rt, 50), percentile(zmq_rt, 99)
    fig["lmdb_commit_p50_ms"], fig["lmdb_commit_p99_ms"] = percentile(commit, 50), percentile(commit, 99)

    progress(f"enqueue x{p['enqueue_n']}, one thread")
    with cluster("enqueue1") as c:
        c.start_broker()
        fig["enqueue_1t_jobs_s"] = enqueue_one_thread(c.client(), p["enqueue_n"])
    progress(f"enqueue {p['threads']}x{p['per_thread']}, {p['threads']} threads on one client")
    with cluster("enqueue16") as c:
        c.start_broker()
        fig["enqueue_16t_jobs_s"] = enqueue_threads(c.client(), p["threads"], p["per_thread"])
    progress(f"enqueue x{p['async_total']}, AsyncClient, {p['async_in_flight']} in flight")
    with cluster("enqueue-async") as c:
        c.start_broker()
        fig["enqueue_async_jobs_s"] = enqueue_async(c.endpoint, p["async_in_flight"], p["async_total"])
    progress(f"enqueue_many {p['enqueue_many_total']} in batches of {p['enqueue_many_batch']}")
    with cluster("enqueue-many") as c:
        c.start_broker()
        fig["enqueue_many_jobs_s"] = enqueue_batches(c.client(), p["enqueue_many_total"], p["enqueue_many_batch"])
    progress(f"end to end: {p['e2e_total']} jobs, batches of {p['e2e_batch']}, one worker x{p['concurrency']}")
    with cluster("e2e") as c:
        c.start_broker()
        c.start_worker("bench", p["concurrency"])
        e2e = end_to_end(c.client(), p["e2e_total"], p["e2e_batch"])
        fig["e2e_jobs_s"], fig["e2e_elapsed_s"], fig["e2e_send_s"] = e2e["jobs_s"], e2e["elapsed_s"], e2e["send_s"]
    progress(f"round trip: {p['roundtrip_samples']} samples, one at a time")
    with cluster("roundtrip") as c:
        c.start_broker()
        c.start_worker("bench", p["concurrency"])
        rt, early = roundtrip_ms(c.client(), "noop", "bench", p["roundtrip_samples"], p["roundtrip_warmup"])
        fig["roundtrip_p50_ms"], fig["roundtrip_p99_ms"] = percentile(rt, 50), percentile(rt, 99)
        fig["roundtrip_early_waits"] = early

    # The round trip's critical path: ENQUEUE and its ack (1 zmq round trip) around one
    # commit (the job and its dispatch share a pass), JOB to the worker and DONE back
    # (1 round trip), one more commit, then the answer to the client's WAIT, which
    # crossed the DONE on the way in.
    fig["floor_roundtrip_ms"] = 2 * fig["zmq_rt_p50_ms"] + 2 * fig["lmdb_commit_p50_ms"]
    fig["roundtrip_x_floor"] = fig["roundtrip_p50_ms"] / fig["floor_roundtrip_ms"]
    fig["roundtrip_x_floor_1commit"] = fig["roundtrip_p50_ms"] / (2 * fig["zmq_rt_p50_ms"] + fig["lmdb_commit_p50_ms"])
    fig["floor_enqueue_jobs_s"] = 1000 / (fig["zmq_rt_p50_ms"] + fig["lmdb_commit_p50_ms"])
    fig["enqueue_1t_x_floor"] = fig["enqueue_1t_jobs_s"] / fig["floor_enqueue_jobs_s"]
    fig["enqueue_16t_x_1t"] = fig["enqueue_16t_jobs_s"] / fig["enqueue_1t_jobs_s"]
    return fig


def core_rows(p: dict[str, Any]) -> list[Row]:
    return [
        Row(f"enqueue, 1 thread (n={p['enqueue_n']})", "enqueue_1t_jobs_s", "jobs/s",
            note="{enqueue_1t_x_floor:.2f} x floor rate 1/(rt + commit) = {floor_enqueue_jobs_s:,.0f}/s"),
        Row(f"enqueue, {p['threads']} threads, one client (n={p['threads']}x{p['per_thread']})",
            "enqueue_16t_jobs_s", "jobs/s", note="{enqueue_16t_x_1t:.1f} x one thread (group commit)"),
        Row(f"enqueue, AsyncClient, {p['async_in_flight']} in flight (n={p['async_total']:,})",
            "enqueue_async_jobs_s", "jobs/s", target=(">=", 20_000.0)),
        Row(f"enqueue_many, batches of {p['enqueue_many_batch']:,} (n={p['enqueue_many_total']:,})",
            "enqueue_many_jobs_s", "jobs/s", target=(">=", 50_000.0)),
        Row(f"end to end, 1 worker x{p['concurrency']} (n={p['e2e_total']:,}, batches of {p['e2e_batch']})",
            "e2e_jobs_s", "jobs/s", target=(">=", 5_000.0),
            note="all sent after {e2e_send_s:.2f}s, all completed after {e2e_elapsed_s:.2f}s"),
        Row(f"round trip p50 (n={p['roundtrip_samples']:,})", "roundtrip_p50_ms", "ms", target=("<=", 1.5),
            note="{roundtrip_x_floor:.1f} x floor (2 rt + 2 commits), {roundtrip_x_floor_1commit:.1f} x (2 rt + 1 commit)"),
        Row("round trip p99", "roundtrip_p99_ms", "ms",
            note="wait() answered a job not yet final {roundtrip_early_waits:.0f} times"),
        Row("floor: raw zmq DEALER/ROUTER round trip p50", "zmq_rt_p50_ms", "ms", note="p99 {zmq_rt_p99_ms:.3f} ms"),
        Row("floor: one synced LMDB commit p50", "lmdb_commit_p50_ms", "ms", note="p99 {lmdb_commit_p99_ms:.3f} ms"),
        Row("floor: round trip = 2 rt + 2 commits", "floor_roundtrip_ms", "ms"),
    ]


# --- breakdown ---------------------------------------------------------------------------
class RawClient:
    """Requests on a bare DEALER socket in the calling thread: no I/O thread, no futures."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.rid = 0

    def request(self, command: bytes, body: dict[str, Any]) -> dict[str, Any]:
        self.rid += 1
        body["rid"] = self.rid
        self.sock.send_multipart(P.encode(command, body))
        while True:
            reply, answer = P.decode(self.sock.recv_multipart())
            if answer.get("rid") == self.rid:
                if reply != P.REPLY:
                    raise RuntimeError(f"broker error: {answer}")
                return answer

    def enqueue(self, group: str = "bench") -> bytes:
        job_id = new_job_id()
        self.request(P.ENQUEUE, {"jobs": [{"id": job_id, "wf": "noop", "group": group, "payload": P.pack(None)}]})
        return job_id

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def breakdown_params(args: argparse.Namespace) -> dict[str, Any]:
    return {"samples": 300 if args.quick else 1_000, "warmup": 100, "concurrency": 32,
            "zmq_samples": 1_000 if args.quick else 3_000, "commit_samples": 100 if args.quick else 300}


def run_breakdown(args: argparse.Namespace, p: dict[str, Any], run: int) -> dict[str, float]:
    """The round trip taken apart: the same requests with and without the client's I/O thread."""
    n, warm = p["samples"], p["warmup"]
    fig: dict[str, float] = {}
    fig["zmq_rt_p50_ms"] = percentile(zmq_roundtrip_ms(p["zmq_samples"]), 50)
    fig["lmdb_commit_p50_ms"] = percentile(lmdb_commit_ms(p["commit_samples"]), 50)
    with Cluster(f"breakdown-{run}", keep=args.keep) as c:
        c.start_broker()
        c.start_worker("bench", p["concurrency"])
        client, raw = c.client(), RawClient(c.endpoint)
        try:
            unknown = new_job_id()
            progress("GET (no commit): raw socket, then Client")
            fig["raw_get_ms"] = percentile(timed_ms(lambda: raw.request(P.GET, {"ids": [unknown]}), n, warm), 50)
            fig["client_get_ms"] = percentile(timed_ms(lambda: client.get(id_to_str(unknown)), n, warm), 50)
            # to a group with no worker: nothing runs, so no DONE (and its commit) competes
            progress("ENQUEUE (one commit, nothing dispatched): raw socket, then Client")
            fig["raw_enqueue_ms"] = percentile(timed_ms(lambda: raw.enqueue("parked"), n, warm), 50)
            fig["client_enqueue_ms"] = percentile(timed_ms(lambda: client.enqueue("noop", None, group="parked"),
                                                           n, warm), 50)
            progress("ENQUEUE then WAIT: raw socket, then Client")
            fig["raw_roundtrip_ms"] = percentile(timed_ms(
                lambda: raw.request(P.WAIT, {"id": raw.enqueue()}), n, warm), 50)
            rt, fig["early_waits"] = roundtrip_ms(client, "noop", "bench", n, warm)
            fig["client_roundtrip_ms"] = percentile(rt, 50)
        finally:
            raw.close()
    fig["broker_message_ms"] = fig["raw_get_ms"] - fig["zmq_rt_p50_ms"]
    fig["broker_commit_ms"] = fig["raw_enqueue_ms"] - fig["raw_get_ms"]
    fig["client_thread_ms"] = fig["client_get_ms"] - fig["raw_get_ms"]
    fig["worker_leg_ms"] = fig["raw_roundtrip_ms"] - fig["raw_enqueue_ms"] - fig["raw_get_ms"]
    return fig


def breakdown_rows(p: dict[str, Any]) -> list[Row]:
    return [
        Row("floor: raw zmq DEALER/ROUTER round trip", "zmq_rt_p50_ms", "ms"),
        Row("floor: one synced LMDB commit", "lmdb_commit_p50_ms", "ms"),
        Row("GET of an unknown id, raw DEALER socket", "raw_get_ms", "ms",
            note="broker's cost of one message (no commit): {broker_message_ms:.3f} ms over the zmq floor"),
        Row("GET of an unknown id, Client", "client_get_ms", "ms",
            note="the client's I/O thread hand-offs: {client_thread_ms:.3f} ms"),
        Row("ENQUEUE one job (no worker), raw DEALER socket", "raw_enqueue_ms", "ms",
            note="the broker's commit: {broker_commit_ms:.3f} ms (floor commit {lmdb_commit_p50_ms:.3f})"),
        Row("enqueue one job (no worker), Client", "client_enqueue_ms", "ms"),
        Row("ENQUEUE then WAIT, raw DEALER socket", "raw_roundtrip_ms", "ms",
            note="beyond ENQUEUE + GET: JOB out, run, DONE back, its commit: {worker_leg_ms:.3f} ms"),
        Row(f"enqueue then wait, Client (n={p['samples']})", "client_roundtrip_ms", "ms", target=("<=", 1.5),
            note="wait() answered a job not yet final {early_waits:.0f} times"),
    ]


# --- trace -------------------------------------------------------------------------------
def serve_traced_broker(config: str, data: str, events_path: str) -> int:
    """Run a broker in this process, timestamping poll wake-ups, messages, commits and sends.

    The broker's own code is untouched: its socket calls and its store are wrapped from
    outside. ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, so stamps compare across
    processes. The events are written to ``events_path`` when the broker stops.
    """
    from shoal.broker.shell.server import BrokerServer, in_send_order
    from shoal.conf import load_settings

    events: list[tuple[float, str, Any]] = []
    clock = time.perf_counter
    send_all = BrokerServer._send_all

    def traced_send_all(server: BrokerServer, outbox: list[Any]) -> bool:
        busy = False
        for out in in_send_order(outbox):  # the loop's own order
            # stamped before the send: the peer may act on the message before it returns
            events.append((clock(), "send", bytes(out.frames[1]).decode()))
            busy = send_all(server, [out]) or busy
        return busy

    BrokerServer._send_all = traced_send_all  # type: ignore[method-assign]
    settings = load_settings(config, server=None, env={}, flags={"data": data, "bind": "tcp://127.0.0.1:*",
                                                                 "supervise": False})
    server = BrokerServer(settings)
    handle, commit = server.broker.handle, server.store.commit

    def traced_handle(identity: bytes, frames: list[bytes]) -> None:
        events.append((clock(), "recv", bytes(frames[1]).decode()))
        handle(identity, frames)

    def traced_commit(batch: Any, wall_ms: int) -> None:
        started = clock()
        commit(batch, wall_ms)
        if batch:
            events.append((started, "commit", clock() - started))

    server.broker.handle = traced_handle  # type: ignore[method-assign]
    server.store.commit = traced_commit  # type: ignore[method-assign]
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    print(f"traced broker listening on {server.endpoint}", flush=True)
    try:
        server.run()
    finally:
        server.close()
        Path(events_path).write_text(json.dumps(events))
    return 0


def trace_params(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "producer", False):
        return {"samples": 500 if args.quick else 3_000, "warmup": 300, "concurrency": 8, "producer": True}
    return {"samples": 200 if args.quick else 500, "warmup": 100, "concurrency": 32}


def traced_events(args: argparse.Namespace, name: str, concurrency: int | None,
                  drive: Callable[[Cluster], None]) -> list[list[Any]]:
    """Start a traced broker (and, with ``concurrency``, the bench group's worker), let ``drive``
    make its requests, stop them, and return the broker's events."""
    c = Cluster(name, keep=True)  # the events file is read after the broker stops
    events_path = c.dir / "events.json"
    try:
        c.start_broker(traced_events=events_path)
        if concurrency is not None:
            c.start_worker("bench", concurrency)
        drive(c)
    finally:
        c.close()
    events: list[list[Any]] = json.loads(events_path.read_text())
    if not args.keep:
        shutil.rmtree(c.dir, ignore_errors=True)
    return events


def first_event(window: list[list[Any]], t: float, kind: str, what: str | None = None) -> list[Any] | None:
    """The first of ``window``'s events (in time order) at or after ``t`` of ``kind`` (and ``what``)."""
    return next((e for e in window if e[0] >= t and e[1] == kind and (what is None or e[2] == what)), None)


def run_trace(args: argparse.Namespace, p: dict[str, Any], run: int) -> dict[str, float]:
    """Round trips on a raw socket against a traced broker: where each millisecond goes."""
    if p.get("producer"):
        return run_producer_trace(args, p, run)
    clock = time.perf_counter
    spans: list[tuple[float, float, float]] = []

    def drive(c: Cluster) -> None:
        raw = RawClient(c.endpoint)
        try:
            for n in range(p["warmup"] + p["samples"]):
                t0 = clock()
                job_id = raw.enqueue()
                t1 = clock()
                raw.request(P.WAIT, {"id": job_id})
                if n >= p["warmup"]:
                    spans.append((t0, t1, clock()))
        finally:
            raw.close()

    return trace_segments(traced_events(args, f"trace-{run}", p["concurrency"], drive), spans)


def run_producer_trace(args: argparse.Namespace, p: dict[str, Any], run: int) -> dict[str, float]:
    """One sequential producer on ``Client`` against a traced broker, without a worker and then
    with the group's worker running every job (the peers benchmark's end to end): each leg of
    an enqueue's cycle, both ways."""
    fig: dict[str, float] = {}
    clock = time.perf_counter
    for label, with_worker in (("alone", False), ("worker", True)):
        calls: list[tuple[float, float]] = []

        def drive(c: Cluster, calls: list[tuple[float, float]] = calls) -> None:
            client = c.client()
            for n in range(p["warmup"] + p["samples"]):
                t0 = clock()
                client.enqueue("noop", {"i": n}, group="bench")
                if n >= p["warmup"]:
                    calls.append((t0, clock()))

        events = traced_events(args, f"trace-producer-{label}-{run}", p["concurrency"] if with_worker else None, drive)
        fig.update({f"{label}_{k}": v for k, v in producer_segments(events, calls).items()})
    return fig


def producer_segments(events: list[list[Any]], calls: list[tuple[float, float]]) -> dict[str, float]:
    """Median of each leg of the enqueue calls, from the broker's events inside each call; and how
    many of those calls' passes also handled a DONE, and how many commits the broker made a call."""
    stamps = [e[0] for e in events]  # the broker's loop appends them in time order
    legs: dict[str, list[float]] = {}
    with_done = 0
    for t0, t1 in calls:
        window = events[bisect.bisect_left(stamps, t0):bisect.bisect_right(stamps, t1)]
        enq = first_event(window, t0, "recv", "ENQUEUE")
        commit = enq and first_event(window, enq[0], "commit")
        ack = commit and first_event(window, commit[0] + commit[2], "send", "REPLY")
        if not (enq and commit and ack):
            continue
        # a DONE read after the commit before this one and before this one starts: the same pass
        before = events[bisect.bisect_left(stamps, t0 - 0.005):bisect.bisect_left(stamps, commit[0])]
        last_end = max((e[0] + e[2] for e in before if e[1] == "commit"), default=0.0)
        with_done += any(e[1] == "recv" and e[2] == "DONE" and e[0] > last_end for e in before)
        for name, seconds in (("cycle", t1 - t0), ("call_to_broker", enq[0] - t0),
                              ("broker_before_commit", commit[0] - enq[0]), ("commit", commit[2]),
                              ("commit_to_ack_sent", ack[0] - commit[0] - commit[2]),
                              ("ack_to_call_returns", t1 - ack[0])):
            legs.setdefault(name, []).append(seconds * 1e6)
    if not legs:
        raise RuntimeError("no enqueue could be matched to the broker's events")
    fig = {f"{name}_us": statistics.median(values) for name, values in legs.items()}
    span = (calls[0][0], calls[-1][1])
    commits = sum(1 for e in events if e[1] == "commit" and span[0] <= e[0] <= span[1])
    fig["commits_per_call"] = commits / len(calls)
    fig["with_done_pct"] = 100 * with_done / len(legs["cycle"])
    fig["matched"] = len(legs["cycle"])
    return fig


def trace_segments(events: list[list[Any]], spans: list[tuple[float, float, float]]) -> dict[str, float]:
    """Median of each leg of the round trips, from the broker's events between each one's start and end."""
    stamps = [e[0] for e in events]
    legs: dict[str, list[float]] = {}
    wait_first = 0

    for t0, t_ack, t_end in spans:
        window = events[bisect.bisect_left(stamps, t0):bisect.bisect_right(stamps, t_end)]
        enq = first_event(window, t0, "recv", "ENQUEUE")
        c1 = enq and first_event(window, enq[0], "commit")
        job = c1 and first_event(window, c1[0], "send", "JOB")
        done = job and first_event(window, job[0], "recv", "DONE")
        wait = enq and first_event(window, enq[0], "recv", "WAIT")
        c2 = done and first_event(window, done[0], "commit")
        reply = c2 and first_event(window, c2[0] + c2[2], "send", "REPLY")
        if not (enq and c1 and job and done and wait and c2 and reply):
            continue
        c1_end, c2_end = c1[0] + c1[2], c2[0] + c2[2]
        ack = first_event(window, c1_end, "send", "REPLY")
        wait_first += wait[0] < done[0]
        for name, seconds in (
            ("total", t_end - t0),
            ("client_to_broker", enq[0] - t0),
            ("broker_before_commit1", c1[0] - enq[0]),
            ("commit1", c1[2]),
            ("commit1_to_job_sent", job[0] - c1_end),
            ("worker_job_to_done", done[0] - job[0]),
            ("broker_done_to_commit2", c2[0] - done[0]),
            ("commit2", c2[2]),
            ("commit2_to_reply_sent", reply[0] - c2_end),
            ("reply_to_client", t_end - reply[0]),
            ("ack_at_client", t_ack - t0),
            ("wait_sent_to_recv_after_ack", wait[0] - (ack[0] if ack else c1_end)),
        ):
            legs.setdefault(name, []).append(seconds * 1000)
    if not legs:
        raise RuntimeError("no round trip could be matched to the broker's events")
    fig = {f"{name}_ms": statistics.median(values) for name, values in legs.items()}
    fig["traced"] = len(legs["total"])
    fig["wait_before_done_pct"] = 100 * wait_first / len(legs["total"])
    return fig


def trace_rows(p: dict[str, Any]) -> list[Row]:
    if p.get("producer"):
        return producer_trace_rows(p)
    return [
        Row(f"ENQUEUE then WAIT on a raw socket, traced (n={p['samples']})", "total_ms", "ms",
            note="legs below are medians each, so they need not add up exactly"),
        Row("  client send -> broker has ENQUEUE", "client_to_broker_ms", "ms"),
        Row("  broker: handle + tick before the commit", "broker_before_commit1_ms", "ms"),
        Row("  commit 1 (job + its dispatch)", "commit1_ms", "ms"),
        Row("  commit 1 end -> JOB sent (the ack goes first)", "commit1_to_job_sent_ms", "ms"),
        Row("  JOB sent -> DONE received (worker leg)", "worker_job_to_done_ms", "ms"),
        Row("  DONE received -> commit 2 starts", "broker_done_to_commit2_ms", "ms"),
        Row("  commit 2 (completion)", "commit2_ms", "ms"),
        Row("  commit 2 end -> WAIT reply sent", "commit2_to_reply_sent_ms", "ms"),
        Row("  WAIT reply sent -> client has it", "reply_to_client_ms", "ms"),
        Row("(parallel) enqueue ack at the client", "ack_at_client_ms", "ms",
            note="WAIT reached the broker before DONE in {wait_before_done_pct:.0f}% of round trips; "
                 "{traced:.0f} round trips matched"),
    ]


def producer_trace_rows(p: dict[str, Any]) -> list[Row]:
    rows = []
    for label, title in (("alone", "no worker"), ("worker", "its worker running every job")):
        rows += [
            Row(f"one producer's enqueue, {title} (n={p['samples']})", f"{label}_cycle_us", "us",
                note="legs below are medians each, so they need not add up exactly"),
            Row("  call -> broker has the ENQUEUE", f"{label}_call_to_broker_us", "us"),
            Row("  broker: the pass before the commit", f"{label}_broker_before_commit_us", "us"),
            Row("  commit (write-ahead record + fdatasync)", f"{label}_commit_us", "us"),
            Row("  commit end -> ack sent", f"{label}_commit_to_ack_sent_us", "us"),
            Row("  ack sent -> call returns", f"{label}_ack_to_call_returns_us", "us",
                note="{" + label + "_with_done_pct:.0f}% of passes also handled a DONE; "
                     "{" + label + "_commits_per_call:.2f} commits a call; {" + label + "_matched:.0f} matched"),
        ]
    return rows


# --- head-of-line ------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, tuple[float, float]]:
    """User and system CPU seconds of each of a process's threads so far, summed by thread name
    (``ZMQbg/IO/0`` is libzmq's I/O thread; a thread gone since is not counted)."""
    tick = os.sysconf("SC_CLK_TCK")
    threads: dict[str, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, rest = task.joinpath("stat").read_text().split("(", 1)[1].rsplit(")", 1)
        except (OSError, IndexError, ValueError):
            continue  # ended while we looked
        fields = rest.split()
        user, system = threads.get(name, (0.0, 0.0))
        threads[name] = (user + int(fields[11]) / tick, system + int(fields[12]) / tick)
    return threads


def hol_params(args: argparse.Namespace) -> dict[str, Any]:
    wf, payload = ("media-cpu", {"s": 1.0}) if args.cpu else ("media-sleep", {"s": 2.0})
    return {"samples": 100 if args.quick else 200, "warmup": 50, "media_workflow": wf, "media_payload": payload,
            "email_concurrency": 4, "media_concurrency": 2, "media_backlog": 300}


SUPERVISED_HOL_TOML = CONFIG_TOML + """
[workflows]
app = "bench_app"

[workflows.email]
workers = 1
concurrency = {email}

[workflows.media]
workers = 1
concurrency = {media}
nice = {nice}
"""


def media_worker_pid(c: "Cluster") -> int:
    """The supervised media worker of this cluster (found by its command line)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"shoal.worker" in cmdline and b"media" in cmdline and c.endpoint.encode() in cmdline:
            return int(proc.name)
    raise RuntimeError("no media worker found")


def run_hol(args: argparse.Namespace, p: dict[str, Any], run: int) -> dict[str, float]:
    """Email round trips with media idle, then with every media slot busy and a backlog behind."""
    fig: dict[str, float] = {}
    with Cluster(f"hol-{run}", keep=args.keep) as c:
        if args.nice is not None:  # the broker's supervisor starts both groups, media at this nice level
            c.config.write_text(SUPERVISED_HOL_TOML.format(email=p["email_concurrency"], media=p["media_concurrency"],
                                                           nice=args.nice))
            c.start_broker(supervise=True)
            client = c.client()
            wait_until(lambda: all(client.stats().get(g, {}).get("workers") for g in ("email", "media")), 30,
                       "the supervised workers")
            media_pid = media_worker_pid(c)
        else:
            c.start_broker()
            c.start_worker("email", p["email_concurrency"])
            media_pid = c.start_worker("media", p["media_concurrency"]).popen.pid
            client = c.client()
        progress(f"email round trip, media idle ({p['samples']} samples)")
        idle, early_idle = roundtrip_ms(client, "email-noop", "email", p["samples"], p["warmup"])
        slots, backlog = p["media_concurrency"], p["media_backlog"]
        progress(f"email round trip, media busy: {slots} running + {backlog} queued {p['media_workflow']}")
        client.enqueue_many(p["media_workflow"], [p["media_payload"]] * (slots + backlog), group="media")
        wait_until(lambda: client.stats()["media"]["running"] >= slots, 30, "the media slots to fill")
        time.sleep(0.2)  # let the handlers get going
        cpu0, t0 = cpu_seconds(media_pid), time.perf_counter()
        busy, early_busy = roundtrip_ms(client, "email-noop", "email", p["samples"], 10)
        fig["media_cpu_pct"] = 100 * (cpu_seconds(media_pid) - cpu0) / (time.perf_counter() - t0)
        media = client.stats()["media"]
        if media["running"] < slots or media["pending"] < backlog - 10:
            raise RuntimeError(f"media was not kept busy during the measurement: {media}")
    for name, data in (("idle", idle), ("busy", busy)):
        fig[f"{name}_p50_ms"], fig[f"{name}_p99_ms"] = percentile(data, 50), percentile(data, 99)
    fig["early_waits"] = early_idle + early_busy
    fig["ratio_p50"] = fig["busy_p50_ms"] / fig["idle_p50_ms"]
    fig["ratio_p99"] = fig["busy_p99_ms"] / fig["idle_p99_ms"]
    return fig


def hol_rows(p: dict[str, Any]) -> list[Row]:
    payload = json.dumps(p["media_payload"]).replace("{", "{{").replace("}", "}}")  # notes are format strings
    busy = f"{p['media_concurrency']} x {p['media_workflow']} {payload} running"
    return [
        Row(f"email round trip p50, media idle (n={p['samples']})", "idle_p50_ms", "ms"),
        Row("email round trip p99, media idle", "idle_p99_ms", "ms"),
        Row("email round trip p50, media busy", "busy_p50_ms", "ms",
            note=f"{{ratio_p50:.2f}} x idle; {busy}, {p['media_backlog']} queued"),
        Row("email round trip p99, media busy", "busy_p99_ms", "ms", note="{ratio_p99:.2f} x idle"),
        Row("media worker CPU while busy", "media_cpu_pct", "%",
            note="wait() answered a job not yet final {early_waits:.0f} times"),
    ]


# --- output ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One line of the table: a figure (median over the runs), its target, a note."""

    what: str
    key: str
    unit: str
    target: tuple[str, float] | None = None
    note: str = ""  # formatted with the median figures


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def fmt(value: float, unit: str) -> str:
    return f"{value:,.0f}" if unit in ("jobs/s", "%", "entries/s", "us") else f"{value:.3f}"


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, min and max of every figure over the runs."""
    return {key: {"median": statistics.median(r[key] for r in runs), "min": min(r[key] for r in runs),
                  "max": max(r[key] for r in runs)} for key in runs[0]}


def print_table(rows: list[Row], summary: dict[str, dict[str, float]], runs: int) -> None:
    """The figures as aligned text: median (and range over the runs), target, verdict, note."""
    median = {k: v["median"] for k, v in summary.items()}
    header = ["measure", "median" if runs > 1 else "figure", f"min..max ({runs} runs)", "unit", "target", "", "note"]
    table = [header]
    for row in rows:
        fig = summary[row.key]
        target, verdict = "", ""
        if row.target is not None:
            op, goal = row.target
            target = f"{op} {fmt(goal, row.unit)}"
            ok = fig["median"] >= goal if op == ">=" else fig["median"] <= goal
            verdict = "ok" if ok else "MISS"
        spread = f"{fmt(fig['min'], row.unit)}..{fmt(fig['max'], row.unit)}"
        table.append([row.what, fmt(fig["median"], row.unit), spread, row.unit, target, verdict,
                      row.note.format(**median)])
    if runs == 1:  # no range to show
        table = [line[:2] + line[3:] for line in table]
    right = {1, 2} if runs > 1 else {1}
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1 - (runs == 1))]
    for n, line in enumerate(table):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        print("  ".join([*cells, line[-1]]).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths) + "  ----")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    fs = ""
    try:
        df = subprocess.run(["df", "-T", str(TMP_ROOT)], capture_output=True, text=True).stdout
        fs = df.splitlines()[1].split()[1]
    except (OSError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "lmdb": ".".join(map(str, lmdb.version())),
            "tmp": str(TMP_ROOT), "fs": fs, "loadavg": os.getloadavg()[0]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.py", description="Shoal benchmarks (default: core).")
    sub = parser.add_subparsers(dest="command")
    core = sub.add_parser("core", help="throughput, latency and the floor (the default)")
    hol = sub.add_parser("hol", help="head-of-line: email latency while the media group is busy")
    brk = sub.add_parser("breakdown", help="where the round trip goes: raw socket vs Client, with and without commit")
    trace = sub.add_parser("trace", help="round trips against a traced broker: the time of each leg")
    trace.add_argument("--producer", action="store_true",
                       help="one sequential producer on Client instead, without a worker and with one")
    hol.add_argument("--cpu", action="store_true", help="media jobs are CPU-bound loops (~1s) instead of sleeps (2s)")
    hol.add_argument("--nice", type=int, metavar="N",
                     help="the broker's supervisor starts both groups, media at nice N (own session, autogroup niced)")
    core.add_argument("--concurrency", type=int, default=32, help="slots of the bench worker (default 32)")
    core.add_argument("--profile", metavar="DIR",
                      help="run each broker under cProfile, writing DIR/broker-PHASE-RUN.prof, and print the top costs")
    for p in (core, hol, brk, trace):
        p.add_argument("--quick", action="store_true", help="a smaller run (and one repetition)")
        p.add_argument("--repeat", type=int, help="repeat the whole run N times and report medians (default 3, 1 with --quick)")
        p.add_argument("--json", action="store_true", help="print machine-readable figures")
        p.add_argument("--keep", action="store_true", help="keep the temporary data and log directories")
    return parser


def with_default_command(argv: list[str]) -> list[str]:
    """``bench.py [--quick ...]`` means ``bench.py core [--quick ...]``."""
    if any(a in ("core", "hol", "breakdown", "trace", "-h", "--help") for a in argv):
        return argv
    return ["core", *argv]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [TRACED_BROKER]:
        return serve_traced_broker(*argv[1:4])
    if argv[:1] in (["steps"], ["retention"], ["curve"]):  # kept in their own modules; same helpers
        module = __import__(f"bench_{argv[0]}")
        return int(module.main(argv[1:]))
    if argv[:1] in (["replay"], ["snapshot"]):  # recovery benchmarks, both in bench_replay.py
        import bench_replay

        return int(bench_replay.main(argv))
    args = build_parser().parse_args(with_default_command(argv))
    repeat = args.repeat or (1 if args.quick else 3)
    info = machine()
    started = time.perf_counter()
    if args.command == "hol":
        params, run_once, rows = hol_params(args), run_hol, hol_rows
    elif args.command == "breakdown":
        params, run_once, rows = breakdown_params(args), run_breakdown, breakdown_rows
    elif args.command == "trace":
        params, run_once, rows = trace_params(args), run_trace, trace_rows
    else:
        params, run_once, rows = core_params(args), run_core, core_rows
    runs = []
    for n in range(repeat):
        progress(f"run {n + 1} of {repeat}")
        runs.append(run_once(args, params, n))
    summary = summarize(runs)
    command = " ".join([args.command, *(["--cpu"] if getattr(args, "cpu", False) else []),
                        *(["--producer"] if getattr(args, "producer", False) else []),
                        *([f"--nice {args.nice}"] if getattr(args, "nice", None) is not None else []),
                        *(["--quick"] if args.quick else []), f"--repeat {repeat}"])
    wall_s = time.perf_counter() - started
    if args.json:
        print(json.dumps({"command": command, "machine": info, "params": params, "wall_s": wall_s,
                          "median": {k: v["median"] for k, v in summary.items()}, "runs": runs},
                         indent=2, sort_keys=True))
    else:
        print(f"shoal bench {command}: {info['nproc']} x {info['cpu']}, Python {info['python']}, "
              f"libzmq {info['libzmq']}, LMDB {info['lmdb']}, {info['tmp']} on {info['fs']}, "
              f"load {info['loadavg']:.1f} at start; {wall_s:.0f}s\n")
        print_table(rows(params), summary, repeat)
    if getattr(args, "profile", None):
        for path in sorted(Path(args.profile).glob("broker-*.prof")):
            print(f"\nbroker profile {path}, top 12 by own time:", file=sys.stderr)
            pstats.Stats(str(path), stream=sys.stderr).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
