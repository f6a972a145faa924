"""The broker's lifecycle event stream: an XPUB socket beside the command socket."""
from __future__ import annotations

import zmq

from shoal.protocol import pack
from shoal.sockets import listen

from .security import EVENTS_MAX_MESSAGE_BYTES, ServerCurve


class Events:
    """The PUB side of lifecycle events. A slow subscriber never slows the broker: at its
    high-water mark events are dropped (XPUB_NODROP makes the drop visible, so it is counted)."""

    HWM = 100_000

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: ServerCurve | None = None) -> None:
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, EVENTS_MAX_MESSAGE_BYTES)
        if curve is not None:
            curve.apply(self.sock, "events")
        self.sock.setsockopt(zmq.SNDHWM, self.HWM)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscribe, so the count stays right
        try:
            self.endpoint = listen(self.sock, endpoint, "the events stream: [broker] events")
        except BaseException:
            self.sock.close(0)
            raise
        self._subscriptions = 0

    def publish(self, events: list[dict[str, object]]) -> int:
        """Send events, topic ``group\0workflow\0``; returns how many were dropped."""
        dropped = 0
        for event in events:
            topic = f"{event['group']}\0{event['workflow']}\0".encode()
            try:
                self.sock.send_multipart([topic, pack(event)], zmq.NOBLOCK)
            except zmq.Again:
                dropped += 1
        return dropped

    def subscribers(self) -> bool:
        """Read (un)subscribe messages; True while any subscription is open."""
        while True:
            try:
                message = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return self._subscriptions > 0
            if message[:1] == b"\x01":
                self._subscriptions += 1
            elif message[:1] == b"\x00":
                self._subscriptions = max(0, self._subscriptions - 1)

    def close(self) -> None:
        self.sock.close(0)


def events_endpoint(endpoint: str) -> str:
    """Events next to the broker's own endpoint: same host, any free port (or a sibling ipc path)."""
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
        return f"tcp://{host}:*"
    return endpoint + "-events"
