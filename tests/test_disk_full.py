"""A disk that really fills up: the data directory on a small tmpfs (ENOSPC from the kernel,
not a configured cap). Needs the right to mount (root, as in CI and on this machine);
elsewhere these tests are skipped and say why."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DEFAULT_TOML, Cluster, wait_for
from shoal import Client, StorageFull

pytestmark = pytest.mark.timeout(180)

NO_SNAPSHOTS = '[broker]\nsnapshot_interval = "24h"\nsnapshot_entries = 1000000000\nmap_size = "256MiB"\n'


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """``tmp_path/data`` as a tmpfs of ``request.param`` MiB (default 48), unmounted afterwards."""
    size = getattr(request, "param", 48)
    data = tmp_path / "data"
    data.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(data)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a real full disk: {done.stderr.strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def fill(path: Path) -> int:
    """Write a ballast file at ``path`` until its filesystem has no byte left; its size."""
    written = 0
    with open(path, "ab", buffering=0) as fh:
        for block in (1 << 20, 64 << 10, 4 << 10):
            chunk = bytes(block)
            while True:
                try:
                    written += fh.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


def two_blocked_jobs(cluster: Cluster) -> tuple[Client, list[str]]:
    """Start the broker and a media worker running two ``block`` jobs (released by the file
    ``release``); the client and the two job ids."""
    cluster.start_broker()
    client = cluster.client(timeout=30)
    cluster.start_worker("media", 2)
    running = [client.enqueue("block", {"i": i}, group="media") for i in range(2)]
    wait_for(lambda: (cluster.tmp / "block.log").exists()
             and (cluster.tmp / "block.log").read_text().count("start") == 2, what="two jobs running")
    return client, running


def recover_and_finish(cluster: Cluster, client: Client, accepted: list[str]) -> None:
    """Space came back: an enqueue is accepted again (no restart), a worker finishes every
    acknowledged job and nothing else, and the data still is what its log rebuilds."""
    def accepted_again() -> bool:
        try:
            accepted.append(client.enqueue("sink", {"n": -1}, group="email"))
            return True
        except StorageFull:
            return False
    wait_for(accepted_again, what="enqueues accepted once there is room")
    cluster.start_worker("email", 8)
    assert all(client.wait(i, timeout=60).status == "completed" for i in accepted)
    assert client.stats()["email"]["completed"] == len(accepted)  # nothing refused was stored after all
    cluster.stop_and_verify()


def test_a_nearly_full_disk_refuses_enqueues_while_running_jobs_finish_and_recovers(small_disk, cluster_factory) -> None:
    cluster = cluster_factory(DEFAULT_TOML.replace("[broker]\n", NO_SNAPSHOTS + 'min_free_disk = "16MiB"\n'))
    ballast = small_disk / "ballast"
    with open(ballast, "wb") as fh:  # room that comes back when this file goes
        fh.write(bytes(12 << 20))
    client, running = two_blocked_jobs(cluster)

    accepted: list[str] = []
    with pytest.raises(StorageFull) as err:
        for n in range(10_000):
            accepted.append(client.enqueue("sink", {"n": n, "blob": "x" * 20_000}, group="email"))
    message = str(err.value)
    assert "storage full" in message and "min_free_disk" in message and str(small_disk) in message, message
    assert accepted, "the disk was full before anything was accepted"
    # reads still work, and nothing half-done: every accepted job is there, pending
    assert client.stats()["email"]["pending"] == len(accepted)
    assert client.get(accepted[-1]).status == "pending"
    storage = client.storage()  # what `shoal storage` shows: the room left, near the reserve
    assert storage["min_free_disk_bytes"] == 16 << 20 and storage["disk_room_bytes"] < 20 << 20, storage
    # the running jobs still finish and are stored
    (cluster.tmp / "release").write_text("go")
    assert [client.wait(i, timeout=30).status for i in running] == ["completed", "completed"]

    ballast.unlink()  # space comes back: enqueues are accepted again, no restart
    recover_and_finish(cluster, client, accepted)


@pytest.mark.parametrize("small_disk", [32], indirect=True)
def test_a_commit_that_hits_enospc_is_refused_whole_and_nothing_is_lost(small_disk, cluster_factory) -> None:
    # no reserve: the broker's own estimate lets the batch through and LMDB's write meets ENOSPC
    cluster = cluster_factory(DEFAULT_TOML.replace("[broker]\n", NO_SNAPSHOTS + 'min_free_disk = "0MiB"\n'))
    broker = cluster.start_broker()
    client = cluster.client(timeout=30)
    accepted = client.enqueue_many("sink", [{"n": n} for n in range(50)], group="email")
    ballast = small_disk / "ballast"
    hit_enospc = False
    for attempt in range(20):
        # Fill the disk behind the broker's back (its free-space reading is up to 1 s old),
        # then enqueue: the commit itself runs out of space.
        fill(ballast)
        batch = [{"n": attempt, "blob": "y" * 4_000} for _ in range(200)]
        try:
            accepted += client.enqueue_many("sink", batch, group="email")
        except StorageFull as exc:
            hit_enospc = "No space left" in str(exc)
            if hit_enospc:
                break  # the ballast stays: the disk is full now
        ballast.unlink()  # the broker measured first (or the batch fit): room again, try again
        wait_for(lambda: not client.storage()["refusing_enqueues"], what="room again")
    assert hit_enospc, "never reached a commit that ran out of space"
    assert "commit failed" in broker.output()
    assert broker.alive()
    # the broker keeps serving reads; what it acknowledged is all there
    assert client.stats()["email"]["pending"] == len(accepted)
    assert all(client.get(i) is not None for i in accepted[:50])

    ballast.unlink()  # space comes back
    recover_and_finish(cluster, client, accepted)


def test_a_broker_started_on_a_full_disk_refuses_enqueues_from_the_first(small_disk, cluster_factory) -> None:
    cluster = cluster_factory(DEFAULT_TOML.replace("[broker]\n", NO_SNAPSHOTS + 'min_free_disk = "8MiB"\n'))
    cluster.start_broker()
    client = cluster.client(timeout=30)
    done = client.enqueue("sink", {"n": 0}, group="email")
    cluster.broker.signal(signal.SIGTERM)
    cluster.broker.wait(30)
    ballast = small_disk / "ballast"
    fill(ballast)
    os.truncate(ballast, max(0, ballast.stat().st_size - (4 << 20)))  # 4 MiB free: under the reserve
    cluster.start_broker()
    with pytest.raises(StorageFull, match="min_free_disk"):
        client.enqueue("sink", {"n": 1}, group="email")
    assert client.get(done).status == "pending"
    ballast.unlink()
    wait_for(lambda: not client.storage()["refusing_enqueues"], what="room again")
    later = client.enqueue("sink", {"n": 2}, group="email")
    cluster.start_worker("email", 2)
    assert [client.wait(i, timeout=30).status for i in (done, later)] == ["completed", "completed"]


def test_results_that_cannot_be_stored_wait_on_the_worker_and_cost_no_attempt(small_disk, cluster_factory) -> None:
    cluster = cluster_factory(DEFAULT_TOML.replace("[broker]\n", NO_SNAPSHOTS + 'min_free_disk = "16MiB"\n'))
    client, running = two_blocked_jobs(cluster)
    ballast = small_disk / "ballast"
    fill(ballast)
    os.truncate(ballast, max(0, ballast.stat().st_size - (4 << 20)))  # 4 MiB free: under half the reserve
    wait_for(lambda: client.storage()["refusing_enqueues"], what="the broker to see the disk full")
    (cluster.tmp / "release").write_text("go")  # both finish now; their results cannot be stored
    wait_for(lambda: "not stored yet" in cluster.broker_output(), what="the results to be deferred")
    assert [client.get(i).status for i in running] == ["running", "running"]  # still theirs, nothing charged
    ballast.unlink()  # room again: the worker's re-sends land
    results = [client.wait(i, timeout=60) for i in running]
    assert [(r.status, r.attempts) for r in results] == [("completed", 1), ("completed", 1)]
    assert (cluster.tmp / "block.log").read_text().count("start") == 2  # no handler ran twice
    cluster.stop_and_verify()
