"""The workload every system gets, through one small adapter interface, and the floor.

One client process (the one running this module) and one worker process per system; a
no-op task. The phases: sequential enqueue, sixteen threads sharing one client, bulk
enqueue in batches of 1,000 (where the system has a bulk call), end to end with one
sequential producer (enqueue N one at a time, then wait until all ran), and the enqueue
then wait round trip. The enqueue phases run with no worker, so the worker's CPU does not
compete with the client's on a small machine; each phase starts from an empty queue.
The three enqueue phases are ``scripts/bench.py``'s own loops (``enqueue_one_thread``,
``enqueue_threads``, ``enqueue_batches``), so Shoal is timed here exactly as there.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

SCRIPTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SCRIPTS))  # scripts/bench.py: Shoal's own benchmark helpers, reused

from bench import (enqueue_batches, enqueue_one_thread, enqueue_threads, percentile, progress,  # noqa: E402
                   timed_ms, wait_until, zmq_roundtrip_ms)


class Adapter(Protocol):
    """What a system offers the workload; each ``sys_*.py`` module implements one."""

    has_bulk: bool

    def reset(self) -> None:
        """Empty every queue and result the system holds (no worker running)."""

    def start_worker(self) -> None:
        """Start the one worker process and return once it takes jobs."""

    def stop_worker(self) -> None:
        """Stop the worker process (by pid)."""

    def enqueue(self, i: int) -> Any:
        """Enqueue the no-op task with payload ``i``; return what ``wait`` takes."""

    def enqueue_bulk(self, items: list[int]) -> list[Any]:
        """Enqueue a no-op task for each of ``items`` in one bulk call."""

    def as_client(self) -> Any:
        """What ``bench.py``'s enqueue loops call ``enqueue``/``enqueue_many`` on (a ``BenchClient``)."""

    def wait(self, handle: Any) -> None:
        """Block until the job has run (its result is stored)."""

    def wait_all(self, handles: Sequence[Any]) -> None:
        """Block until all the jobs have run."""

    def close(self) -> None:
        """Release the client's connections."""


def wait_each(adapter: Adapter, handles: Sequence[Any]) -> None:
    """``wait_all`` for systems with no cheaper way: each result in turn (most are done by then)."""
    for handle in handles:
        adapter.wait(handle)


class BenchClient:
    """Lets ``scripts/bench.py``'s enqueue loops drive any adapter: the same loops, the same calls
    (Shoal's adapter hands them its real ``Client`` instead)."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def enqueue(self, workflow: str, payload: dict[str, int], group: str | None = None) -> Any:
        return self.adapter.enqueue(payload["i"])

    def enqueue_many(self, workflow: str, payloads: list[dict[str, int]], group: str | None = None) -> list[Any]:
        return self.adapter.enqueue_bulk([p["i"] for p in payloads])


def end_to_end(adapter: Adapter, n: int) -> float:
    """Jobs per second from the first enqueue until all ``n`` jobs, enqueued one at a time, have run."""
    t0 = time.perf_counter()
    handles = [adapter.enqueue(i) for i in range(n)]
    adapter.wait_all(handles)
    return n / (time.perf_counter() - t0)


def roundtrip(adapter: Adapter, samples: int, warmup: int) -> list[float]:
    """Milliseconds of enqueue then wait, one job at a time."""
    return timed_ms(lambda: adapter.wait(adapter.enqueue(0)), samples, warmup)


def run_phases(adapter: Adapter, p: dict[str, Any], only_phases: set[str] | None = None) -> dict[str, float]:
    """Every phase on ``adapter``, each from an empty queue; figures keyed as in ``report.COLUMNS``."""
    fig: dict[str, float] = {}
    wanted = (lambda name: only_phases is None or name in only_phases)
    if wanted("seq"):
        adapter.reset()
        progress(f"  sequential enqueue x{p['seq_n']}")
        fig["seq_jobs_s"] = enqueue_one_thread(adapter.as_client(), p["seq_n"])
    if wanted("threads"):
        adapter.reset()
        progress(f"  {p['threads']} threads x{p['per_thread']}, one client")
        fig["threads_jobs_s"] = enqueue_threads(adapter.as_client(), p["threads"], p["per_thread"])
    if wanted("bulk") and adapter.has_bulk:
        adapter.reset()
        progress(f"  bulk enqueue {p['bulk_total']} in batches of {p['bulk_batch']}")
        fig["bulk_jobs_s"] = enqueue_batches(adapter.as_client(), p["bulk_total"], p["bulk_batch"])
    if wanted("e2e") or wanted("rt"):
        adapter.reset()
        adapter.start_worker()
        try:
            if wanted("e2e"):
                progress(f"  end to end x{p['e2e_n']}, one sequential producer")
                fig["e2e_jobs_s"] = end_to_end(adapter, p["e2e_n"])
            if wanted("rt"):
                progress(f"  round trip x{p['rt_samples']}")
                rt = roundtrip(adapter, p["rt_samples"], p["rt_warmup"])
                fig["rt_p50_ms"], fig["rt_p99_ms"] = percentile(rt, 50), percentile(rt, 99)
        finally:
            adapter.stop_worker()
    return fig


# --- the floor -------------------------------------------------------------------------------
def lmdb_job_commit_ms(samples: int, tmp: Path) -> list[float]:
    """One synced LMDB transaction shaped like Shoal's enqueue: the job record and its log entry,
    in two named tables of an environment opened as the broker opens its store."""
    import lmdb
    import msgpack

    path = tempfile.mkdtemp(prefix="floor-lmdb-", dir=tmp)
    env = lmdb.open(path, map_size=64 << 20, max_dbs=8, sync=True, metasync=True, writemap=False)
    jobs, log = env.open_db(b"jobs"), env.open_db(b"log")
    seq = iter(range(10**9))
    record = msgpack.packb({"wf": "noop", "group": "bench", "payload": msgpack.packb({"i": 1}), "state": "pending",
                            "attempt": 0, "priority": 0, "created_ms": 1_700_000_000_000, "max_attempts": 3})

    def once() -> None:
        n = next(seq)
        job_id = n.to_bytes(16, "big")
        with env.begin(write=True) as txn:
            txn.put(job_id, record, db=jobs)
            txn.put(n.to_bytes(8, "big"), b"\x94" + job_id + record, db=log, append=True)

    try:
        return timed_ms(once, samples, warmup=20)
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)


def floor(p: dict[str, Any], tmp: Path) -> dict[str, float]:
    """The machine's floor for one durable enqueue: one raw zmq round trip plus one synced commit."""
    progress("floor: raw pyzmq DEALER/ROUTER round trip, synced LMDB commit of a job record")
    zmq_p50 = percentile(zmq_roundtrip_ms(p["zmq_samples"]), 50)
    commit_p50 = percentile(lmdb_job_commit_ms(p["commit_samples"], tmp), 50)
    return {"zmq_rt_p50_ms": zmq_p50, "lmdb_commit_p50_ms": commit_p50,
            "floor_seq_jobs_s": 1000 / (zmq_p50 + commit_p50)}


def poll_until(condition: Callable[[], Any], what: str, timeout_s: float = 300.0) -> Any:
    """``bench.wait_until`` at a 1 ms poll: how the pollers among the adapters wait."""
    return wait_until(condition, timeout_s, what, poll_s=0.001)
