"""An enqueue that timed out may have been stored: the error says so and carries the ids,
and enqueueing again with the same ids returns the stored jobs, never a duplicate.

Real processes: the broker is frozen with SIGSTOP while the enqueue is on its way (the
request waits in the kernel's socket buffer and is committed after SIGCONT).
"""
from __future__ import annotations

import signal
from collections import Counter

import pytest

from shoal import BrokerUnreachable, Client, PayloadError

from conftest import Cluster, wait_for


def _runs(cluster: Cluster) -> Counter[str]:
    """How often each job ran: the ``record`` workflow appends its id (hex) per run."""
    path = cluster.tmp / "record.log"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def _frozen_enqueue(cluster: Cluster, client: Client, payloads: list[dict[str, int]]) -> BrokerUnreachable:
    """Enqueue while the broker is stopped; return the error (the broker is resumed after)."""
    assert cluster.broker is not None
    cluster.broker.signal(signal.SIGSTOP)
    try:
        with pytest.raises(BrokerUnreachable) as info:
            if len(payloads) == 1:
                client.enqueue("record", payloads[0], group="default")
            else:
                client.enqueue_many("record", payloads, group="default")
    finally:
        cluster.broker.signal(signal.SIGCONT)
    return info.value


def test_a_timed_out_enqueue_says_the_outcome_is_unknown_and_a_retry_with_its_id_runs_it_once(
        cluster: Cluster) -> None:
    client = Client(cluster.endpoint, timeout=0.5)
    try:
        client.stats()  # connected before the freeze, as a long-lived client would be
        error = _frozen_enqueue(cluster, client, [{"n": 1}])
        assert len(error.job_ids) == 1
        job_id = error.job_ids[0]
        assert "outcome is unknown" in str(error) and "may have been stored" in str(error)
        assert job_id in str(error) and cluster.endpoint in str(error)

        wait_for(lambda: client.get(job_id), what="the frozen enqueue to be committed after SIGCONT")
        again = client.enqueue("record", {"n": 1}, group="default", id=job_id)
        assert again == job_id and not again.deduplicated

        cluster.start_worker("default", 2)
        assert client.wait(job_id, timeout=20).status == "completed"
        assert client.stats()["default"]["completed"] == 1
        assert client.jobs() == []
    finally:
        client.close()
    assert _runs(cluster) == {bytes.fromhex(job_id.replace("-", "")).hex(): 1}


def test_enqueue_many_retried_with_its_ids_returns_the_same_jobs_and_runs_each_once(cluster: Cluster) -> None:
    client = Client(cluster.endpoint, timeout=0.5)
    try:
        client.stats()
        error = _frozen_enqueue(cluster, client, [{"n": n} for n in range(3)])
        assert len(error.job_ids) == 3 and len(set(error.job_ids)) == 3
        assert all(job_id in str(error) for job_id in error.job_ids)

        wait_for(lambda: all(client.get(i) for i in error.job_ids), what="the frozen batch to be committed")
        again = client.enqueue_many("record", [{"n": n} for n in range(3)], group="default", ids=error.job_ids)
        assert list(again) == error.job_ids

        cluster.start_worker("default", 2)
        for job_id in error.job_ids:
            assert client.wait(job_id, timeout=20).status == "completed"
        assert client.stats()["default"]["completed"] == 3
    finally:
        client.close()
    assert sorted(_runs(cluster).values()) == [1, 1, 1]


def test_an_id_given_to_enqueue_is_the_new_jobs_id(cluster: Cluster) -> None:
    client = cluster.client()
    first = client.enqueue("record", {"n": 1}, group="default")
    fresh = "01890000-0000-7000-8000-000000000001"
    made = client.enqueue("record", {"n": 2}, group="default", id=fresh)
    assert made == fresh and made != first
    assert client.get(fresh).status == "pending"


def test_ids_must_be_one_per_payload_and_real_job_ids(cluster: Cluster) -> None:
    client = cluster.client()
    with pytest.raises(PayloadError, match="2 ids given for 3 payloads"):
        client.enqueue_many("record", [1, 2, 3], group="default",
                            ids=["01890000-0000-7000-8000-000000000001", "01890000-0000-7000-8000-000000000002"])
    with pytest.raises(LookupError, match="not a job id"):
        client.enqueue("record", 1, group="default", id="job-7")
    assert client.stats().get("default", {}).get("pending", 0) == 0
