"""``sim.client``: the real ``shoal.Client`` over a connection that is the simulation itself.

Every method builds its request and reads its reply with the client's own code; only the
transport differs: a request is one pass of the broker core, and a WAIT runs the simulation
(in virtual seconds) until the job is final or the timeout passes.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Protocol

from shoal import protocol as P
from shoal.client import Client
from shoal.client.client import Requests
from shoal.client.combine import Combiner
from shoal.client.connection import remote_error
from shoal.client.results import event_of
from shoal.errors import UnknownJob, WaitTimeout

CLIENT_IDENTITY = b"sim-client"
ENDPOINT = "ipc://shoal-simulation"  # a valid endpoint for the request builder; nothing connects to it


class Driver(Protocol):
    """What the connection needs from the simulation."""

    events: list[dict[str, Any]]

    def send(self, identity: bytes, frames: list[bytes]) -> None: ...

    def run_until(self, done: Callable[[], bool], seconds: float) -> bool: ...


class SimConnection:
    """Requests as broker passes; replies picked from what the passes delivered to the client."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._rids = itertools.count(1)
        self.inbox: dict[Any, tuple[bytes, dict[str, Any]]] = {}  # rid (None: refused unread) -> reply

    def deliver(self, command: bytes, body: dict[str, Any]) -> None:
        """A REPLY or ERROR for the client (replies to WAITs that already timed out stay unread)."""
        self.inbox[body.get("rid")] = (command, body)

    def call(self, command: bytes, body: dict[str, Any], timeout_s: float, is_wait: bool = False,
             meanwhile: Callable[[], object] | None = None) -> dict[str, Any]:
        """Send one request and return its reply body, or raise the error the real client raises."""
        rid = next(self._rids)
        body["rid"] = rid
        self.inbox.pop(None, None)
        self._driver.send(CLIENT_IDENTITY, P.encode(command, body))
        if meanwhile is not None:
            meanwhile()
        if rid not in self.inbox and is_wait:
            if not self._driver.run_until(lambda: rid in self.inbox, timeout_s):
                raise WaitTimeout(f"the job did not finish within {timeout_s}s of virtual time")
        reply = self.inbox.pop(rid, None) or self.inbox.pop(None, None)
        if reply is None:
            raise RuntimeError(f"the simulated broker did not answer {command.decode()}")  # a bug of ours
        answered, reply_body = reply
        if answered == P.REPLY:
            return reply_body
        raise remote_error(reply_body)

    def call_then_wait(self, command: bytes, body: dict[str, Any], timeout_s: float, job_id: bytes, wait_s: float,
                       made: Callable[[dict[str, Any]], bool],
                       meanwhile: Callable[[], object] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The request, then a WAIT on ``job_id`` unless ``made(reply)`` says the request did not
        make that job (as ``Connection.call_then_wait``; in virtual time the two passes cost nothing)."""
        reply = self.call(command, body, timeout_s, meanwhile=meanwhile)
        if not made(reply):
            return reply, None
        try:
            return reply, self.call(P.WAIT, {"id": job_id}, wait_s, is_wait=True)
        except UnknownJob:
            return reply, None

    def close(self) -> None:
        """Nothing to close: there is no socket."""


class SimClient(Client):
    """``shoal.Client`` with the same methods and errors, talking to the simulated broker."""

    def __init__(self, driver: Driver, timeout: float = 10.0,
                 max_message_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES) -> None:
        # Not Client.__init__: that opens a ZeroMQ context. The request builder is the same one.
        self._r = Requests(ENDPOINT, timeout, max_message_bytes)
        self.endpoint = ENDPOINT
        self._conn = SimConnection(driver)  # type: ignore[assignment]
        self._combiner = Combiner(lambda body: self._call(P.ENQUEUE, body), max_message_bytes)
        self._driver = driver

    def deliver(self, command: bytes, body: dict[str, Any]) -> None:
        """A reply the broker sent this client."""
        self._conn.deliver(command, body)  # type: ignore[attr-defined]

    def events(self, group: str | None = None, workflow: str | None = None,
               timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Lifecycle events so far, oldest first (the simulation keeps them all: nothing to wait for)."""
        for event in list(self._driver.events):
            if (group is None or event["group"] == group) and (workflow is None or event["workflow"] == workflow):
                yield dict(event)


def user_event(raw: dict[str, Any]) -> dict[str, Any]:
    """An event as ``Client.events`` yields it (job id as text)."""
    return event_of(dict(raw))
