"""A whole message sent or received on a zmq socket, without pyzmq's per-frame extras.

Broker, worker and client send and receive every message here. pyzmq's ``Socket.send`` is a
Python wrapper (argument checks) around the backend's send, and its ``getsockopt`` (which
``recv_multipart`` asks once a frame for "more") turns the option into an enum each time. At
the sizes of Shoal's messages those extras cost about as much as the calls themselves: here a
four-frame message is received in 9.5 µs instead of 13.4 and sent in 2.4 instead of 4.9
(BENCHMARKS.md, "Sockets without pyzmq's wrappers"). So these call the backend's send, and
receive each frame as a ``zmq.Frame``, whose ``more`` the backend reads as it receives it.
Flags are plain ints, for the same reason.
"""
from __future__ import annotations

import errno
from typing import Any, Callable, cast

import zmq
from zmq.backend import Socket as _BackendSocket

from shoal.errors import CannotListen

MORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

_send = cast(Callable[..., Any], _BackendSocket.send)
_recv = cast(Callable[..., Any], _BackendSocket.recv)


def ipv6_ready(sock: zmq.Socket, endpoint: str) -> None:
    """Let ``sock`` bind or connect ``endpoint`` when its host is an IPv6 address (``tcp://[::1]:5555``).

    libzmq refuses those ("No such device") unless the socket has ``ZMQ_IPV6`` set. It is set
    for a bracketed address only, so host names and IPv4 addresses resolve as they always did
    (with the option on, libzmq asks the resolver for IPv6 addresses first)."""
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)


def connect(sock: zmq.Socket, endpoint: str) -> None:
    """``sock.connect(endpoint)``, IPv6 addresses included (``ipv6_ready``)."""
    ipv6_ready(sock, endpoint)
    sock.connect(endpoint)


_LISTEN_HINTS = {
    errno.EADDRINUSE: "another process holds that port",
    errno.EADDRNOTAVAIL: "that address is not one of this host's",
    errno.ENODEV: "that address is not one of this host's",
    errno.EACCES: "ports below 1024 need privileges",
}


def listen(sock: zmq.Socket, endpoint: str, what: str) -> str:
    """Bind ``sock`` to ``endpoint`` (IPv6 addresses included) and return the endpoint it got; a
    failure is a ``CannotListen`` that names the endpoint, ``what`` it is for and why, not a
    traceback."""
    ipv6_ready(sock, endpoint)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        code = exc.errno or 0
        hint = _LISTEN_HINTS.get(code)
        raise CannotListen(f"cannot listen on {endpoint} ({what}): {zmq.strerror(code) if code else exc}"
                           + (f": {hint}" if hint else "")) from None
    return cast(str, sock.getsockopt_string(zmq.LAST_ENDPOINT))


def send_frames(sock: zmq.Socket, frames: list[bytes], flags: int = 0, to: bytes | None = None) -> None:
    """Send ``frames`` as one message (a ROUTER's: to the peer ``to``); ``flags`` apply to every
    frame (``NOBLOCK``: raise ``zmq.Again`` rather than wait). A multipart message is queued
    whole or not at all: the first frame fails (``zmq.Again``, ``EHOSTUNREACH``) before anything
    is queued."""
    more = flags | MORE
    if to is not None:
        _send(sock, to, more)
    *head, last = frames
    for frame in head:
        _send(sock, frame, more)
    _send(sock, last, flags)


def recv_frames(sock: zmq.Socket, flags: int = NOBLOCK) -> list[bytes]:
    """One whole message as bytes; with ``NOBLOCK`` (the default), ``zmq.Again`` if none waits."""
    frame = _recv(sock, flags, False)
    frames = [frame.bytes]
    while frame.more:
        frame = _recv(sock, flags, False)
        frames.append(frame.bytes)
    return frames
