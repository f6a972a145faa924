"""A data directory written by the broker before core v2 opens, replays and serves on today's code.

The fixture (tests/fixtures/data-v1.tar.gz, made by tests/fixtures/make_data_v1.py at the commit
named in tests/fixtures/README.md) holds jobs in every state: completed with results, dead,
pending in a group nobody served, scheduled an hour ahead, one holding a dedup key, one with
stored steps, and a cron mark. Nothing here may change when the core or the store is rebuilt.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest

from conftest import DEFAULT_TOML
from shoal.broker.storage.store import SCHEMA_VERSION
from shoal.ids import id_from_str

pytestmark = pytest.mark.timeout(90)

FIXTURE = Path(__file__).parent / "fixtures" / "data-v1.tar.gz"
# retention for what the new broker finishes here (the fixture's own jobs carry their expiry,
# stored when they finished: see test_the_fixture_outlives_its_retention)
TOML = DEFAULT_TOML.replace("[workflows]\n", '[workflows]\nretention = "36500d"\n') + (
    '\n[cron.tick]\nworkflow = "cron-mark"\nschedule = "* * * * * *"\ncatch_up = "none"\n')


def _unpack(tmp: Path) -> dict[str, Any]:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp, filter="data")
    return json.loads((tmp / "expect.json").read_text())


@pytest.fixture
def old(cluster_factory: Any, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    expect = _unpack(tmp_path)
    return cluster_factory(TOML), expect


def test_the_old_log_rebuilds_exactly_the_old_state(old: tuple[Any, dict[str, Any]]) -> None:
    cluster, _ = old
    verified = cluster.replay("--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_fixture_outlives_its_retention(tmp_path: Path) -> None:
    """Each finished job stores its expiry; one inside this century would make the tests below fail
    on the day it passes (the first fixture, made with the default retention of a day, did)."""
    expect = _unpack(tmp_path)
    env = lmdb.open(str(tmp_path / "data"), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            jobs = env.open_db(b"jobs", txn=txn)
            records = [msgpack.unpackb(txn.get(id_from_str(job_id), db=jobs))
                       for job_id in [*expect["completed"], *expect["dead"], expect["steps"]]]
    finally:
        env.close()
    year_2100_ms = 4_102_444_800_000
    # 0: never swept (dead letters wait for a requeue)
    assert all(record["expire_ms"] == 0 or record["expire_ms"] > year_2100_ms for record in records), (
        [r["expire_ms"] for r in records])
    assert any(record["expire_ms"] for record in records)  # the completed ones do expire, a century on


def test_every_old_job_is_there_in_its_state(old: tuple[Any, dict[str, Any]]) -> None:
    cluster, expect = old
    cluster.start_broker()
    client = cluster.client()
    for job_id in expect["completed"]:
        result = client.get(job_id)
        assert result is not None and result.status == "completed" and result.value["group"] == "email"
    dead = {r.id for r in client.dead_letters()}
    assert set(expect["dead"]) <= dead
    for job_id in expect["pending"]:
        assert client.get(job_id).status == "pending"
    assert client.get(expect["scheduled"]).status in ("scheduled", "pending")  # pending once its hour is past
    steps = {s.name: s.status for s in client.steps(expect["steps"])}
    assert steps == {"before": "done", "nap": "done", "after": "done"}
    assert client.get(expect["steps"]).status == "completed"
    # the key is still held by the old job: a new enqueue with it is that job
    again = client.enqueue("media-echo", {"k": 2}, key=expect["key"])
    assert str(again) == expect["keyed"] and again.deduplicated
    assert any(e["name"] == "tick" and e.get("last_ms") for e in client.cron())


def test_old_jobs_run_to_completion_and_dead_ones_requeue(old: tuple[Any, dict[str, Any]]) -> None:
    cluster, expect = old
    cluster.start_broker()
    cluster.start_worker("media")
    cluster.start_worker("email")
    client = cluster.client()
    for job_id in [*expect["pending"], expect["keyed"]]:
        assert client.wait(job_id, timeout=30).status == "completed"
    permanent = expect["dead"][1]
    assert client.requeue(permanent)
    before = client.get(permanent).finished_ms
    again = client.wait(permanent, timeout=30)  # it ran once more on the new code and failed for good again
    assert again.status == "dead" and again.error_kind == "permanent" and again.finished_ms > before
    fresh = client.enqueue("echo", {"new": True})
    assert client.wait(fresh, timeout=30).value["payload"] == {"new": True}
    verified = cluster.stop_and_verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # schema 2 from the first writable open; what the old broker stored stays a map until it
    # changes, what this one writes is a row: both read alike (replay --verify above compared them)
    env = lmdb.open(str(cluster.data), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            assert msgpack.unpackb(txn.get(b"schema", db=env.open_db(b"meta", txn=txn))) == SCHEMA_VERSION == 2
            jobs = env.open_db(b"jobs", txn=txn)
            assert isinstance(msgpack.unpackb(txn.get(id_from_str(str(fresh)), db=jobs)), list)
            assert isinstance(msgpack.unpackb(txn.get(id_from_str(expect["completed"][0]), db=jobs)), dict)
    finally:
        env.close()
