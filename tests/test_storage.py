"""Snapshots, log compaction, replay from a snapshot, and a full store."""
from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from shoal import StorageFull
from shoal.errors import ShoalError

from conftest import DEFAULT_TOML, wait_for

SNAPSHOT_TOML = DEFAULT_TOML.replace("[broker]\n", "[broker]\nsnapshot_entries = 100\nsnapshot_interval = \"1h\"\n")


def test_snapshot_drops_the_log_behind_it_and_replay_starts_from_it(cluster_factory) -> None:
    cluster = cluster_factory(SNAPSHOT_TOML)
    cluster.start_broker()
    cluster.start_worker("email", 8)
    client = cluster.client()
    ids = client.enqueue_many("echo", [{"n": n} for n in range(300)], group="email")
    assert all(client.wait(i, timeout=30).status == "completed" for i in ids)
    # the log shrank: it no longer starts at seq 1 (or is empty, when a snapshot holds everything)
    wait_for(lambda: (s := client.storage())["snapshots"] and s["log_first_seq"] != 1,
             what="a snapshot and the log trimmed behind it")
    storage = client.storage()
    assert storage["entries"]["log"] < storage["log_last_seq"]  # the log shrank
    verified = cluster.stop_and_verify()
    assert "starting from the snapshot" in verified.stderr
    out = cluster.tmp / "restored"
    rebuilt = cluster.replay("--out", str(out))
    assert rebuilt.returncode == 0, rebuilt.stderr
    cluster.data = out  # a broker on the rebuilt directory serves the same results
    cluster.start_broker()
    assert client.wait(ids[7], timeout=20).value["payload"] == {"n": 7}


def test_shoal_storage_shows_state_log_and_snapshots(cluster_factory) -> None:
    cluster = cluster_factory(SNAPSHOT_TOML)
    cluster.start_broker()
    client = cluster.client()
    client.enqueue_many("echo", [{}] * 150, group="email")
    wait_for(lambda: client.storage()["snapshots"], what="a snapshot")
    out = subprocess.run([sys.executable, "-m", "shoal.cli", "storage", "--broker", cluster.endpoint],
                         capture_output=True, text=True, timeout=30, env=cluster.env)
    assert out.returncode == 0, out.stderr
    assert "150 jobs" in out.stdout and "snapshot  snap-" in out.stdout and "log " in out.stdout
    assert re.search(r"^wal       4\.0 MiB file; [\d,]+ batches", out.stdout, re.M), out.stdout


@pytest.mark.timeout(180)
def test_a_full_store_refuses_enqueues_cleanly_and_recovers_after_expiry(cluster_factory) -> None:
    # fewer snapshots than the other tests: each holds a read transaction while it copies, and
    # pages freed meanwhile cannot be reused until it ends
    toml = SNAPSHOT_TOML.replace("snapshot_entries = 100", "snapshot_entries = 1000").replace(
        "[broker]\n", '[broker]\nmax_size = "32MiB"\nmap_size = "32MiB"\n')
    toml += '\n[workflows.email]\nretention = "2s"\n'
    cluster = cluster_factory(toml)
    cluster.start_broker()
    client = cluster.client()
    big = {"blob": "x" * 20_000}
    accepted = []
    with pytest.raises(StorageFull) as err:
        for _ in range(2000):
            accepted.append(client.enqueue("sink", big, group="email"))
    assert "storage full" in str(err.value) and "max_size" in str(err.value)
    assert len(accepted) >= 3
    assert client.stats()["email"]["pending"] == len(accepted)  # reads still work; nothing half-done
    cluster.start_worker("email", 4)  # the accepted jobs still run and complete
    assert all(client.wait(i, timeout=60).status == "completed" for i in accepted)
    # they expire after 2 s, a snapshot drops the log behind them, and there is room again
    wait_for(lambda: not client.storage()["refusing_enqueues"] and not client.get(accepted[0]),
             timeout=60, what="room again")
    assert client.wait(client.enqueue("sink", big, group="email"), timeout=30).status == "completed"


def test_a_broker_killed_during_a_snapshot_loses_nothing(cluster_factory) -> None:
    cluster = cluster_factory(SNAPSHOT_TOML)
    broker = cluster.start_broker(env={"SHOAL_FAULT": "during_snapshot"})
    client = cluster.client(timeout=60)
    ids = client.enqueue_many("echo", [{"n": n} for n in range(90)], group="email")  # < snapshot_entries
    cluster.start_worker("email", 8)  # dispatches and completions pass 100 entries: a snapshot starts
    wait_for(lambda: not broker.alive(), what="the broker to die in its snapshot")
    assert broker.popen.returncode == -signal.SIGKILL
    cluster.start_broker()
    assert all(client.wait(i, timeout=30).status == "completed" for i in ids)
    wait_for(lambda: client.storage()["snapshots"], what="a snapshot after the restart")
    assert not [p for p in (cluster.data / "snapshots").iterdir() if p.name.startswith(".snap-partial-")]
    cluster.stop_and_verify()


def test_replay_of_a_log_trimmed_to_empty_restores_everything_from_the_snapshot(tmp_path) -> None:
    from shoal import protocol as P
    from shoal.broker.core import Broker
    from shoal.broker.storage.store import Batch, Store
    from shoal.conf import Settings
    from shoal.ids import new_job_id

    data = tmp_path / "data"
    store = Store(str(data))
    broker = Broker(store, Settings())
    broker.load()
    job_id = new_job_id()
    broker.handle(b"c", P.encode(P.ENQUEUE, {"rid": 1, "jobs": [{"id": job_id, "wf": "echo", "group": "email",
                                                                  "payload": P.pack({"n": 1})}]}))
    batch, _ = broker.take()
    store.commit(batch, 1)
    _, seq = store.take_snapshot(str(data / "snapshots"))
    store.commit(Batch(trim_log_to=seq), 1)
    assert store.log_first_seq() == 0  # the log is empty: the snapshot holds everything
    store.close()
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "shoal.broker", "replay", "--data", str(data), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    restored = Store(str(out))
    try:
        assert restored.get_job(job_id)["state"] == "pending"
    finally:
        restored.close()


def test_a_snapshot_written_over_an_old_one_is_byte_for_byte_lmdbs_own_compacted_copy(tmp_path) -> None:
    from shoal import protocol as P
    from shoal.broker.core import Broker
    from shoal.broker.storage.store import Store
    from shoal.conf import Settings
    from shoal.ids import new_job_id

    data, snaps = tmp_path / "data", tmp_path / "data" / "snapshots"
    store = Store(str(data))
    broker = Broker(store, Settings())
    broker.load()
    old = snaps / "snap-0000000000000001"
    old.mkdir(parents=True)
    (old / "data.mdb").write_bytes(b"\xff" * (3 << 20))  # longer than the copy: must be cut
    (old / "lock.mdb").write_bytes(b"stale")
    try:
        jobs = [{"id": new_job_id(), "wf": "echo", "group": "email", "payload": P.pack({"n": n, "pad": "x" * 500})}
                for n in range(2000)]
        broker.handle(b"c", P.encode(P.ENQUEUE, {"rid": 1, "jobs": jobs}))
        batch, _ = broker.take()
        store.commit(batch, 1)
        path, seq = store.take_snapshot(str(snaps), recycle=str(old))
        reference = tmp_path / "reference"
        reference.mkdir()
        store.env.copy(str(reference), compact=True)
    finally:
        store.close()
    assert not old.exists()  # its file was taken over by the new snapshot
    assert sorted(p.name for p in snaps.iterdir()) == [f"snap-{seq:016d}"]
    assert (reference / "data.mdb").read_bytes() == (snaps / f"snap-{seq:016d}" / "data.mdb").read_bytes()
    copy = Store(path, readonly=True)
    try:
        assert copy.last_seq() == seq and len(list(copy.iter_jobs())) == 2000
    finally:
        copy.close()


def test_a_broker_killed_while_writing_over_its_oldest_snapshot_recovers_from_the_newest(cluster_factory) -> None:
    cluster = cluster_factory(SNAPSHOT_TOML)
    broker = cluster.start_broker(env={"SHOAL_FAULT": "snapshot_overwriting"})
    client = cluster.client(timeout=60)
    cluster.start_worker("email", 8)
    ids: list[str] = []
    snaps = cluster.data / "snapshots"

    def snapshots() -> list[str]:
        return sorted(p.name for p in snaps.iterdir()) if snaps.is_dir() else []

    feeder = cluster.client(timeout=3)
    while broker.alive():  # two new snapshots, then the third writes over the first and dies there
        try:
            batch = feeder.enqueue_many("echo", [{"n": n} for n in range(20)], group="email")
        except ShoalError:  # the broker died under this call: not acknowledged, so not counted
            break
        ids += batch
        try:
            for i in batch:
                feeder.wait(i)
        except ShoalError:
            break
    broker.wait(30)
    assert broker.popen.returncode == -signal.SIGKILL
    left = snapshots()
    assert len([n for n in left if n.startswith("snap-")]) == 1, left  # the newest, whole
    assert len([n for n in left if n.startswith(".snap-partial-")]) == 1, left  # the oldest, half overwritten
    cluster.start_broker()
    assert all(client.wait(i, timeout=30).status == "completed" for i in ids)
    wait_for(lambda: len(client.storage()["snapshots"]) == 2, what="snapshots again after the restart")
    assert not [n for n in snapshots() if n.startswith(".snap-partial-")]
    cluster.stop_and_verify()


def test_the_map_grows_while_snapshots_run_without_pulling_pages_from_under_them(cluster_factory) -> None:
    # LMDB unmaps the file to resize it: a snapshot's read transaction open meanwhile would read
    # freed memory. The loop's growth waits; a snapshot in flight stops and is taken again.
    toml = DEFAULT_TOML.replace("[broker]\n", '[broker]\nmap_size = "1MiB"\nsnapshot_interval = "0.01s"\n')
    cluster = cluster_factory(toml)
    broker = cluster.start_broker()
    client = cluster.client(timeout=60)
    for _ in range(100):  # 15 MiB of jobs: the map doubles from 1 MiB five times or more
        client.enqueue_many("sink", [{"blob": "z" * 3000} for _ in range(50)], group="email")
    assert client.storage()["map_bytes"] >= 32 << 20
    assert "snapshot stopped: the map is growing" in broker.output()  # snapshots were running at each growth
    wait_for(lambda: client.storage()["snapshots"], what="a snapshot once the map stopped growing")
    assert broker.alive()
    cluster.stop_and_verify()


def test_results_that_outgrow_the_storage_left_wait_for_room_and_all_complete(cluster_factory) -> None:
    # Enqueues stop at half of max_size; results are not enqueues: 1 MiB each, they would fill
    # the rest. A result that does not fit now is kept by its worker (DEFER) and lands once
    # finished jobs expire (retention 1 s here) and a snapshot drops the log entries that held
    # their values: no attempt is charged, no commit fails.
    toml = DEFAULT_TOML.replace("[broker]\n", '[broker]\nmax_size = "16MiB"\nmap_size = "16MiB"\n'
                                "snapshot_interval = \"1s\"\nsnapshot_entries = 20\n")
    toml += '\n[workflows.email]\nbackoff = "50ms"\nretention = "1s"\n'
    cluster = cluster_factory(toml)
    broker = cluster.start_broker()
    client = cluster.client(timeout=60)
    ids = client.enqueue_many("big-value", [{"n": 1 << 20} for _ in range(20)], group="email")
    cluster.start_worker("email", 4)

    def completed() -> int:
        try:
            return int(client.stats()["email"]["completed"])
        except StorageFull:  # a pass whose commit met the cap anyway (LMDB pages a snapshot still reads)
            return 0         # is redone from the workers' re-sends; this answer was part of it

    wait_for(lambda: completed() == 20, timeout=90, what="all 20 results stored")
    stats = client.stats()["email"]
    assert stats["dead"] == 0 and stats["failed"] == 0  # nothing charged for the broker's shortage
    assert "not stored yet" in broker.output()  # some of them did wait for room
    assert cluster.tmp.joinpath("data").exists() and len(ids) == 20
    cluster.stop_and_verify()


def test_a_result_that_can_never_fit_fails_its_attempt_with_a_clear_error(cluster_factory) -> None:
    toml = DEFAULT_TOML.replace("[broker]\n", '[broker]\nmax_size = "16MiB"\nmap_size = "16MiB"\n'
                                "snapshot_interval = \"24h\"\nsnapshot_entries = 1000000000\n")
    cluster = cluster_factory(toml)
    cluster.start_broker()
    client = cluster.client(timeout=60)
    job = client.enqueue("big-value", {"n": 4 << 20}, group="email")
    cluster.start_worker("email", 1)
    result = client.wait(job, timeout=60)
    assert result.status == "dead" and result.error_kind == "storage_full"
    assert "can never fit under max_size 16 MiB" in result.error
    cluster.stop_and_verify()
