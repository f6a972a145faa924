"""A DEALER's end of ZMTP 3.1 with the NULL mechanism, on a plain socket that one thread owns.

A libzmq socket moves every message through its context's I/O thread: a send wakes that
thread, which writes to the TCP socket; a reply wakes it again, and it wakes the caller. On a
sequential request that is two thread wake-ups per direction, and on a 2-vCPU machine shared
with a broker and a worker each wake-up is paid in scheduling latency. Here the caller's own
thread writes the frames to the kernel socket and reads the reply from it. On the benchmark
VM a loopback round trip to a ROUTER that spins as the broker does is 90–97 µs p50 from a
libzmq DEALER and 51–52 µs from this one (``scripts/bench_zmtp.py --spin 0.0005``;
BENCHMARKS.md, "The client speaks ZMTP on its own thread").

The broker's side is libzmq's ROUTER, unchanged: this module speaks the wire protocol of
https://rfc.zeromq.org/spec/23/ (greeting, READY, frames) and nothing the broker does not
use. There is no CURVE here; a client with keys keeps its libzmq socket
(``client.connection``). Messages keep libzmq's DEALER semantics where the client relies on
them: a message is written whole or not at all, a send while the broker is away is dropped
(the client's re-send timer tries again, reconnecting first), and a lost connection is
reconnected on the next send.
"""
from __future__ import annotations

import ipaddress
import select
import socket
import struct
import threading
import time
from collections import deque
from typing import Any

_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 1]) + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
_READY = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
_MORE, _LONG, _COMMAND = 1, 2, 4
_PACK_LONG = struct.Struct(">Q").pack
_UNPACK_LONG = struct.Struct(">Q").unpack_from
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_RECV_BYTES = 1 << 16
_CLOSED = ("closed the connection during the handshake, as a broker with transport security on does to a "
           "client without CURVE keys (the client's key and broker_key)")
# A frame longer than this ends the connection (the broker never sends one; libzmq would
# refuse it by MAXMSGSIZE): a peer's length field cannot make us hold unbounded memory.
MAX_FRAME_BYTES = 1 << 30


class ZmtpError(Exception):
    """The peer broke the protocol, refused our mechanism, or the endpoint cannot be spoken to."""


class _Resolution:
    """A host name's addresses, looked up on a thread of its own: ``getaddrinfo`` takes no timeout,
    and a resolver that hangs must not hold a caller past its request's deadline (libzmq resolves
    on its I/O thread for the same reason). A lookup still running when the deadline passes is
    kept, and the next connect waits on it rather than starting another."""

    def __init__(self, host: str, port: int) -> None:
        self.done = threading.Event()
        self.addresses: list[tuple[int, tuple[Any, ...]]] = []
        self.error = ""
        threading.Thread(target=self._run, args=(host, port), name="shoal-resolve", daemon=True).start()

    def _run(self, host: str, port: int) -> None:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            self.addresses = [(family, sockaddr) for family, _, _, _, sockaddr in found]
        except OSError as exc:
            self.error = str(exc)
        finally:
            self.done.set()


def _literal(host: str) -> int | None:
    """The address family of an IP address written out (no lookup needed), None for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


def _dial(family: int, where: Any, deadline: float) -> socket.socket:
    """A stream socket of ``family`` connected to ``where`` by ``deadline``; closed again on failure."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.connect(where)
    except OSError:
        sock.close()
        raise
    return sock


def address(endpoint: str) -> str | tuple[str, int] | None:
    """Where to connect for a ``tcp://host:port`` (``(host, port)``) or ``ipc://path`` (the Unix
    socket's path) endpoint; None for anything else (libzmq's own syntaxes: a source address, ``inproc``)."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if not path or path == "*":
            return None
        return ("\0" + path[1:]) if path.startswith("@") else path
    if not endpoint.startswith("tcp://"):
        return None
    rest = endpoint[len("tcp://"):]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host or ";" in host or host == "*":
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 address
    return host, int(port)  # a name is resolved at connect, to any family


def _frames(parts: list[bytes]) -> bytes:
    """The wire bytes of one message: each part as a frame, all but the last flagged MORE."""
    out = []
    last = len(parts) - 1
    for i, part in enumerate(parts):
        flags = _MORE if i < last else 0
        n = len(part)
        out.append(bytes((flags, n)) if n < 256 else bytes((flags | _LONG,)) + _PACK_LONG(n))
        out.append(part)
    return b"".join(out)


class ZmtpDealer:
    """One connection to a ROUTER: ``send`` a message, ``wait`` for input, ``recv`` a message."""

    def __init__(self, endpoint: str) -> None:
        where = address(endpoint)
        if where is None:
            raise ZmtpError(f"{endpoint!r} is not a tcp://host:port or ipc://path endpoint")
        self.endpoint = endpoint
        self._addr = where
        self._sock: socket.socket | None = None
        self._poll = select.poll()
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._messages: deque[list[bytes]] = deque()
        self.refused: str | None = None  # why the broker refused the handshake, once it has
        self._resolving: _Resolution | None = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self, timeout_s: float) -> bool:
        """Connect now (a no-op when connected); False when the broker cannot be reached within
        ``timeout_s`` or refused the handshake (``refused`` then says why)."""
        return self._sock is not None or self._connect(timeout_s)

    def fileno(self) -> int | None:
        """The connection's descriptor, to poll with others (None while there is none)."""
        return self._sock.fileno() if self._sock is not None else None

    def send(self, parts: list[bytes], timeout_s: float, block: bool = False) -> bool:
        """Write one message (connecting first if need be, within ``timeout_s``); False if it
        could not be written whole, as a libzmq DEALER drops a message it cannot queue.
        ``block``: when the kernel's buffer is full, wait up to ``timeout_s`` for room instead."""
        return self._write(_frames(parts), timeout_s, block)

    def send_many(self, messages: list[list[bytes]], timeout_s: float) -> bool:
        """Write several messages in one write, in order (all of them or, as ``send``, none)."""
        return self._write(b"".join(_frames(parts) for parts in messages), timeout_s, False)

    def _write(self, data: bytes, timeout_s: float, block: bool) -> bool:
        if self._sock is None and not self._connect(timeout_s):
            return False
        assert self._sock is not None
        try:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                if not block:
                    return False  # nothing written: the kernel's buffer is full, the broker is not reading
                sent = 0
            if sent < len(data):
                self._send_rest(memoryview(data)[sent:], time.monotonic() + max(timeout_s, 0.001))
        except (OSError, ZmtpError):
            self._drop()  # a half-written message leaves the stream unusable: start again
            return False
        return True

    def _send_rest(self, rest: memoryview, deadline: float) -> None:
        assert self._sock is not None
        writable = select.poll()  # not select(): a process past 1,024 descriptors is a normal server
        writable.register(self._sock.fileno(), _POLLOUT)
        while rest:
            left = deadline - time.monotonic()
            if left <= 0 or not writable.poll(int(left * 1000) + 1):
                raise ZmtpError("the broker is not reading")
            try:
                rest = rest[self._sock.send(rest):]
            except BlockingIOError:
                continue

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` until a whole message can be ``recv``-ed."""
        if self._messages:
            return True
        return self._wait(timeout_s)

    def _wait(self, timeout_s: float) -> bool:
        # With no connection the poll has nothing to watch and only sleeps: nothing can
        # arrive, and the next send reconnects.
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            events = self._poll.poll(int(left * 1000) + 1 if left > 0 else 0)
            if events and self._sock is not None:
                self._read()
                if self._sock is None:  # the broker closed on us: say so now, the next send reconnects
                    return bool(self._messages)
            if not events or self._messages or time.monotonic() >= deadline:
                return bool(self._messages)

    def recv(self) -> list[bytes] | None:
        """The next whole message that ``wait`` took in, or None."""
        return self._messages.popleft() if self._messages else None

    def close(self) -> None:
        """Close the connection; what ``send`` wrote is the kernel's to deliver, so no linger is
        needed. Input not read yet is read first: closing on it would reset the connection,
        and a reset may discard the last message sent (a worker's BYE)."""
        if self._sock is not None:
            try:
                while self._sock.recv(_RECV_BYTES):
                    pass
            except OSError:
                pass
        self._drop()

    # --- the connection -------------------------------------------------------------------

    def _connect(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + max(timeout_s, 0.001)
        try:
            where = self._addr
            if isinstance(where, str):
                sock = _dial(socket.AF_UNIX, where, deadline)
            else:
                tcp = self._connect_tcp(where[0], where[1], deadline)
                if tcp is None:
                    return False
                tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = tcp
        except OSError:
            return False  # refused, unreachable or slow: dropped, as libzmq would while it reconnects
        try:
            self._handshake(sock, deadline)
        except (OSError, ZmtpError) as e:
            sock.close()
            if isinstance(e, ConnectionError):  # reset mid-handshake: as good as closed
                self.refused = f"the broker at {self.endpoint} {_CLOSED}"
            elif isinstance(e, ZmtpError):
                self.refused = str(e)
            return False
        sock.settimeout(0)
        self._sock = sock
        self.refused = None
        self._poll.register(sock.fileno(), _POLLIN)
        try:
            self._split()  # what came in the handshake's last read, after READY
        except ZmtpError:
            self._drop()
            return False
        return True

    def _connect_tcp(self, host: str, port: int, deadline: float) -> socket.socket | None:
        """A TCP connection to the first of the host's addresses that takes it, by ``deadline``;
        None when the name is not resolved by then or cannot be (``refused`` says which); the last
        address's ``OSError`` when none takes it."""
        family = _literal(host)
        if family is not None:
            addresses: list[tuple[int, tuple[Any, ...]]] = [(family, (host, port))]
        else:
            if self._resolving is None:
                self._resolving = _Resolution(host, port)
            if not self._resolving.done.wait(max(deadline - time.monotonic(), 0.0)):
                self.refused = f"{host} was not resolved in time (the name lookup goes on)"
                return None
            found, self._resolving = self._resolving, None
            if found.error:
                self.refused = f"{host} could not be resolved: {found.error}"
                return None
            addresses = found.addresses
        error: OSError | None = None
        for family, sockaddr in addresses:
            try:
                return _dial(family, sockaddr, deadline)
            except OSError as exc:
                error = exc
        if error is not None:
            raise error
        return None

    def _handshake(self, sock: socket.socket, deadline: float) -> None:
        """Greetings both ways, then READY both ways; what arrives after READY is kept."""
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(_GREETING + bytes((_COMMAND, len(_READY))) + _READY)
        buf = bytearray()
        while len(buf) < 64:
            buf += self._recv_some(sock, deadline)
            if len(buf) >= 11 and (buf[0] != 0xFF or buf[9] & 1 != 1 or buf[10] < 3):
                raise ZmtpError(f"{self.endpoint} does not speak ZMTP 3")
        mechanism = bytes(buf[12:32]).rstrip(b"\x00").decode("ascii", "replace")
        if mechanism != "NULL":
            raise ZmtpError(f"the broker at {self.endpoint} asks for {mechanism} (CURVE keys: the client's "
                            f"key and broker_key)")
        self._buf = buf[64:]
        while True:
            command = self._next_frame()
            if command is None:
                self._buf += self._recv_some(sock, deadline)
                continue
            body, flags = command
            if not flags & _COMMAND:
                raise ZmtpError(f"{self.endpoint} sent a message before READY")
            name = body[1:1 + body[0]] if body else b""
            if name == b"READY":
                return
            if name == b"ERROR":
                raise ZmtpError(f"the broker at {self.endpoint} refused the handshake: "
                                f"{body[8:].decode('utf-8', 'replace')}")

    def _recv_some(self, sock: socket.socket, deadline: float) -> bytes:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(_RECV_BYTES)
        if not chunk:
            raise ZmtpError(f"the broker at {self.endpoint} {_CLOSED}")
        return chunk

    def _drop(self) -> None:
        if self._sock is not None:
            self._poll.unregister(self._sock.fileno())  # registered whenever _sock is set
            self._sock.close()
            self._sock = None
        self._buf = bytearray()
        self._parts = []

    # --- reading --------------------------------------------------------------------------

    def _read(self) -> None:
        """Take in what the kernel holds and split it into messages; EOF or a protocol error drops the connection."""
        assert self._sock is not None
        try:
            while True:
                chunk = self._sock.recv(_RECV_BYTES)
                if not chunk:
                    self._drop()
                    return
                self._buf += chunk
                if len(chunk) < _RECV_BYTES:
                    break
        except BlockingIOError:
            pass
        except OSError:
            self._drop()
            return
        try:
            self._split()
        except ZmtpError:
            self._drop()

    def _split(self) -> None:
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            body, flags = frame
            if flags & _COMMAND:
                self._command(body)
                continue
            self._parts.append(body)
            if not flags & _MORE:
                self._messages.append(self._parts)
                self._parts = []

    def _next_frame(self) -> tuple[bytes, int] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        flags = buf[0]
        if flags & _LONG:
            if len(buf) < 9:
                return None
            n = _UNPACK_LONG(buf, 1)[0]
            head = 9
            if n > MAX_FRAME_BYTES:
                raise ZmtpError(f"a frame of {n} bytes")
        else:
            n = buf[1]
            head = 2
        end = head + n
        if len(buf) < end:
            return None
        body = bytes(buf[head:end])
        del buf[:end]
        return body, flags

    def _command(self, body: bytes) -> None:
        """A command after the handshake: PING gets its PONG; ERROR ends the connection."""
        name = body[1:1 + body[0]] if body else b""
        if name == b"PING" and self._sock is not None:
            context = body[1 + 4 + 2:]  # after the name: a 2-byte TTL, then the context to echo
            pong = b"\x04PONG" + context
            try:
                self._sock.send(bytes((_COMMAND, len(pong))) + pong)
            except OSError:
                self._drop()
        elif name == b"ERROR":
            raise ZmtpError("the broker sent ERROR")
