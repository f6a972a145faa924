"""The worker's connection to the broker: ZMTP on the worker's own loop thread, or a libzmq DEALER.

A libzmq DEALER moves every message through its context's I/O thread. For the worker that
is one more thread to wake for every JOB that comes in (the I/O thread reads it, then wakes
the loop) and for every DONE that goes out, on a machine where the broker, the worker and the
caller share two vCPUs. Without CURVE keys the worker's loop owns a ``shoal.zmtp.ZmtpDealer``
instead, as a client thread does: it polls the kernel socket itself, reads the JOB out of it
and writes the DONE into it. With keys it keeps the DEALER (``ZmqLink``), as before.

The shell sees one set of calls:

- ``send(frames)``: write one message; False when it could not be (the broker is away, or
  not reading), and the message is lost: the shell's own recovery covers it (HELLO again
  with the jobs it runs, recent outcomes re-sent, step calls re-sent on their timer);
- ``messages()``: the messages that have arrived, without blocking;
- ``poll_target()``: what the loop's ``zmq.Poller`` watches (a zmq socket or a file
  descriptor), None while there is no connection;
- ``down()`` / ``reconnect()``: only a ZMTP link is ever down; a DEALER reconnects by itself;
- ``close(linger)``.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import zmq

from shoal.links import plain
from shoal.security import CurveKeys, apply_client_curve
from shoal.sockets import connect, recv_frames, send_frames
from shoal.zmtp import ZmtpDealer

_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
CONNECT_TIMEOUT_S = 0.5   # a connection attempt's bound (loopback refuses or accepts at once)
RECONNECT_IVL_S = 0.1     # after a failed attempt, none before this (libzmq's reconnect_ivl)
SEND_TIMEOUT_S = 1.0      # how long a message may wait for a broker that does not read


class ZmqLink:
    """A libzmq DEALER (the CURVE path): it reconnects and queues on its own."""

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: CurveKeys | None) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        apply_client_curve(self.sock, curve)
        connect(self.sock, endpoint)

    refused = None  # libzmq does not say why a handshake failed; the broker logs it

    def down(self) -> bool:
        return False

    def reconnect(self) -> bool:
        return True

    def send(self, frames: list[bytes]) -> bool:
        send_frames(self.sock, frames)  # send_multipart's checks and enum flags were a tenth of a no-op job's pass
        return True

    def poll_target(self) -> Any:
        return self.sock

    def messages(self) -> Iterator[list[bytes]]:
        sock = self.sock
        heard = False
        while True:
            # Asking whether a message waits costs a fraction of the refused recv (zmq.Again,
            # an exception) that would tell the same; the poll said one does when we come here.
            if heard and not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                return
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            heard = True
            yield frames

    def close(self, linger_s: float) -> None:
        self.sock.close(linger=int(linger_s * 1000))


class ZmtpLink:
    """ZMTP on the loop's thread. A lost connection is made again on the next send (the shell
    then says HELLO first); a message that cannot be written whole ends the connection, so
    what follows is the same recovery as after a broker restart, never a silent gap."""

    def __init__(self, endpoint: str) -> None:
        self.dealer = ZmtpDealer(endpoint)
        self.retry_at = 0.0  # no connection attempt before this (monotonic), after one failed

    @property
    def refused(self) -> str | None:
        """Why the broker refused the last handshake (a broker with CURVE on, say), or None."""
        return self.dealer.refused

    def down(self) -> bool:
        return not self.dealer.connected

    def reconnect(self) -> bool:
        """Try to connect, at most once per ``RECONNECT_IVL_S`` after a failure; True when connected."""
        if self.dealer.connected:
            return True
        now = time.monotonic()
        if now < self.retry_at:
            return False
        if self.dealer.connect(CONNECT_TIMEOUT_S):
            return True
        self.retry_at = time.monotonic() + RECONNECT_IVL_S
        return False

    def send(self, frames: list[bytes]) -> bool:
        dealer = self.dealer
        if not dealer.connected:
            return False
        if dealer.send(frames, SEND_TIMEOUT_S, block=True):
            return True
        dealer.close()  # not written whole: start again (HELLO, recent outcomes) rather than lose it quietly
        return False

    def poll_target(self) -> Any:
        return self.dealer.fileno()

    def messages(self) -> Iterator[list[bytes]]:
        dealer = self.dealer
        dealer.wait(0)  # reads what the kernel holds (a closed connection is dropped here)
        while (frames := dealer.recv()) is not None:
            yield frames

    def close(self, linger_s: float) -> None:
        self.dealer.close()


WorkerLink = ZmqLink | ZmtpLink


def open_worker_link(ctx: zmq.Context, endpoint: str, curve: CurveKeys | None) -> WorkerLink:
    return ZmtpLink(endpoint) if plain(endpoint, curve) else ZmqLink(ctx, endpoint, curve)
