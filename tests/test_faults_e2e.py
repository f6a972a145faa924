"""Faults between real processes: peers that stop reading, a HELLO with a JOB on the wire."""
from __future__ import annotations

import pytest
import zmq

from shoal import protocol as P
from shoal.ids import new_job_id

from conftest import Cluster, wait_for


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)
def test_a_client_that_never_reads_its_replies_cannot_grow_the_broker(cluster: Cluster) -> None:
    client = cluster.client()
    pending = client.enqueue("echo", {"n": 1}, group="email")   # no worker: stays pending
    assert cluster.broker is not None
    rss_before = rss_mb(cluster.broker.pid)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.connect(cluster.endpoint)
    try:
        raw_pending = bytes.fromhex(pending.replace("-", ""))
        for rid in range(50_000):  # never read: half wait on a pending job, half ask for an unknown one
            target = raw_pending if rid % 2 else new_job_id()
            sock.send_multipart(P.encode(P.WAIT, {"rid": rid, "id": target}))
        wait_for(lambda: _dropped(cluster) > 0, timeout=60, what="the broker to drop replies nobody reads")
        assert rss_mb(cluster.broker.pid) - rss_before < 100  # it was +478 MiB before the send limit
    finally:
        sock.close(0)
    cluster.start_worker("email", 2)
    assert client.wait(pending, timeout=30).status == "completed"  # the broker serves everyone else


def _dropped(cluster: Cluster) -> int:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.endpoint)
    try:
        sock.send_multipart(P.encode(P.STATS, {"rid": 1}))
        assert sock.poll(10_000), "no STATS reply"
        _, body = P.decode(sock.recv_multipart())
        return int(body.get("replies_dropped", 0))
    finally:
        sock.close(0)
