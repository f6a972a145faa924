"""shoal.sockets: whole messages over real zmq sockets (inproc and tcp), as pyzmq's multipart calls give them."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from shoal.sockets import NOBLOCK, recv_frames, send_frames


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A ROUTER bound on loopback and a DEALER connected to it (the broker's and a client's sockets)."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        yield router, dealer
    finally:
        router.close()
        dealer.close()
        ctx.term()


def test_a_message_arrives_whole_and_as_pyzmq_would_give_it(pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = pair
    frames = [b"", b"ENQUEUE", b"x" * 100_000, b""]  # empty frames and a large one
    send_frames(dealer, frames)
    assert router.poll(10_000)
    got = recv_frames(router)
    assert got[1:] == frames and isinstance(got[0], bytes) and got[0]  # the ROUTER adds the sender's identity
    send_frames(dealer, frames)
    assert router.poll(10_000)
    assert router.recv_multipart() == got  # the same frames pyzmq's own call reads


def test_a_reply_routed_by_identity_and_a_one_frame_message(pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = pair
    send_frames(dealer, [b"hello"])
    assert router.poll(10_000)
    identity, body = recv_frames(router)
    assert body == b"hello"
    send_frames(router, [b"REPLY", b"body"], NOBLOCK, to=identity)
    assert dealer.poll(10_000)
    assert recv_frames(dealer) == [b"REPLY", b"body"]


def test_nothing_waiting_raises_again_and_consumes_nothing(pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = pair
    with pytest.raises(zmq.Again):
        recv_frames(router)
    send_frames(dealer, [b"a", b"b"])
    assert router.poll(10_000)
    assert recv_frames(router)[1:] == [b"a", b"b"]
    with pytest.raises(zmq.Again):
        recv_frames(router, NOBLOCK)


def test_a_router_send_to_a_gone_peer_fails_before_anything_is_queued(pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, _ = pair
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    with pytest.raises(zmq.ZMQError) as info:
        send_frames(router, [b"REPLY", b"body"], NOBLOCK, to=b"\x00nobody")
    assert info.value.errno == zmq.EHOSTUNREACH
