"""``broker replay`` with real processes: a workload that used every feature, then its log.

One workload runs per module (retries, dead letters, requeue, delay, unrouted jobs,
durable steps with a worker SIGKILLed between them, sleep, fan-out/fan-in, expiry,
dedup keys, cancel while scheduled and while running; cron has its own test),
its broker is stopped with SIGTERM, and each test works on its own copy of that data.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import lmdb
import pytest

from shoal.jobs import as_record, as_row
from shoal.broker.storage.store import SCHEMA_VERSION, Store
from shoal.client import Client, Result
from shoal.ids import id_from_str
from shoal.protocol import pack, unpack

from conftest import DEFAULT_TOML, Cluster, lines, wait_for

TOML = DEFAULT_TOML + """
[workflows.default]
retention = "1s"       # the noop jobs expire during the workload: replay must drop them too
"""
FINAL = ("completed", "dead", "cancelled")


@dataclass
class Workload:
    """What the stopped broker's data should hold, recorded through the client before the stop."""

    data: Path
    results: dict[str, Result] = field(default_factory=dict)   # every final job
    steps: dict[str, list[Any]] = field(default_factory=dict)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    retried: str = ""           # a job that failed once, then completed
    scheduled: str = ""         # delayed an hour: still scheduled at the stop
    keyed: str = ""             # holds the dedup key "once" for an hour after it finished
    expired: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)   # enqueued after the mark, still pending at the stop
    mark_seq: int = 0
    mark_time: float = 0.0


def replay(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m shoal.broker replay ARGS``."""
    return subprocess.run([sys.executable, "-m", "shoal.broker", "replay", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


def jobs_in(data: Path) -> dict[bytes, dict[str, Any]]:
    store = Store(str(data), readonly=True)
    try:
        return {r["id"]: r for r in store.iter_jobs()}
    finally:
        store.close()


def counters(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {g: {k: row[k] for k in ("completed", "failed", "retried", "dead")} for g, row in stats.items()}


def _run_workload(c: Cluster) -> Workload:
    c.start_broker()
    client = c.client(timeout=20)
    w = Workload(c.data)
    unrouted = client.enqueue("echo", {"early": True})  # no worker announced it yet: routed at HELLO
    for group, app in (("email", "testapp"), ("media", "testapp"), ("steps", "stepsapp"), ("default", "testapp")):
        c.start_worker(group, 4, app=app)
    three = client.enqueue("three-steps", {}, group="steps")
    wait_for(lambda: not c.workers[2].alive(), what="the steps worker to kill itself between steps")
    c.start_worker("steps", 4, app="stepsapp")
    w.retried = client.enqueue("flaky", {"ok_on": 2})
    toggle = client.enqueue("toggle", {})
    fan_out = client.enqueue("fan-out", {"n": 10}, group="steps")
    ids = [unrouted, three, w.retried, toggle, fan_out, client.enqueue("always-fails", {}),
           client.enqueue("permanent", {}), client.enqueue("echo", {"d": 1}, delay=0.3),
           client.enqueue("sleeper", {"s": 0.3}, group="steps")]
    w.scheduled = client.enqueue("echo", {"d": 3600}, delay=3600)
    w.keyed = client.enqueue("echo", {"k": 1}, key="once", key_ttl=3600)
    assert client.enqueue("echo", {"k": 2}, key="once") == w.keyed  # deduplicated: no second job
    ids += [w.keyed, _cancelled_while_scheduled(client), _cancelled_while_running(c, client)]
    assert client.wait(toggle).status == "dead"
    (c.tmp / "toggle-ok").touch()
    assert client.requeue(toggle)
    w.expired = [client.enqueue("noop", {}, group="default") for _ in range(3)]
    for job_id in ids:
        assert client.wait(job_id, timeout=60).status in FINAL
    wait_for(lambda: all(client.get(j) is None for j in w.expired), what="the noop jobs to expire")
    children = [child for step in client.steps(fan_out) if step.name == "all" for child, _ in step.value]
    for job_id in ids + children:
        w.results[job_id] = client.get(job_id)
        w.steps[job_id] = client.steps(job_id)
    w.stats = counters(client.stats())
    w.dead = {r.id for r in client.dead_letters()}
    assert w.results[w.retried].attempts == 2 and len(w.dead) == 2 and len(children) == 10
    assert [w.results[j].status for j in ids[-2:]] == ["cancelled", "cancelled"]

    # the live broker's own view: a reader beside it sees its last checkpoint, up to 50 ms older
    w.mark_seq, w.mark_time = client.storage()["log_last_seq"], time.time()
    time.sleep(0.05)  # the late jobs' entries get a later millisecond than the mark
    default_worker = c.workers[3]
    default_worker.signal(signal.SIGTERM)
    assert default_worker.wait() == 0
    w.late = [client.enqueue("record", {"n": i}, group="default") for i in range(3)]
    for worker in c.workers:
        worker.signal(signal.SIGTERM)
    for worker in c.workers:
        worker.wait()
    assert c.broker is not None
    c.broker.signal(signal.SIGTERM)
    assert c.broker.wait() == 0
    return w


def _cancelled_while_scheduled(client: Client) -> str:
    job_id = client.enqueue("echo", {"c": 1}, delay=3600)
    assert client.cancel(job_id).cancelled
    return job_id


def _cancelled_while_running(c: Cluster, client: Client) -> str:
    job_id = client.enqueue("block", {"i": "cancel-me", "release": "release-cancel"})
    wait_for(lambda: "start cancel-me" in lines(c.tmp / "block.log"), what="the blocking job to start")
    assert client.cancel(job_id).cancelled  # asked: it ends cancelled when its run stops
    (c.tmp / "release-cancel").touch()
    return job_id


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    c = Cluster(tmp_path_factory.mktemp("workload"), TOML)
    try:
        yield _run_workload(c)
    finally:
        c.close()


@pytest.fixture
def data(workload: Workload, tmp_path: Path) -> Path:
    """This test's own copy of the stopped broker's data directory."""
    copy = tmp_path / "source"
    shutil.copytree(workload.data, copy, ignore=shutil.ignore_patterns("broker.lock"))
    return copy


# --- verify ---------------------------------------------------------------------------------
def test_verify_of_a_stopped_brokers_data_passes(data: Path) -> None:
    done = replay("--data", data, "--verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is exactly what its log rebuilds" in done.stdout


def test_verify_names_the_job_whose_stored_record_was_tampered_with(workload: Workload, data: Path) -> None:
    job_id = id_from_str(workload.retried)
    env = lmdb.open(str(data), max_dbs=16)
    jobs = env.open_db(b"jobs")
    with env.begin(write=True) as txn:
        record = as_record(unpack(txn.get(job_id, db=jobs)))
        record["attempts"] = 99
        txn.put(job_id, pack(as_row(record)), db=jobs)
    env.close()
    done = replay("--data", data, "--verify")
    assert done.returncode == 1
    assert f"jobs  {workload.retried}  attempts: log 2, stored 99" in done.stdout
    assert "1 difference" in done.stderr


def test_a_log_with_a_missing_entry_is_refused_as_damaged(data: Path) -> None:
    env = lmdb.open(str(data), max_dbs=16)
    log = env.open_db(b"log")
    with env.begin(write=True) as txn:
        txn.delete((5).to_bytes(8, "big"), db=log)
    env.close()
    done = replay("--data", data, "--verify")
    assert done.returncode == 2
    assert "missing entries 5..5" in done.stderr


def test_a_newer_schema_is_refused_and_nothing_is_written(data: Path, tmp_path: Path) -> None:
    env = lmdb.open(str(data), max_dbs=16)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema", pack(SCHEMA_VERSION + 1), db=meta)
    env.close()
    for args in (["--verify"], ["--out", tmp_path / "new"]):
        done = replay("--data", data, *args)
        assert done.returncode == 2
        assert f"newer Shoal (schema {SCHEMA_VERSION + 1}" in done.stderr
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["source"]  # no half-built directory left behind


def test_replay_refuses_a_dir_that_is_not_shoal_data_and_a_non_empty_out(data: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = replay("--data", tmp_path / "empty", "--verify")
    assert done.returncode == 2 and "is not a Shoal data directory" in done.stderr
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    done = replay("--data", data, "--out", occupied)
    assert done.returncode == 2 and "replay never overwrites" in done.stderr
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]


def test_long_replays_report_progress_in_entries_per_second(data: Path) -> None:
    done = replay("--data", data, "--verify", "--progress-every", "20")
    assert done.returncode == 0
    assert "replay: 20 entries applied (seq 20 of" in done.stderr and "entries/s" in done.stderr


# --- a broker on the replayed directory -------------------------------------------------------
def test_a_broker_on_the_replayed_dir_serves_what_the_original_held(workload: Workload, data: Path,
                                                                      cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(TOML)
    done = replay("--data", data, "--out", c.data)
    assert done.returncode == 0, done.stderr
    c.start_broker()
    client = c.client(timeout=20)
    for job_id, result in workload.results.items():
        assert client.get(job_id) == result
        assert client.wait(job_id) == result
        assert client.steps(job_id) == workload.steps[job_id]
    assert {r.id for r in client.dead_letters()} == workload.dead
    assert counters(client.stats()) == workload.stats
    assert all(client.get(j) is None for j in workload.expired)
    assert client.get(workload.scheduled).status == "scheduled"
    assert [client.get(j).status for j in workload.late] == ["pending"] * 3
    assert client.enqueue("echo", {"k": 3}, key="once") == workload.keyed  # the key is still taken
    c.start_worker("default", 2)
    assert [client.wait(j, timeout=30).value for j in workload.late] == [0, 1, 2]


def test_the_replayed_dir_replays_to_itself(data: Path, tmp_path: Path) -> None:
    assert replay("--data", data, "--out", tmp_path / "once").returncode == 0
    assert replay("--data", tmp_path / "once", "--out", tmp_path / "twice").returncode == 0
    assert jobs_in(tmp_path / "twice") == jobs_in(data)
    assert replay("--data", tmp_path / "twice", "--verify").returncode == 0


# --- point in time --------------------------------------------------------------------------
@pytest.mark.parametrize("point", ["seq", "time"])
def test_until_a_point_in_the_middle_leaves_out_what_came_later(workload: Workload, data: Path, tmp_path: Path,
                                                                point: str) -> None:
    until = (str(workload.mark_seq) if point == "seq"
             else datetime.fromtimestamp(workload.mark_time, tz=timezone.utc).isoformat())
    done = replay("--data", data, "--out", tmp_path / "then", "--until", until)
    assert done.returncode == 0, done.stderr
    assert f"stopping at seq {workload.mark_seq:,}" in done.stderr
    then, now = jobs_in(tmp_path / "then"), jobs_in(data)
    late = {id_from_str(j) for j in workload.late}
    assert late <= set(now) and not late & set(then)
    assert then == {k: v for k, v in now.items() if k not in late}
    assert replay("--data", tmp_path / "then", "--verify").returncode == 0


# --- cron ---------------------------------------------------------------------------------------
def test_cron_marks_are_rebuilt_so_a_replayed_broker_does_not_fire_a_tick_twice(cluster_factory: Any,
                                                                                tmp_path: Path) -> None:
    c: Cluster = cluster_factory(TOML + '\n[cron.every-second]\nworkflow = "noop"\ngroup = "default"\n'
                                        'schedule = "* * * * * *"\n')
    c.start_broker()
    c.start_worker("default", 2)
    wait_for(lambda: len(cron_marks(c.data).get("every-second", [])) >= 2, what="two cron ticks")
    assert c.broker is not None
    c.broker.signal(signal.SIGTERM)
    assert c.broker.wait() == 0
    done = replay("--data", c.data, "--verify")
    assert done.returncode == 0 and "cron marks" in done.stdout, done.stdout + done.stderr
    assert replay("--data", c.data, "--out", tmp_path / "new").returncode == 0
    store = Store(str(tmp_path / "new"), readonly=True)
    try:
        assert store.cron_last_fired() == {"every-second": max(cron_marks(c.data)["every-second"])}
    finally:
        store.close()


def cron_marks(data: Path) -> dict[str, list[int]]:
    """Every tick each cron entry fired, from the log."""
    store = Store(str(data), readonly=True)
    try:
        with store.snapshot() as snap:
            entries = [unpack(raw) for _, raw in snap.log()]
    finally:
        store.close()
    marks: dict[str, list[int]] = {}
    for _, op, _, changes in entries:
        if op == "cron":
            marks.setdefault(changes["name"], []).append(changes["tick_ms"])
    return marks


# --- live brokers -----------------------------------------------------------------------------
def test_verify_beside_a_live_broker_reads_one_consistent_snapshot(data: Path, cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(TOML)
    shutil.copytree(data, c.data)
    c.start_broker()
    c.start_worker("default", 4)
    client = c.client()
    ids = [client.enqueue("record", {"n": i}, group="default") for i in range(20)]
    for _ in range(3):  # while jobs are being enqueued and run
        ids += client.enqueue_many("record", [{"n": i} for i in range(20)], group="default")
        done = replay("--data", c.data, "--verify")
        assert done.returncode == 0, done.stdout + done.stderr
    assert all(client.wait(j, timeout=30).status == "completed" for j in ids)


def test_a_second_broker_on_the_same_data_dir_is_refused_naming_the_pid(cluster: Cluster) -> None:
    assert cluster.broker is not None
    second = subprocess.run([sys.executable, "-m", "shoal.broker", "--config", str(cluster.config),
                             "--data", str(cluster.data), "--bind", "tcp://127.0.0.1:*", "--no-supervise"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert second.returncode == 1
    assert f"is in use by another broker (pid {cluster.broker.pid})" in second.stderr
    assert cluster.broker.alive() and cluster.client().stats() is not None


def test_job_why_shows_a_retried_jobs_transitions_in_order(workload: Workload, data: Path,
                                                           cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(TOML)
    assert replay("--data", data, "--out", c.data).returncode == 0  # the log travels with the replay
    c.start_broker()
    shown = subprocess.run([sys.executable, "-m", "shoal.cli", "job", "why", workload.retried,
                            "--broker", c.endpoint], capture_output=True, text=True, timeout=30, check=False)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines()[2:]]
    ops = [row[4] for row in rows]
    assert [op for op in ops if op in ("dispatch", "retry", "complete")] == ["dispatch", "retry", "dispatch", "complete"]
    assert ops[0] == "enqueue" and ops.index("retry") < ops.index("due")
    retry = rows[ops.index("retry")]
    assert "error: RuntimeError: attempt 1 fails" in " ".join(retry)
    assert [row[0] for row in rows] == sorted((row[0] for row in rows), key=int)
