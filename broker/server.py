"""The broker's shell: receive, let the core decide, commit once, then send.

One pass of the loop drains everything waiting on the socket (up to a bound), so
requests that arrive together share one synced LMDB transaction (group commit), and
their replies go out only after that commit.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

import zmq

from shoal.conf.settings import Settings

from .broker import Broker
from .core import Clock
from .store import Store
from .supervisor import Supervisor

log = logging.getLogger("shoal.broker")
MAX_DRAIN = 4096


class BrokerServer:
    """Owns the ROUTER socket and the store; runs the loop until stopped."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.broker.data, settings.broker.map_size_mb)
        self.broker = Broker(self.store, settings, clock)
        self.broker.load()
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # an unroutable send raises, never drops silently
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)             # flow control is the credit, not the HWM
        self.sock.setsockopt(zmq.RCVHWM, 0)
        # zmq drops a peer sending more than this; below it we answer a clear too_large error
        self.sock.setsockopt(zmq.MAXMSGSIZE, settings.broker.max_message_bytes * 4)
        self.sock.bind(settings.broker.bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        if settings.broker.supervise:
            self.broker.supervisor = Supervisor(settings, _local_endpoint(self.endpoint))

    def stop(self) -> None:
        """Ask the loop to finish its pass and return."""
        self._stop.set()

    def run(self) -> None:
        """Serve until ``stop()`` or SIGTERM/SIGINT."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        broker, sock = self.broker, self.sock
        busy = False
        stopping_until: float | None = None
        while True:
            if self._stop.is_set():
                # Drain the workers we started while still serving, so their last results land.
                supervisor = broker.supervisor
                if supervisor is None or stopping_until is not None and (
                        not supervisor.live_children() or time.monotonic() > stopping_until):
                    break
                if stopping_until is None:
                    stopping_until = time.monotonic() + supervisor.drain_all()
            timeout_ms = 0 if busy else min(int(broker.next_wakeup_s() * 1000) + 1, 1000)
            if poller.poll(timeout_ms):
                for _ in range(MAX_DRAIN):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    broker.handle(frames[0], frames[1:])
            broker.tick()
            batch, outbox = broker.take()
            self.store.commit(batch, broker.clock.wall_ms())
            busy = False
            for out in outbox:
                try:
                    sock.send_multipart([out.identity, *out.frames], zmq.NOBLOCK)
                except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone
                    log.debug("could not deliver to %s: %s", out.identity.hex(), exc)
                    broker.undeliverable(out)
                    busy = True  # commit what that undid before sleeping

    def close(self) -> None:
        """Drain the workers we started, then release the socket and the environment."""
        if self.broker.supervisor is not None:
            self.broker.supervisor.stop(timeout_s=0.0)
        self.sock.close(0)
        self.store.close()


def _local_endpoint(endpoint: str) -> str:
    """Where workers on this host connect: a wildcard bind is reached on loopback."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint[len(wildcard):]
    return endpoint


def serve(settings: Settings) -> int:
    """Run a broker in this process until SIGTERM or Ctrl-C; returns the exit code."""
    server = BrokerServer(settings)
    print(f"shoal broker listening on {server.endpoint} (data {settings.broker.data})", flush=True)

    def on_signal(signum: int, frame: object) -> None:
        if server._stop.is_set():
            raise SystemExit(1)
        log.info("signal %d: stopping", signum)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    try:
        server.run()
    finally:
        server.close()
        log.info("broker stopped after %.1fs", time.monotonic() - started)
    return 0
