"""The write-ahead file: a batch is durable once its record is synced, before LMDB has it.

Each crash here is a real SIGKILL of a process that holds the store open (a fault point, or
the process killing itself after its last commit), then a real reopen of the directory.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import DEFAULT_TOML

from shoal.broker.storage.batch import Batch
from shoal.broker.storage.store import Store, _recover_if_stopped, _wal_pending
from shoal.broker.storage.wal import HEAD_BYTES, INITIAL_BYTES
from shoal.errors import StorageFull

pytestmark = pytest.mark.timeout(60)

# A child process: commits N one-job batches (N from argv), prints each id once its commit
# returned (the broker's ack comes at that point), checkpoints after the first K if asked,
# then dies by SIGKILL without closing anything.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from shoal.broker.storage.batch import Batch
    from shoal.broker.storage.store import Store
    path, n, checkpoint_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = Store(path, write_ahead=sys.argv[4] == "1")
    store.CHECKPOINT_S = 3600.0
    for i in range(n):
        b = Batch()
        job_id = i.to_bytes(16, "big")
        record = {"id": job_id, "wf": "noop", "group": "g", "status": "queued", "n": i}
        b.jobs[job_id] = record
        b.log.append(("enqueue", job_id, record))
        store.commit(b, 1_000 + i)
        print(job_id.hex(), flush=True)
        if i + 1 == checkpoint_after:
            store.checkpoint()
            print("checkpointed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


READER = textwrap.dedent("""
    import sys
    from shoal.broker.storage.store import Store
    store = Store(sys.argv[1], readonly=True)
    print(" ".join(r["id"].hex() for r in store.iter_jobs()))
    store.close()
""")


def run_child(path: Path, n: int, checkpoint_after: int = 0, fault: str = "", after: int = 0,
              write_ahead: bool = True) -> list[str]:
    env = dict(os.environ, SHOAL_FAULT=fault, SHOAL_FAULT_AFTER=str(after))
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(n), str(checkpoint_after),
                           "1" if write_ahead else "0"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == -9, done.stderr
    return [line for line in done.stdout.split() if line != "checkpointed"]


def one_job(store: Store, i: int, payload: bytes = b"") -> bytes:
    job_id = i.to_bytes(16, "big")
    record = {"id": job_id, "wf": "noop", "group": "g", "status": "queued", "n": i, "payload": payload}
    batch = Batch()
    batch.jobs[job_id] = record
    batch.log.append(("enqueue", job_id, record))
    store.commit(batch, 1_000 + i)
    return job_id


def stored(path: Path) -> tuple[set[str], list[int]]:
    """Job ids and log seqs of a directory, read as the next broker start reads them."""
    store = Store(str(path))
    try:
        return {r["id"].hex() for r in store.iter_jobs()}, [seq for seq, _ in store.iter_log()]
    finally:
        store.close()


def test_every_batch_acked_since_the_last_checkpoint_survives_a_kill(tmp_path: Path) -> None:
    acked = run_child(tmp_path / "d", 50)
    assert len(acked) == 50
    jobs, seqs = stored(tmp_path / "d")
    assert jobs == set(acked)
    assert seqs == list(range(1, 51))


def test_a_record_torn_by_the_crash_was_never_acked_and_is_not_applied(tmp_path: Path) -> None:
    acked = run_child(tmp_path / "d", 10, fault="wal_torn", after=6)
    assert len(acked) == 6  # the 7th died half written, before its commit returned
    jobs, seqs = stored(tmp_path / "d")
    assert jobs == set(acked)
    assert seqs == list(range(1, 7))


def test_a_kill_right_after_a_checkpoint_applies_nothing_twice(tmp_path: Path) -> None:
    acked = run_child(tmp_path / "d", 5, checkpoint_after=5, fault="after_checkpoint")
    assert len(acked) == 5
    jobs, seqs = stored(tmp_path / "d")
    assert jobs == set(acked) and seqs == [1, 2, 3, 4, 5]  # the file's records are of the old epoch


def test_records_of_an_older_epoch_after_the_new_ones_are_left_alone(tmp_path: Path) -> None:
    # 20 batches, a checkpoint, 3 more: the file holds 3 new records, then 17 of the old epoch
    acked = run_child(tmp_path / "d", 23, checkpoint_after=20)
    jobs, seqs = stored(tmp_path / "d")
    assert jobs == set(acked) and seqs == list(range(1, 24))


def test_the_loops_reads_see_uncommitted_batches_and_other_threads_the_checkpoint(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "d"))
    try:
        store.CHECKPOINT_S = 3600.0
        job_id = one_job(store, 1)
        assert store.get_job(job_id) is not None and store.has_jobs([job_id]) == {job_id}
        assert store.last_seq() == 1
        seen: list[object] = []
        reader = threading.Thread(target=lambda: seen.append(store.get_job(job_id)))
        reader.start()
        reader.join()
        assert seen == [None]  # LMDB has not committed it yet
        assert store.checkpoint_due(0.0) is False  # not yet due, the file not half full
        store.checkpoint()
        reader = threading.Thread(target=lambda: seen.append(store.get_job(job_id)))
        reader.start()
        reader.join()
        assert seen[1] is not None
    finally:
        store.close()


def test_a_full_map_grows_under_pending_batches_and_keeps_them_all(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "d"), map_size_mb=1)
    store.CHECKPOINT_S = 3600.0
    ids = [one_job(store, i, payload=bytes(2_000)) for i in range(1_500)]  # ~6 MiB: the 1 MiB map grows
    assert store.env.info()["map_size"] > 1 << 20
    assert store.has_jobs(ids) == set(ids)
    store.close()
    jobs, seqs = stored(tmp_path / "d")
    assert jobs == {i.hex() for i in ids} and seqs == list(range(1, 1_501))


def test_a_record_larger_than_the_file_grows_it(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "d"))
    try:
        job_id = one_job(store, 1, payload=bytes(INITIAL_BYTES + 1_000))
        assert os.path.getsize(tmp_path / "d" / "wal") >= 2 * INITIAL_BYTES
        assert store.get_job(job_id) is not None
    finally:
        store.close()
    assert stored(tmp_path / "d")[0] == {job_id.hex()}


def test_a_store_at_its_cap_refuses_the_batch_and_keeps_the_pending_ones(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "d"), map_size_mb=1)
    store.max_bytes = 1 << 20
    store.CHECKPOINT_S = 3600.0
    kept = []
    with pytest.raises(StorageFull):
        for i in range(2_000):
            kept.append(one_job(store, i, payload=bytes(2_000)))
    assert kept and store.has_jobs(kept) == set(kept)
    store.close()
    assert stored(tmp_path / "d")[0] == {i.hex() for i in kept}


def test_replay_of_a_killed_brokers_directory_applies_its_tail_first(tmp_path: Path) -> None:
    acked = run_child(tmp_path / "d", 8)
    store = Store(str(tmp_path / "d"), readonly=True)
    try:
        assert {r["id"].hex() for r in store.iter_jobs()} == set(acked)
    finally:
        store.close()


def test_beside_a_live_broker_a_reader_sees_its_last_checkpoint_and_writes_nothing(tmp_path: Path) -> None:
    live = Store(str(tmp_path / "d"))
    try:
        live.CHECKPOINT_S = 3600.0
        first = one_job(live, 1)
        live.checkpoint()
        one_job(live, 2)
        _recover_if_stopped(str(tmp_path / "d"))  # the lock is held: it must leave the file alone
        read = subprocess.run([sys.executable, "-c", READER, str(tmp_path / "d")],
                              capture_output=True, text=True, timeout=30)
        assert read.returncode == 0, read.stderr
        assert read.stdout.split() == [first.hex()]
        assert live.last_seq() == 2
    finally:
        live.close()
    assert len(stored(tmp_path / "d")[0]) == 2


def test_a_damaged_header_ends_the_read_there(tmp_path: Path) -> None:
    acked = run_child(tmp_path / "d", 4)
    wal = tmp_path / "d" / "wal"
    with open(wal, "r+b") as fh:  # the third record's length, made to point past the file
        offset = 0
        for _ in range(2):
            fh.seek(offset)
            offset += HEAD_BYTES + struct.unpack("<I", fh.read(4))[0]
        fh.seek(offset)
        fh.write(struct.pack("<I", 1 << 31))
    jobs, seqs = stored(tmp_path / "d")
    assert jobs == set(acked[:2]) and seqs == [1, 2]


def test_without_write_ahead_each_batch_is_its_own_lmdb_commit(tmp_path: Path) -> None:
    acked = run_child(tmp_path / "d", 20, write_ahead=False)
    assert not _wal_pending(str(tmp_path / "d"))  # nothing went through the file
    jobs, seqs = stored(tmp_path / "d")
    assert jobs == set(acked) and seqs == list(range(1, 21))


def test_reading_a_cleanly_stopped_directory_writes_nothing(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "d"))
    one_job(store, 1)
    store.close()
    assert not _wal_pending(str(tmp_path / "d"))
    before = {name: os.stat(tmp_path / "d" / name).st_mtime_ns for name in ("data.mdb", "wal")}
    read = subprocess.run([sys.executable, "-c", READER, str(tmp_path / "d")], capture_output=True, text=True,
                          timeout=30)
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == [(1).to_bytes(16, "big").hex()]
    assert {name: os.stat(tmp_path / "d" / name).st_mtime_ns for name in ("data.mdb", "wal")} == before


def test_a_broker_with_write_ahead_off_keeps_every_acked_job_through_a_sigkill(cluster_factory) -> None:
    cluster = cluster_factory(DEFAULT_TOML.replace("[broker]\n", "[broker]\nwrite_ahead = false\n"))
    broker = cluster.start_broker()
    client = cluster.client()
    ids = [client.enqueue("echo", {"n": n}, group="email") for n in range(20)]
    broker.signal(signal.SIGKILL)
    broker.wait()
    cluster.start_broker()
    cluster.start_worker("email", 4)
    client = cluster.client()
    assert all(client.wait(i, timeout=30).status == "completed" for i in ids)
    cluster.stop_and_verify()
