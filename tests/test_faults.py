"""Crash safety under faults, with real processes.

Fault points (``SHOAL_FAULT``, see shoal/faults.py) make the broker or a worker SIGKILL
itself inside a named crash window; the history checker (tests/history_check.py) then
compares what clients were told with what the broker did. A chaos loop kills the broker
and workers at random while a producer enqueues, and ``broker replay --verify`` must still
agree with the tables. An strace run checks the order the kernel saw: fsync, then ack.
"""
from __future__ import annotations

import collections
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from conftest import DEFAULT_TOML, Cluster, Proc, lines, wait_for
from history_check import check_history, norm

# Enqueues `record` jobs one by one (each running JOB_S seconds, PAUSE seconds apart); writes
# every id it makes (before sending) to SENT and every acknowledged id (with the dedup key it
# asked for) to ACKED. Stops after COUNT jobs, after MAX_S seconds, or when the STOP file
# appears (checked between enqueues, so every id it sent was acknowledged when it exits 0).
# Its client re-sends unanswered requests, so it rides through broker restarts.
PRODUCER = textwrap.dedent("""
    import os, sys, time
    import shoal.client.client as client_module
    from shoal import Client

    endpoint, acked_path, sent_path, stop_path = sys.argv[1:5]
    count, max_s, keyed = int(sys.argv[5]), float(sys.argv[6]), sys.argv[7] == "1"
    pause, job_s = float(sys.argv[8]), float(sys.argv[9])
    sent = open(sent_path, "a")
    make_id = client_module.new_job_id

    def new_job_id():
        raw = make_id()
        sent.write(raw.hex() + "\\n")
        sent.flush()
        return raw

    client_module.new_job_id = new_job_id
    client = Client(endpoint, timeout=60)
    deadline = time.monotonic() + max_s
    done = 0
    with open(acked_path, "a") as acked:
        for n in range(count):
            if os.path.exists(stop_path) or time.monotonic() > deadline:
                break
            key = f"k{n // 2}" if keyed else None
            job_id = client.enqueue("record", {"n": n, "s": job_s}, group="default", key=key,
                                    key_ttl=600 if keyed else None)
            acked.write(f"{job_id} {key or ''}".rstrip() + "\\n")
            acked.flush()
            done += 1
            if pause:
                time.sleep(pause)
    client.close()
    print(f"producer done: {done} acked", flush=True)
""")


class Producer:
    def __init__(self, cluster: Cluster, count: int, max_s: float = 60.0, keyed: bool = False,
                 pause: float = 0.0, job_s: float = 0.0) -> None:
        self.acked_path = cluster.tmp / "acked.txt"
        self.sent_path = cluster.tmp / "sent.txt"
        self.stop_path = cluster.tmp / "stop-producer"
        self.popen = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, cluster.endpoint, str(self.acked_path), str(self.sent_path),
             str(self.stop_path), str(count), str(max_s), "1" if keyed else "0", str(pause), str(job_s)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cluster.env)

    def acked_lines(self) -> list[str]:
        return lines(self.acked_path)

    def acked(self) -> list[str]:
        return [line.split()[0] for line in self.acked_lines()]

    def keys(self) -> dict[str, str]:
        return {parts[0]: parts[1] for parts in (line.split() for line in self.acked_lines()) if len(parts) > 1}

    def sent(self) -> list[str]:
        return lines(self.sent_path)

    def stop(self) -> None:
        self.stop_path.touch()

    def finish(self, timeout: float = 90.0) -> str:
        out, _ = self.popen.communicate(timeout=timeout)
        text = out.decode(errors="replace")
        assert self.popen.returncode == 0, f"producer failed:\n{text}"
        return text

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.communicate(timeout=10)


@pytest.fixture
def producers() -> Any:
    made: list[Producer] = []

    def make(cluster: Cluster, *args: Any, **kwargs: Any) -> Producer:
        made.append(Producer(cluster, *args, **kwargs))
        return made[-1]

    yield make
    for p in made:
        p.kill()


def _died_of_sigkill(proc: Proc, what: str, timeout: float = 30.0) -> None:
    wait_for(lambda: not proc.alive(), timeout=timeout, what=what)
    assert proc.popen.returncode == -signal.SIGKILL, f"{what}: exit {proc.popen.returncode}\n{proc.output()[-3000:]}"


def _history_problems(cluster: Cluster, producer: Producer, **kwargs: Any) -> list[str]:
    client = cluster.client(timeout=30)
    return check_history(producer.acked(), client, cluster.tmp / "record.log",
                         sent_ids=producer.sent(), keys=producer.keys(), **kwargs)


# --- the checker itself ----------------------------------------------------------------------
class _FakeClient:
    """Just enough of ``Client`` for ``check_history``: fixed results, jobs and stats."""

    def __init__(self, results: dict[str, Any], active: list[Any], completed: int) -> None:
        self.results = {norm(job_id): result for job_id, result in results.items()}
        self.active, self.completed = active, completed

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        from shoal.errors import RemoteError

        if norm(job_id) not in self.results:
            raise RemoteError("unknown_job", f"no job with id {job_id}")
        return self.results[norm(job_id)]

    def jobs(self, state: str | None = None, limit: int = 100) -> list[Any]:
        return [r for r in self.active if state in (None, r.status)]

    def stats(self) -> dict[str, dict[str, int]]:
        return {"default": {"completed": self.completed, "dead": 0}}


def test_history_checker_finds_lost_duplicated_unknown_and_hanging_jobs() -> None:
    from shoal.client.client import Result

    ids = [str(uuid.UUID(int=n + 1)) for n in range(6)]

    def done(i: int, key: str | None = None) -> Result:
        return Result(id=ids[i], status="completed", workflow="record", key=key)

    good = _FakeClient({ids[0]: done(0), ids[1]: done(1)}, [], completed=2)
    assert check_history(ids[:2], good, [norm(ids[0]), norm(ids[1]), norm(ids[1])]) == []  # twice is fine

    hanging = Result(id=ids[4], status="running", workflow="record")
    bad = _FakeClient({ids[0]: done(0, "k"), ids[1]: done(1, "k"), ids[3]: Result(id=ids[3], status="pending")},
                      [hanging], completed=5)
    problems = check_history([ids[0], ids[1], ids[2], ids[3]], bad, [norm(ids[0]), norm(ids[5])],
                             keys={ids[0]: "k", ids[1]: "k"}, wait_timeout=0.1)
    text = "\n".join(problems)
    assert f"acked job {norm(ids[2])} never finished" in text                      # lost
    assert f"acked job {norm(ids[3])} ended 'pending'" in text                     # not final
    assert f"acked job {norm(ids[1])} (record) is completed but never ran" in text  # completed, no run
    assert f"job {norm(ids[5])} ran (record.log) but no client sent it" in text    # made up
    assert "dedup key 'k' has 2 jobs" in text                                      # key twice
    assert f"job {norm(ids[4])} is still running at the end" in text               # hanging lease
    assert f"job {norm(ids[4])} (running) exists but no client sent it" in text
    assert "the broker counts 5 finished and 1 active jobs" in text                # created twice
    assert len(problems) == 8, text


# --- broker fault points --------------------------------------------------------------------
JOBS = 300


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point, after, keyed", [
    ("before_commit", 120, False),            # a batch decided, nothing written: the re-send creates it
    ("after_commit_before_ack", 120, False),  # durable, ack lost: the re-send is answered with the same job
    ("after_dispatch", 60, False),            # JOBs sent, maybe not delivered: leases survive as orphans
    ("after_commit_before_ack", 120, True),   # the same with dedup keys: still one job per key
], ids=["before_commit", "after_commit_before_ack", "after_dispatch", "after_commit_before_ack-keyed"])
def test_broker_killed_at_a_fault_point_mid_burst_loses_and_duplicates_nothing(
        cluster_factory: Callable[..., Cluster], producers: Callable[..., Producer], point: str, after: int,
        keyed: bool) -> None:
    cluster = cluster_factory()
    broker = cluster.start_broker(env={"SHOAL_FAULT": point, "SHOAL_FAULT_AFTER": str(after)})
    # The commit points count batches: with no worker yet every batch is one enqueue, so the crash
    # hits enqueue number after+1 exactly. after_dispatch needs a worker to dispatch to.
    dispatching = point == "after_dispatch"
    if dispatching:
        cluster.start_worker("default", 4)
    producer = producers(cluster, JOBS, keyed=keyed)  # keyed: key k{n//2}, so every key is asked for twice
    _died_of_sigkill(broker, f"the broker to SIGKILL itself at {point}")
    acked_at_crash = len(producer.acked_lines())
    if dispatching:
        assert 0 < acked_at_crash < JOBS, f"the fault fired outside the burst ({acked_at_crash} of {JOBS} acked)"
    else:
        crash_at = 2 * after if keyed else after  # a deduplicated enqueue writes nothing: no batch
        assert acked_at_crash == crash_at, f"expected the crash on enqueue {crash_at + 1}, {acked_at_crash} were acked"
    cluster.start_broker()  # no fault this time; the producer's client re-sends what was unanswered
    if not dispatching:
        cluster.start_worker("default", 4)
    producer.finish()
    acked = producer.acked()
    jobs = JOBS // 2 if keyed else JOBS
    assert len(acked) == JOBS
    assert len(set(acked)) == jobs  # keyed: the second enqueue of each key got the first one's job
    problems = _history_problems(cluster, producer, final_states=("completed",))
    assert problems == [], "\n".join(problems[:30])
    stats = cluster.client().stats()
    assert sum(row["completed"] for row in stats.values()) == jobs  # none created twice
    runs = collections.Counter(norm(line) for line in lines(cluster.tmp / "record.log"))
    twice = [job for job, n in runs.items() if n > 1]
    # each job ran once: results finished while the broker was down are re-sent by the worker
    # after it reconnects, and the restarted broker accepts them for the orphaned leases
    assert twice == [], f"{len(twice)} jobs ran twice: {twice}"


# --- step fault points -------------------------------------------------------------------------
def _effect(cluster: Cluster, name: str) -> list[str]:
    return lines(cluster.tmp / f"effect-{name}")


def test_broker_killed_right_after_storing_a_step_resumes_the_run_without_repeating_it(
        cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    broker = cluster.start_broker(env={"SHOAL_FAULT": "after_step_stored"})
    cluster.start_worker("faults", 2, app="faultapp")
    client = cluster.client(timeout=30)
    job_id = client.enqueue("two-steps", {"tag": "b"}, group="faults")
    _died_of_sigkill(broker, "the broker to SIGKILL itself after storing step one")
    assert len(_effect(cluster, "b-first")) == 1 and _effect(cluster, "b-second") == []
    cluster.start_broker()
    result = client.wait(job_id, timeout=40)
    assert result.status == "completed", result.error
    assert result.value == ["b-first", "b-second"]
    assert len(_effect(cluster, "b-first")) == 1  # the stored step was answered, not run again
    assert len(_effect(cluster, "b-second")) == 1
    assert {s.name: s.status for s in client.steps(job_id)} == {"first": "done", "second": "done"}
    assert client.jobs(state="running") == []


def test_worker_killed_right_after_a_step_is_stored_and_its_replacement_does_not_repeat_it(
        cluster: Cluster) -> None:
    plain_env = cluster.env
    cluster.env = {**plain_env, "SHOAL_FAULT": "worker_after_step"}
    try:
        doomed = cluster.start_worker("faults", 2, app="faultapp")
    finally:
        cluster.env = plain_env
    client = cluster.client(timeout=30)
    job_id = client.enqueue("two-steps", {"tag": "w"}, group="faults")
    _died_of_sigkill(doomed, "the worker to SIGKILL itself after step one was stored")
    assert len(_effect(cluster, "w-first")) == 1 and _effect(cluster, "w-second") == []
    cluster.start_worker("faults", 2, app="faultapp")  # no fault; gets the job when the lease expires
    result = client.wait(job_id, timeout=40)
    assert result.status == "completed", result.error
    assert result.value == ["w-first", "w-second"] and result.attempts == 2
    assert len(_effect(cluster, "w-first")) == 1
    assert len(_effect(cluster, "w-second")) == 1
    assert client.jobs(state="running") == []


def test_a_job_finished_while_the_broker_is_down_is_not_run_again(cluster: Cluster) -> None:
    worker = cluster.start_worker("media", 1)
    client = cluster.client(timeout=30)
    job_id = client.enqueue("block", {"i": 1, "release": "go"}, group="media")
    wait_for(lambda: "start 1" in lines(cluster.tmp / "block.log"), what="the job to start")
    cluster.broker.kill()
    (cluster.tmp / "go").touch()  # the job finishes while no broker listens
    wait_for(lambda: "end 1" in lines(cluster.tmp / "block.log"), what="the job to finish")
    wait_for(lambda: "is silent" in worker.output(), what="the worker to notice the broker is gone")
    cluster.start_broker()
    result = client.wait(job_id, timeout=30)
    assert result.status == "completed"
    assert lines(cluster.tmp / "block.log").count("start 1") == 1, lines(cluster.tmp / "block.log")


# --- chaos -----------------------------------------------------------------------------------------
BROKER_KILLS = 10
WORKER_KILLS = 3


@pytest.mark.timeout(240)
def test_chaos_broker_and_worker_sigkills_lose_no_acknowledged_job_and_replay_verifies(
        cluster_factory: Callable[..., Cluster], producers: Callable[..., Producer]) -> None:
    seed = int(os.environ.get("SHOAL_CHAOS_SEED") or random.randrange(1 << 30))  # set it to replay a run
    rng = random.Random(seed)
    print(f"chaos seed {seed} (SHOAL_CHAOS_SEED={seed} repeats these kill timings)")
    cluster = cluster_factory()
    cluster.start_broker()
    workers = [cluster.start_worker("default", 4), cluster.start_worker("default", 4)]
    # paced so that it is still enqueueing when the last kill comes (bounded: 5,000 jobs or 60 s)
    producer = producers(cluster, 5000, max_s=60.0, pause=0.004, job_s=0.01)
    wait_for(lambda: len(producer.acked_lines()) >= 20, what="the producer to get going")
    kill_worker_at = set(rng.sample(range(BROKER_KILLS), WORKER_KILLS))
    progress = []
    for round_ in range(BROKER_KILLS):
        time.sleep(rng.uniform(0.3, 1.5))
        cluster.broker.kill()
        progress.append(len(producer.acked_lines()))
        cluster.start_broker()
        if round_ in kill_worker_at:
            victim = rng.choice(workers)
            victim.kill()
            workers.remove(victim)
            workers.append(cluster.start_worker("default", 4))
        assert producer.popen.poll() is None, f"the producer stopped early:\n{producer.finish()}"
    producer.stop()
    producer.finish()
    acked = producer.acked()
    assert len(acked) > progress[0], f"the producer made no progress through the restarts: {progress}"
    assert len(set(acked)) == len(acked)
    problems = _history_problems(cluster, producer, final_states=("completed",), wait_timeout=90)
    assert problems == [], "\n".join(problems[:30])
    ran = {norm(h) for h in lines(cluster.tmp / "record.log")}
    assert {norm(a) for a in acked} <= ran  # at least once each (twice is allowed after a worker kill)

    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(20)
    cluster.broker.signal(signal.SIGTERM)
    assert cluster.broker.wait(20) == 0, cluster.broker.output()[-3000:]
    out = subprocess.run([sys.executable, "-m", "shoal.broker", "replay", "--data", str(cluster.data), "--verify"],
                         check=False, capture_output=True, text=True, timeout=120, env=cluster.env, cwd=cluster.tmp)
    assert out.returncode == 0, f"replay --verify exit {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


# --- fsync before ack, as the kernel saw it ---------------------------------------------------------
# A SIGKILL cannot show a missing fsync (the page cache survives it), so the order is checked
# in the syscalls: zmq's I/O thread reads each ENQUEUE off the socket and later writes its ack;
# between the two, the broker's main thread must have completed an fsync/fdatasync that began
# after the request arrived (the commit of that very request, not an earlier one).
_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_DURATION = re.compile(r"<(\d+\.\d+)>\s*$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>")


def _payload(call: str) -> bytes:
    """The bytes of the first quoted buffer of a syscall traced with ``-xx`` (every byte as \\xNN)."""
    m = re.search(r'"((?:\\x[0-9a-f]{2})*)"', call)
    return bytes.fromhex(m.group(1).replace("\\x", "")) if m else b""


class Trace:
    """``strace -f -ttt -T -xx`` output: the main thread, its syncs, requests in and acks out."""

    def __init__(self, text: str) -> None:
        self.main_tid = 0
        self.syncs: list[tuple[float, float, int, str]] = []   # (start, end, tid, the synced file's name)
        files: dict[int, str] = {}  # fd -> the file's name, from openat
        self.requests: list[tuple[float, int]] = []       # (end of the read, tid) of each ENQUEUE
        self.acks: list[tuple[float, int, str]] = []      # (start of the write, tid, line)
        unfinished: dict[tuple[int, str], tuple[float, str]] = {}  # (tid, syscall) -> (start, first half)
        for raw in text.splitlines():
            m = _LINE.match(raw)
            if not m:
                continue
            tid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            resumed = _RESUMED.match(rest)
            if resumed:
                start, head = unfinished.pop((tid, resumed.group(1)), (ts, ""))
                name, call, end = resumed.group(1), head + rest[resumed.end():], ts
            else:
                name, call, start = rest.split("(", 1)[0], rest, ts
                if rest.endswith("<unfinished ...>"):
                    unfinished[(tid, name)] = (ts, rest[: -len("<unfinished ...>")])
                    continue
                duration = _DURATION.search(rest)
                end = ts + float(duration.group(1)) if duration else ts
            if name == "execve" and not self.main_tid:
                self.main_tid = tid
            elif name == "openat" and (opened := re.search(r"= (\d+)", call)):
                files[int(opened.group(1))] = os.path.basename(_payload(call).decode(errors="replace"))
            elif name in ("fdatasync", "fsync") and re.search(r"= 0\b", call):
                fd = re.search(r"sync\((\d+)", call)
                self.syncs.append((start, end, tid, files.get(int(fd.group(1)), "?") if fd else "?"))
            elif name in ("recvfrom", "recvmsg") and b"ENQUEUE" in _payload(call):
                self.requests.append((end, tid))
            elif name in ("sendto", "sendmsg") and b"existed" in _payload(call):
                self.acks.append((start, tid, call))
        self.syncs.sort()
        self.requests.sort()
        self.acks.sort()


ENQUEUES = 50


@pytest.mark.parametrize("write_ahead, synced", [(True, "wal"), (False, "data.mdb")],
                         ids=["write-ahead", "lmdb-commit"])
def test_every_enqueue_ack_leaves_the_broker_after_an_fsync_by_its_main_thread(
        cluster_factory, write_ahead: bool, synced: str) -> None:
    """The sync between an ENQUEUE's arrival and its ack is of the write-ahead file (default), or
    of LMDB's data file with ``write_ahead = false``."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed: cannot check the order of fsync and ack syscalls")
    setting = f"[broker]\nwrite_ahead = {str(write_ahead).lower()}\n"
    cluster = cluster_factory(DEFAULT_TOML.replace("[broker]\n", setting))
    trace_path = cluster.tmp / "broker.strace"
    args = [strace, "-f", "-ttt", "-T", "-xx", "-s", "256", "-o", str(trace_path),
            "-e", "trace=execve,openat,fdatasync,fsync,sendto,sendmsg,recvfrom,recvmsg,write",
            sys.executable, "-m", "shoal.broker", "--config", str(cluster.config), "--data", str(cluster.data),
            "--bind", "tcp://127.0.0.1:*", "--no-supervise"]  # what Cluster.start_broker runs, traced
    proc = Proc(args, cluster.tmp / "strace-broker.log", cluster.env, cluster.tmp)
    cluster.procs.append(proc)
    cluster.broker = proc
    found = wait_for(lambda: re.search(r"listening on (\S+)", proc.output()) or not proc.alive(), timeout=60,
                     what="the traced broker to listen")
    if not proc.alive():
        if "ptrace" in proc.output() or "Operation not permitted" in proc.output():
            pytest.skip(f"strace cannot trace here: {proc.output()[-500:]}")
        pytest.fail(f"the traced broker exited:\n{proc.output()}")
    cluster.endpoint = found.group(1)
    client = cluster.client(timeout=30)
    ids = [client.enqueue("record", {"n": n}, group="default") for n in range(ENQUEUES)]  # one by one
    assert len(set(ids)) == ENQUEUES
    client.close()
    broker_pid = Trace(trace_path.read_text(errors="replace")).main_tid
    assert broker_pid, "no execve in the trace: cannot tell the broker's main thread"
    os.kill(broker_pid, signal.SIGTERM)  # the broker itself; strace exits with its tracee
    assert proc.wait(30) == 0, proc.output()[-3000:]

    trace = Trace(trace_path.read_text(errors="replace"))
    assert len(trace.requests) == ENQUEUES, f"expected {ENQUEUES} ENQUEUE reads in the trace, found {len(trace.requests)}"
    assert len(trace.acks) == ENQUEUES, f"expected {ENQUEUES} enqueue acks in the trace, found {len(trace.acks)}"
    assert {tid for _, tid, _ in trace.acks}.isdisjoint({trace.main_tid})  # zmq's I/O thread writes them
    main_syncs = [(start, end) for start, end, tid, name in trace.syncs if tid == trace.main_tid and name == synced]
    assert len(main_syncs) >= ENQUEUES, f"only {len(main_syncs)} syncs by the main thread for {ENQUEUES} enqueues"
    previous_ack = 0.0
    for n, ((arrived, _), (acked, _, call)) in enumerate(zip(trace.requests, trace.acks)):
        assert previous_ack < arrived < acked, f"enqueue {n}: read at {arrived:.6f}, acked at {acked:.6f}"
        assert any(arrived < start and end <= acked for start, end in main_syncs), (
            f"enqueue {n} arrived at {arrived:.6f} and was acked at {acked:.6f} with no completed fsync by the "
            f"main thread in between: {call[:160]}")
        previous_ack = acked
