"""Bad input from peers and callers, against real processes.

A malformed message gets an ERROR reply that names the problem and the broker keeps
serving; a caller's mistake (unencodable payload, unknown workflow, unencodable result)
ends in a clear error, never a hang or a crash.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
import zmq

from shoal import BrokerUnreachable, Client, PayloadError, ShoalError
from shoal import protocol as P
from shoal.ids import new_job_id

from conftest import DEFAULT_TOML, Cluster, wait_for

LIMIT = 65536
LIMITED_TOML = DEFAULT_TOML.replace("[broker]\n", f"[broker]\nmax_message_bytes = {LIMIT}\n", 1)


class RawPeer:
    """A bare DEALER socket that sends whatever frames a test gives it."""

    def __init__(self, ctx: zmq.Context, cluster: Cluster) -> None:
        self.cluster = cluster
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(cluster.endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def receive(self, timeout: float = 5.0) -> tuple[bytes, dict[str, Any]]:
        """The next message from the broker; fails fast if the broker process died."""
        def ready() -> bool:
            broker = self.cluster.broker
            if broker is not None and not broker.alive():
                pytest.fail(f"the broker died:\n{broker.output()[-3000:]}")
            return bool(self.sock.poll(50))

        wait_for(ready, timeout, what="a reply from the broker")
        return P.decode(self.sock.recv_multipart())

    def error_for(self, frames: list[bytes]) -> dict[str, Any]:
        """Send ``frames``; the body of the ERROR the broker answers with."""
        self.send(frames)
        command, body = self.receive()
        assert command == P.ERROR, (command, body)
        return body


RawFactory = Callable[[Cluster], RawPeer]


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A ZeroMQ context whose sockets are all closed when the test ends."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def raw(ctx: zmq.Context) -> RawFactory:
    """Make raw peers of a cluster's broker; they stay open until the test ends."""
    peers: list[RawPeer] = []

    def make(cluster: Cluster) -> RawPeer:
        peers.append(RawPeer(ctx, cluster))
        return peers[-1]

    return make


@pytest.fixture
def limited(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """A running broker whose message size limit is small."""
    c = cluster_factory(toml=LIMITED_TOML)
    c.start_broker()
    return c


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats_ok(cluster: Cluster) -> bool:
    return isinstance(cluster.client().stats(), dict)


# --- malformed frames on a raw socket -------------------------------------------------------
def test_wrong_version_gets_an_error_naming_the_version(cluster: Cluster, raw: RawFactory) -> None:
    err = raw(cluster).error_for([b"SHOAL9", P.STATS, P.pack({"rid": 1})])
    assert err["code"] == P.E_PROTOCOL
    assert "unknown protocol version" in err["message"] and "SHOAL9" in err["message"]
    assert stats_ok(cluster)


def test_unknown_command_gets_an_error_naming_the_command(cluster: Cluster, raw: RawFactory) -> None:
    err = raw(cluster).error_for([P.VERSION, b"SELFDESTRUCT", P.pack({"rid": 1})])
    assert err["code"] == P.E_PROTOCOL
    assert "unknown command" in err["message"] and "SELFDESTRUCT" in err["message"]
    assert stats_ok(cluster)


def test_garbage_msgpack_gets_an_error_naming_the_body(cluster: Cluster, raw: RawFactory) -> None:
    err = raw(cluster).error_for([P.VERSION, P.ENQUEUE, b"\xc1\xc1 not msgpack"])
    assert err["code"] == P.E_PROTOCOL
    assert "malformed msgpack body for ENQUEUE" in err["message"]
    assert stats_ok(cluster)


def test_two_frames_get_an_error_naming_the_frame_count(cluster: Cluster, raw: RawFactory) -> None:
    err = raw(cluster).error_for([P.VERSION, P.STATS])
    assert err["code"] == P.E_PROTOCOL
    assert "expected 3 frames" in err["message"] and "got 2" in err["message"]
    assert stats_ok(cluster)


def test_a_field_of_the_wrong_type_gets_a_bad_request_echoing_the_rid(cluster: Cluster,
                                                                      raw: RawFactory) -> None:
    err = raw(cluster).error_for(P.encode(P.ENQUEUE, {"rid": 41, "jobs": "not a list"}))
    assert err["code"] == P.E_BAD_REQUEST
    assert err["rid"] == 41
    assert "field 'jobs' must be list" in err["message"]


def test_a_body_over_the_limit_gets_too_large_naming_the_limit(limited: Cluster, raw: RawFactory) -> None:
    body = P.pack({"rid": 1, "jobs": [{"id": new_job_id(), "wf": "echo", "payload": b"x" * (LIMIT + 10)}]})
    err = raw(limited).error_for([P.VERSION, P.ENQUEUE, body])
    assert err["code"] == P.E_TOO_LARGE
    assert f"limit of {LIMIT} bytes" in err["message"] and f"{len(body)} bytes" in err["message"]
    assert limited.client().stats().get("email", {}).get("pending", 0) == 0


def test_client_enqueue_over_the_brokers_limit_raises_an_error_naming_the_limit(limited: Cluster) -> None:
    client = limited.client(timeout=3.0)
    with pytest.raises(ShoalError) as info:
        client.enqueue("echo", b"x" * (LIMIT + 10), group="email")
    assert not isinstance(info.value, TimeoutError), info.value
    assert str(LIMIT) in str(info.value)


def test_get_with_an_empty_id_is_answered_and_the_broker_keeps_serving(cluster: Cluster,
                                                                       raw: RawFactory) -> None:
    peer = raw(cluster)
    peer.send(P.encode(P.GET, {"rid": 5, "ids": [b""]}))
    _, body = peer.receive()
    assert body["rid"] == 5
    assert stats_ok(cluster)


def test_hello_with_a_workflow_name_that_is_not_text_is_refused_and_the_broker_keeps_serving(
        cluster: Cluster, raw: RawFactory) -> None:
    peer = raw(cluster)
    err = peer.error_for(P.encode(P.HELLO, {"group": "email", "pid": 1, "host": "x", "slots": 1,
                                            "workflows": {7: {}}}))
    assert err["code"] == P.E_BAD_REQUEST
    assert stats_ok(cluster)


# --- noise on the TCP port ---------------------------------------------------------------------
def test_random_bytes_on_the_tcp_port_leave_the_broker_serving(cluster: Cluster) -> None:
    url = urlsplit(cluster.endpoint)
    for _ in range(5):
        with socket.create_connection((url.hostname, url.port), timeout=5) as s:
            for _ in range(4):
                try:
                    s.sendall(os.urandom(16_384))
                except (BrokenPipeError, ConnectionResetError):
                    break   # zmq hung up on the bad greeting: that is fine
    assert cluster.broker is not None and cluster.broker.alive()
    cluster.start_worker("email", 2)
    client = cluster.client()
    result = client.wait(client.enqueue("echo", {"after": "noise"}, group="email"), timeout=20)
    assert result.status == "completed"
    assert result.value["payload"] == {"after": "noise"}


def test_a_normal_job_succeeds_after_every_kind_of_bad_frame(cluster: Cluster, raw: RawFactory) -> None:
    peer = raw(cluster)
    bad = [[b"SHOAL9", P.STATS, P.pack({})], [P.VERSION, b"NOPE", P.pack({})], [P.VERSION, P.ENQUEUE, b"\xc1"],
           [P.VERSION, P.STATS], [P.VERSION, P.ENQUEUE, P.pack([1, 2])], P.encode(P.DONE, {"results": [1]})]
    for frames in bad:
        peer.send(frames)
    replies = [peer.receive()[0] for _ in range(len(bad))]
    # one ERROR each: a malformed DONE is refused before the broker looks at who sent it
    assert replies == [P.ERROR] * len(bad)
    cluster.start_worker("email", 2)
    client = cluster.client()
    result = client.wait(client.enqueue("echo", {"n": 1}, group="email"), timeout=20)
    assert result.status == "completed"


# --- the caller's mistakes ---------------------------------------------------------------------
def test_unreachable_broker_raises_broker_unreachable_naming_the_endpoint() -> None:
    endpoint = f"tcp://127.0.0.1:{closed_port()}"
    client = Client(endpoint, timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnreachable) as info:
            client.enqueue("echo", {"x": 1})
        assert time.monotonic() - started < 5
    finally:
        client.close()
    assert isinstance(info.value, TimeoutError)
    assert endpoint in str(info.value)


def test_unencodable_payload_raises_payload_error_before_anything_is_sent(ctx: zmq.Context) -> None:
    fake_broker = ctx.socket(zmq.ROUTER)
    fake_broker.setsockopt(zmq.LINGER, 0)
    port = fake_broker.bind_to_random_port("tcp://127.0.0.1")
    client = Client(f"tcp://127.0.0.1:{port}", timeout=10)
    try:
        with pytest.raises(PayloadError, match="object"):
            client.enqueue("echo", object())
        # the first thing the broker ever receives is the next, valid enqueue
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.enqueue, "echo", {"fine": True})
            assert fake_broker.poll(5000), "the valid enqueue never arrived"
            identity, *frames = fake_broker.recv_multipart()
            command, body = P.decode(frames)
            assert command == P.ENQUEUE
            assert [P.unpack(job["payload"]) for job in body["jobs"]] == [{"fine": True}]
            fake_broker.send_multipart([identity, *P.encode(P.REPLY, {"rid": body["rid"], "existed": [False]})])
            assert isinstance(pending.result(timeout=5), str)
    finally:
        client.close()
        fake_broker.close(0)


def test_payload_over_the_clients_limit_raises_payload_error_naming_the_limit(cluster: Cluster) -> None:
    client = Client(cluster.endpoint, timeout=5, max_message_bytes=1000)
    try:
        with pytest.raises(PayloadError, match="limit of 1000 bytes"):
            client.enqueue("echo", b"x" * 2000, group="email")
    finally:
        client.close()
    assert cluster.client().stats().get("email", {}).get("pending", 0) == 0


def test_unknown_workflow_for_a_group_with_a_worker_ends_dead_naming_workflow_and_group(cluster: Cluster) -> None:
    cluster.start_worker("email", 2)
    client = cluster.client()
    result = client.wait(client.enqueue("nope", {"x": 1}, group="email"), timeout=20)
    assert result.status == "dead"
    assert result.error_kind == "unknown_workflow"
    assert "'nope'" in (result.error or "") and "'email'" in (result.error or "")
    assert result.attempts == 1


def test_result_msgpack_cannot_encode_ends_dead_as_bad_result(cluster: Cluster) -> None:
    cluster.start_worker("email", 2)
    client = cluster.client()
    result = client.wait(client.enqueue("unencodable", None, group="email"), timeout=20)
    assert result.status == "dead"
    assert result.error_kind == "bad_result"
    assert "object" in (result.error or "")
    assert result.attempts == 1
