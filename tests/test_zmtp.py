"""shoal.zmtp: the client's own ZMTP DEALER against libzmq's real ROUTER (the broker's socket kind),
on loopback and ipc; plus the peers that are not a plain ROUTER (CURVE, not ZMTP, a lying frame)."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from shoal.sockets import recv_frames, send_frames
from shoal.zmtp import ZmtpDealer, address

WAIT_S = 10.0


class Routers:
    """libzmq ROUTERs made by a test, all closed when it ends."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.sockets: list[zmq.Socket] = []

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)
        self.context.term()


@pytest.fixture
def ctx() -> Iterator[Routers]:
    routers = Routers()
    try:
        yield routers
    finally:
        routers.close()


def router(ctx: Routers, endpoint: str = "tcp://127.0.0.1:*", **options: int) -> tuple[zmq.Socket, str]:
    sock = ctx.context.socket(zmq.ROUTER)
    ctx.sockets.append(sock)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.bind(endpoint)
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def echo_once(sock: zmq.Socket) -> list[bytes]:
    """Receive one message on the ROUTER and send it back to its sender; the frames it carried."""
    assert sock.poll(int(WAIT_S * 1000))
    identity, *frames = recv_frames(sock)
    send_frames(sock, frames, to=identity)
    return frames


def reply(dealer: ZmtpDealer) -> list[bytes]:
    assert dealer.wait(WAIT_S), "no reply"
    got = dealer.recv()
    assert got is not None
    return got


def echoed(dealer: ZmtpDealer, server: zmq.Socket, frames: list[bytes]) -> None:
    """Send ``frames``: the ROUTER gets exactly these (and a sender identity), and its echo comes back whole."""
    assert dealer.send(frames, WAIT_S)
    assert echo_once(server) == frames
    assert reply(dealer) == frames


# What a ZMTP 3.1 server says first: its greeting (NULL, as-server) and READY
SERVER_HELLO = (b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 1]) + b"NULL".ljust(20, b"\x00") + b"\x01" + b"\x00" * 31
                + bytes([4, 6]) + b"\x05READY")


@pytest.mark.parametrize("frames", [
    [b"\x01", b"ENQUEUE", b"x" * 80],          # short frames, as most requests are
    [b"\x01", b"", b"y" * 300],                # an empty frame and a long one (8-byte size)
    [b"z" * 200_000],                          # larger than one recv of the kernel's buffer
    [b"a", b"b" * 255, b"c" * 256, b"d"],      # either side of the one-byte size
])
def test_messages_go_and_come_back_whole(ctx: Routers, frames: list[bytes]) -> None:
    server, endpoint = router(ctx)
    dealer = ZmtpDealer(endpoint)
    try:
        echoed(dealer, server, frames)
        assert dealer.recv() is None
    finally:
        dealer.close()


def test_many_replies_in_one_read_are_split_into_messages(ctx: Routers) -> None:
    server, endpoint = router(ctx)
    dealer = ZmtpDealer(endpoint)
    try:
        assert dealer.send([b"hello"], WAIT_S)
        assert server.poll(int(WAIT_S * 1000))
        identity = recv_frames(server)[0]
        for i in range(50):
            send_frames(server, [b"%d" % i, b"x" * i], to=identity)
        got: list[list[bytes]] = []
        while len(got) < 50:
            assert dealer.wait(WAIT_S)
            while (message := dealer.recv()) is not None:
                got.append(message)
        assert got == [[b"%d" % i, b"x" * i] for i in range(50)]
    finally:
        dealer.close()


def test_ipc_endpoints_work_as_tcp_does(ctx: Routers, tmp_path: Path) -> None:
    server, endpoint = router(ctx, f"ipc://{tmp_path}/broker.sock")
    dealer = ZmtpDealer(endpoint)
    try:
        echoed(dealer, server, [b"over", b"ipc"])
    finally:
        dealer.close()


def test_a_send_while_nobody_listens_is_dropped_and_the_next_one_connects(ctx: Routers) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a port with nobody on it, for now
    dealer = ZmtpDealer(f"tcp://127.0.0.1:{port}")
    try:
        assert not dealer.send([b"lost"], 1.0)  # refused: dropped, as libzmq drops what it cannot queue
        assert not dealer.connected
        assert not dealer.wait(0.01)
        server, _ = router(ctx, f"tcp://127.0.0.1:{port}")
        echoed(dealer, server, [b"found"])
    finally:
        dealer.close()


def test_a_broker_that_goes_away_is_reconnected_on_the_next_send(ctx: Routers) -> None:
    server, endpoint = router(ctx)
    dealer = ZmtpDealer(endpoint)
    try:
        echoed(dealer, server, [b"one"])
        server.close(0)  # the broker stops: our end reads EOF
        assert not dealer.wait(WAIT_S) or dealer.recv() is None
        while dealer.connected:  # the EOF may come on a later wait
            dealer.wait(0.05)
        again, _ = router(ctx, endpoint)  # and comes back on the same port
        echoed(dealer, again, [b"two"])
    finally:
        dealer.close()


def test_heartbeat_pings_are_answered_so_the_router_keeps_us(ctx: Routers) -> None:
    server, endpoint = router(ctx, HEARTBEAT_IVL=20, HEARTBEAT_TIMEOUT=100)
    monitor = server.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    dealer = ZmtpDealer(endpoint)
    try:
        assert dealer.send([b"first"], WAIT_S)
        identity = recv_frames(server)[0] if server.poll(int(WAIT_S * 1000)) else b""
        for _ in range(10):  # about 25 of the ROUTER's pings, each answered within its timeout
            assert not dealer.wait(0.05)
        assert not monitor.poll(0), "the ROUTER dropped us for not answering its PINGs"
        send_frames(server, [b"still", b"here"], to=identity)
        assert reply(dealer) == [b"still", b"here"]
    finally:
        dealer.close()
        server.disable_monitor()
        monitor.close(0)


def test_a_curve_broker_is_refused_with_the_reason(ctx: Routers) -> None:
    public, secret = zmq.curve_keypair()
    server, endpoint = router(ctx, CURVE_SERVER=1)
    server.setsockopt(zmq.CURVE_SECRETKEY, secret)
    dealer = ZmtpDealer(endpoint)
    try:
        assert not dealer.send([b"hi"], WAIT_S)
        # libzmq closes without a word when the mechanisms differ; the reason names what to do
        assert dealer.refused == (f"the broker at {endpoint} closed the connection during the handshake, as a "
                                  "broker with transport security on does to a client without CURVE keys (the "
                                  "client's key and broker_key)")
    finally:
        dealer.close()


def fake_broker(answer: bytes) -> tuple[socket.socket, str, threading.Thread]:
    """A TCP server that sends ``answer`` to the first connection, reads what comes, then closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT_S)
            conn.sendall(answer)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, f"tcp://127.0.0.1:{listener.getsockname()[1]}", thread


def test_a_server_that_is_not_zmtp_is_refused_not_crashed_on() -> None:
    listener, endpoint, thread = fake_broker(b"HTTP/1.1 400 Bad Request\r\n" + b"x" * 100 + b"\r\n\r\n")
    dealer = ZmtpDealer(endpoint)
    try:
        assert not dealer.send([b"hi"], WAIT_S)
        assert dealer.refused == f"{endpoint} does not speak ZMTP 3"
    finally:
        dealer.close()
        listener.close()
        thread.join(WAIT_S)


def test_a_frame_size_past_the_limit_ends_the_connection() -> None:
    lie = bytes([2]) + (1 << 62).to_bytes(8, "big")  # a frame of 4 EiB, says the header
    listener, endpoint, thread = fake_broker(SERVER_HELLO + lie)
    dealer = ZmtpDealer(endpoint)
    try:
        assert not dealer.send([b"hi"], WAIT_S)  # the lie came right after READY: dropped before a byte is sent
        assert not dealer.connected and dealer.recv() is None
    finally:
        dealer.close()
        listener.close()
        thread.join(WAIT_S)


@pytest.mark.parametrize("endpoint, expected", [
    ("tcp://127.0.0.1:5555", ("127.0.0.1", 5555)),
    ("tcp://localhost:5555", ("localhost", 5555)),
    ("tcp://[::1]:5555", ("::1", 5555)),
    ("ipc:///tmp/shoal.sock", "/tmp/shoal.sock"),
    ("ipc://@shoal", "\0shoal"),                 # Linux's abstract namespace, as libzmq spells it
    ("tcp://*:5555", None),                   # a bind address, not one to connect to
    ("tcp://eth0;10.0.0.1:5555", None),       # libzmq's source-address syntax: left to libzmq
    ("tcp://127.0.0.1", None),
    ("inproc://broker", None),
])
def test_endpoints_it_speaks_to_and_those_it_leaves_to_libzmq(endpoint: str, expected: object) -> None:
    assert address(endpoint) == expected


def test_a_message_in_the_same_read_as_ready_is_kept() -> None:
    listener, endpoint, thread = fake_broker(SERVER_HELLO + b"\x01\x02hi\x00\x05there")
    dealer = ZmtpDealer(endpoint)
    try:
        assert dealer.send([b"hello"], WAIT_S)
        assert reply(dealer) == [b"hi", b"there"]
    finally:
        dealer.close()
        listener.close()
        thread.join(WAIT_S)


def test_a_message_the_broker_does_not_take_in_time_is_dropped_with_its_connection() -> None:
    """Past the kernel's buffers the rest of a message waits for the peer to read, up to the send's
    timeout; a message cut short leaves the stream unusable, so the connection goes with it."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:  # the handshake, then it reads nothing until the test ends
        conn, _ = listener.accept()
        with conn:
            conn.sendall(SERVER_HELLO)
            done.wait(WAIT_S)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    dealer = ZmtpDealer(f"tcp://127.0.0.1:{listener.getsockname()[1]}")
    try:
        assert not dealer.send([b"x" * (64 << 20)], 0.2)
        assert not dealer.connected
    finally:
        done.set()
        dealer.close()
        listener.close()
        thread.join(WAIT_S)


class SlowResolver:
    """``socket.getaddrinfo`` for one made-up name, answering (this loopback ROUTER's address, or
    ``error``) only once the test lets it: a resolver that hangs as long as the test wants."""

    def __init__(self, port: int, error: OSError | None = None) -> None:
        self.port, self.error = port, error
        self.released = threading.Event()
        self.lookups = 0
        self.real = socket.getaddrinfo

    def __call__(self, host: str, port: int, *args: object, **kwargs: object) -> list:
        if host != "broker.test":
            return self.real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        self.lookups += 1
        assert self.released.wait(WAIT_S), "the test never let the lookup answer"
        if self.error is not None:
            raise self.error
        return self.real("127.0.0.1", self.port, type=socket.SOCK_STREAM)


def test_a_name_lookup_that_hangs_holds_no_send_past_its_timeout(ctx: Routers, monkeypatch) -> None:
    server, endpoint = router(ctx)
    resolver = SlowResolver(int(endpoint.rsplit(":", 1)[1]))
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    dealer = ZmtpDealer(f"tcp://broker.test:{resolver.port}")
    try:
        assert not dealer.send([b"early"], 0.05)  # returned while the lookup still hangs
        assert dealer.refused == "broker.test was not resolved in time (the name lookup goes on)"
        assert not dealer.send([b"early"], 0.05) and resolver.lookups == 1  # waits on the same lookup
        resolver.released.set()
        echoed(dealer, server, [b"after", b"the lookup"])
        assert dealer.refused is None and resolver.lookups == 1
    finally:
        resolver.released.set()
        dealer.close()


def test_a_name_that_cannot_be_resolved_is_said_so(monkeypatch) -> None:
    resolver = SlowResolver(5555, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    resolver.released.set()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    dealer = ZmtpDealer("tcp://broker.test:5555")
    try:
        assert not dealer.send([b"x"], WAIT_S)
        assert dealer.refused == "broker.test could not be resolved: [Errno -2] Name or service not known"
    finally:
        dealer.close()
