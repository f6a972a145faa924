"""A client thread's connection to the broker: ZMTP on the calling thread, or a libzmq DEALER.

Both speak through the same calls, so the client's loop does not care which it holds:

- ``send(frames, timeout_s)``: write one message; False when it was dropped (the broker is
  away), which the caller's own re-sends cover; ``send_many(messages, timeout_s)``: several,
  in order, in one write where the link can;
- ``wait(timeout_s)``: block until a whole message can be read;
- ``recv()``: the next message, or None; ``close()``.

Without CURVE keys it is ``shoal.zmtp.ZmtpDealer``: no libzmq I/O thread between the caller and
the kernel. With keys (or an endpoint only libzmq understands) it is a libzmq DEALER.
"""
from __future__ import annotations

import zmq

from shoal.security import CurveKeys, apply_client_curve
from shoal.sockets import NOBLOCK, connect, recv_frames, send_frames
from shoal.zmtp import ZmtpDealer, address

_POLLIN = int(zmq.POLLIN)


def send_now(sock: zmq.Socket, frames: list[bytes]) -> bool:
    """Send on a libzmq socket without blocking; False if a full queue (the broker is away)
    dropped it, and the caller's re-send timer tries again."""
    try:
        send_frames(sock, frames, NOBLOCK)  # a multipart message is queued whole or not at all
    except zmq.Again:
        return False
    return True


class ZmqLink:
    """A libzmq DEALER behind the calls of ``ZmtpDealer`` (the CURVE path)."""

    __slots__ = ("sock", "refused")

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: CurveKeys | None) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        apply_client_curve(self.sock, curve)
        connect(self.sock, endpoint)
        self.refused: str | None = None  # libzmq does not say why; the broker logs a refusal

    def send(self, frames: list[bytes], timeout_s: float) -> bool:
        return send_now(self.sock, frames)

    def send_many(self, messages: list[list[bytes]], timeout_s: float) -> bool:
        return all([send_now(self.sock, frames) for frames in messages])  # each tried, in order

    def wait(self, timeout_s: float) -> bool:
        return bool(zmq.zmq_poll([(self.sock, _POLLIN)], int(timeout_s * 1000) + 1))

    def recv(self) -> list[bytes] | None:
        try:
            return recv_frames(self.sock)
        except zmq.Again:
            return None

    def close(self) -> None:
        self.sock.close(0)


Link = ZmtpDealer | ZmqLink


def plain(endpoint: str, curve: CurveKeys | None) -> bool:
    """Whether this connection can be ZMTP on the caller's thread (no CURVE, an endpoint we parse)."""
    return curve is None and address(endpoint) is not None


def open_link(ctx: zmq.Context | None, endpoint: str, curve: CurveKeys | None) -> Link:
    """The link for ``endpoint``: ZMTP on this thread when ``plain``, else a DEALER made in ``ctx``
    (which only a connection that is not ``plain`` needs)."""
    if plain(endpoint, curve):
        return ZmtpDealer(endpoint)
    if ctx is None:
        raise ValueError(f"a libzmq context is needed for {endpoint} with CURVE keys")
    return ZmqLink(ctx, endpoint, curve)
