"""The broker's shell: receive, let the core decide, commit once, then send.

One pass of the loop drains everything waiting on the socket (up to a bound), so
requests that arrive together share one synced LMDB transaction (group commit), and
their replies go out only after that commit.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, cast

import zmq

from shoal.conf.settings import Settings
from shoal.endpoints import connectable
from shoal import protocol as P
from shoal.errors import StorageFull
from shoal.faults import fault
from shoal.logs import banner
from shoal.sockets import NOBLOCK, listen, recv_frames, send_frames

from ..core import Broker
from ..core import Clock, Outgoing
from .events import Events, events_endpoint
from ..recovery.history_reader import HistoryReader
from .metrics import MetricsServer
from .metrics import render as render_metrics
from .security import ServerCurve, refuse_exposure, security_note
from ..storage.snapshots import Snapshots
from ..storage.store import Store
from .supervisor import Supervisor

log = logging.getLogger("shoal.broker")
MAX_DRAIN = 4096
PEER_HWM = 10_000  # replies queued per peer before it counts as not reading
PEER_RCVHWM = 1_000  # messages read ahead per peer; past it TCP holds the peer back
PASS_BUDGET_S = 0.003  # a pass stops handling after this long, commits and sends
STALL_S = 2.0  # the loop late by this much stood still: its workers' silence was not theirs
TRIM_GAP_S = 0.02  # at most this often a commit just to drop log entries behind a snapshot
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


Poll = Callable[[int], list[Any]]


def spin_poll(poll: Poll, spin_s: float, clock: Callable[[], float] = time.monotonic,
              give_way: Callable[[], None] = os.sched_yield) -> list[Any]:
    """Poll without sleeping for up to ``spin_s``: what became ready, or [] once the time is up.

    Between two polls the CPU is offered to any other thread that wants it (``sched_yield``),
    so a worker or client on the same core is not held back by the spin."""
    until = clock() + spin_s
    while True:
        ready = poll(0)
        if ready or clock() >= until:
            return ready
        give_way()


def in_send_order(outbox: list[Outgoing]) -> list[Outgoing]:
    """The pass's messages in the order they leave: replies before JOBs.

    A sequential producer waits on its ack while the JOB it made wakes a worker; on a small
    host the two wake-ups race for the CPU, and the one that leaves first wins. Acks first made
    one producer's end to end 1,247 → 1,485 jobs/s (median of 10 alternated runs, higher in 9)
    and left the enqueue-then-wait round trip where it was (BENCHMARKS.md, "One producer end
    to end"): its worker leg starts microseconds later, and its caller's leg is as long."""
    return sorted(outbox, key=lambda o: bool(o.job_ids)) if len(outbox) > 1 else outbox


class IdleSpin:
    """The loop's wait for messages: ``[broker] spin`` of polling without sleeping, then ``poll``.

    A wait spins only when the one before it ended with a message within the spin: messages
    are coming back to back (a sequential caller's next request 0.2 ms after its ack, a
    worker's DONE after its JOB), and the next one is read by a loop still on its CPU, its
    caches warm, instead of by one woken from a halted CPU; on a VM that wake-up and the cold
    code after it cost more than the pass's own work (BENCHMARKS.md, "The broker spins before
    it sleeps"). A wait that ended later, or by a timer, means the callers are paced (one
    request a millisecond, say) and a spin would only burn the CPU: the next wait sleeps at
    once. So an idle broker, or one serving paced callers, never spins."""

    def __init__(self, spin_s: float, clock: Callable[[], float] = time.monotonic,
                 give_way: Callable[[], None] = os.sched_yield) -> None:
        self.spin_s = spin_s
        self.clock, self.give_way = clock, give_way
        self.armed = False  # the last wait ended with a message within spin_s
        self.answered_at = -1.0  # when a pass last sent something (monotonic)
        self.answer_gap = 1.0    # the time between the last two such passes

    def wait(self, poll: Poll, timeout_ms: int) -> list[Any]:
        """What became ready within ``timeout_ms`` (0: look once, never sleep)."""
        if not timeout_ms:
            return poll(0)
        started = self.clock()
        ready: list[Any] = []
        if self.armed:
            ready = spin_poll(poll, min(self.spin_s, timeout_ms / 1000), self.clock, self.give_way)
        if not ready:
            ready = poll(timeout_ms)
        self.armed = bool(ready) and self.spin_s > 0 and self.clock() - started <= self.spin_s
        return ready

    def answered(self) -> None:
        """A pass sent something (a reply, a JOB): how often that happens says when the next
        request is due."""
        now = self.clock()
        self.answer_gap, self.answered_at = now - self.answered_at, now

    def company(self, poll: Poll, within_s: float) -> list[Any]:
        """For a pass that wrote something and sends nothing (a worker's DONE with no waiter and
        no job to give out): the messages that came within the spin, to be handled in the same
        pass and share its commit; [] when none did, or at once when none is due.

        Nobody learns of such a pass before its commit, so it may wait for the request that
        follows it: a sequential producer's next ENQUEUE comes a fraction of a millisecond
        after its ack, and its worker's DONE in between. Committed alone, the DONE's sync held
        that ENQUEUE back; sharing one sync, it costs the producer nothing (BENCHMARKS.md,
        "One producer end to end"). The wait is taken only while answered passes come back
        to back and the next one is due within the spin, so a paced caller (one request a
        millisecond, say) never makes the broker spin for its worker's DONE. It ends by
        ``within_s``, when the loop's next timer is due (a lease, a delayed job): a timer is
        never late for company."""
        spin_s = min(self.spin_s, within_s)
        if spin_s <= 0:
            return []
        now = self.clock()
        if self.answer_gap > self.spin_s * 2 or self.answered_at + self.answer_gap > now + spin_s:
            return []
        ready = spin_poll(poll, spin_s, self.clock, self.give_way)
        self.armed = bool(ready)  # nothing came: the callers are not back to back after all
        return ready


class BrokerServer:
    """Owns the ROUTER socket and the store; runs the loop until stopped."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        refuse_exposure(settings, [settings.broker.bind, settings.broker.events])  # before anything is opened
        max_mb = settings.broker.max_size_mb
        self.store = Store(settings.broker.data, min(settings.broker.map_size_mb, max_mb) if max_mb else
                           settings.broker.map_size_mb, write_ahead=settings.broker.write_ahead)
        self.store.max_bytes = max_mb * 1024 * 1024
        self.broker = Broker(self.store, settings, clock)
        self.broker.load()
        self.idle = IdleSpin(settings.broker.spin_s)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        with ExitStack() as opened:  # a bind that fails (a port taken, say) closes what came before it
            opened.callback(self.store.close)  # the data directory's lock included
            self._listen(settings, opened)
            opened.pop_all()
        self.snapshots = Snapshots(self.store, settings)
        self.history = HistoryReader(self.store, self.ctx)
        self._metrics_at = 0.0
        self._trim_to = 0    # the log may be dropped up to this seq (a snapshot holds it)
        self._trim_at = 0.0  # the next trim-only commit, not before (monotonic)
        self._stop = threading.Event()
        if settings.broker.supervise:
            supervisor = Supervisor(settings, connectable(self.endpoint))
            if self.curve is not None:  # each supervised group gets a key of its own, made now
                supervisor.keys = self.curve.supervised_keys(list(supervisor.groups))
            self.broker.supervisor = supervisor

    def _listen(self, settings: Settings, opened: ExitStack) -> None:
        """CURVE, then the command socket, the events socket and the metrics server, each bound
        (``CannotListen`` says which could not be) and its closing put on ``opened``."""
        # CURVE and its authenticator exist before the first bind: no handshake goes unchecked
        self.curve = ServerCurve(self.ctx, settings) if settings.security.on else None
        if self.curve is not None:
            opened.callback(self.curve.close)
        self.sock = self.ctx.socket(zmq.ROUTER)
        opened.callback(self.sock.close, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # an unroutable send raises, never drops silently
        self.sock.setsockopt(zmq.LINGER, 0)
        # Flow control to workers is the credit; the high-water marks bound what one peer can make
        # the broker hold: a peer that stops reading gets its replies dropped past SNDHWM (see
        # BrokerCore.undeliverable), and one that sends faster than the loop reads is held back
        # by TCP past RCVHWM.
        self.sock.setsockopt(zmq.SNDHWM, PEER_HWM)
        self.sock.setsockopt(zmq.RCVHWM, PEER_RCVHWM)
        self.broker.send_hwm = PEER_HWM
        # zmq drops a peer sending more than this; below it we answer a clear too_large error
        self.sock.setsockopt(zmq.MAXMSGSIZE, settings.broker.max_message_bytes * 4)
        if self.curve is not None:
            self.curve.apply(self.sock, "command")
        self.endpoint = listen(self.sock, settings.broker.bind, "the broker's endpoint: --bind, [broker] bind")
        self.events = Events(self.ctx, settings.broker.events or events_endpoint(self.endpoint), self.curve)
        opened.callback(self.events.close)
        self.broker.events_endpoint = self.events.endpoint
        self.metrics = (MetricsServer(settings.broker.metrics, settings.broker.metrics_token)
                        if settings.broker.metrics else None)

    def stop(self) -> None:
        """Ask the loop to finish its pass and return (from any thread)."""
        self._stop.set()

    stop_requested = False  # set by the signal handler (no locks there); the loop turns it into stop()
    reload_requested = False  # SIGHUP: read the allow-lists again (in the loop, not the handler)

    def run(self) -> None:
        """Serve until ``stop()`` or SIGTERM/SIGINT: poll, let the core decide, commit, send (zguide's ``mediate()``)."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.history.replies, zmq.POLLIN)
        # (un)subscriptions are read when the poll says they came, not tried (and refused) every pass
        poller.register(self.events.sock, zmq.POLLIN)
        busy = False
        self._last_pass = time.monotonic()
        while not self._stopped():
            ready = dict(self._poll(poller, busy))
            if ready:
                if self.history.replies in ready:
                    self._forward_history()
                if self.sock in ready:
                    self._drain(self.broker)
                if self.events.sock in ready:
                    self.broker.events_wanted = self.events.subscribers()
            self.broker.tick()
            if self.broker.unobserved() and self.sock in dict(self.idle.company(poller.poll, self._next_timer_s())):
                self._drain(self.broker)  # into the same pass: one commit for both
                self.broker.tick()
            self._trim_along()
            busy = self._commit_and_send()
            self._housekeeping()
        self._checkpoint()  # in the loop's thread: LMDB's write transaction is this thread's

    _stopping_until: float | None = None

    def _stopped(self) -> bool:
        """True once asked to stop and the workers this broker started are drained (or out of time)."""
        if self.stop_requested and not self._stop.is_set():
            log.info("stopping: draining the workers this broker started")
            self._stop.set()
        if not self._stop.is_set():
            return False
        # Drain the workers we started while still serving, so their last results land.
        supervisor = self.broker.supervisor
        if supervisor is None or self._stopping_until is not None and (
                not supervisor.live_children() or time.monotonic() > self._stopping_until):
            return True
        if self._stopping_until is None:
            self._stopping_until = time.monotonic() + supervisor.drain_all()
        return False

    def _poll(self, poller: zmq.Poller, busy: bool) -> list[tuple[object, int]]:
        """Wait for messages until the core's next timer (spinning first while messages come back
        to back, ``IdleSpin``); a loop that woke far too late stood still."""
        timeout_ms = 0 if busy else min(int(self._next_timer_s() * 1000) + 1, 1000)
        ready: list[tuple[object, int]] = self.idle.wait(poller.poll, timeout_ms)
        woke = time.monotonic()
        if woke - self._last_pass > timeout_ms / 1000 + STALL_S:  # SIGSTOP, a VM pause
            self.broker.forgive_stall(woke - self._last_pass - timeout_ms / 1000)
        self._last_pass = woke
        return ready

    def _next_timer_s(self) -> float:
        """Seconds until the loop owes a pass with no message: the core's next timer, the next
        trim-only commit, the write-ahead file's checkpoint; 0 when one is due."""
        now = time.monotonic()
        due_s = self.broker.next_wakeup_s()
        if self._trim_to:
            due_s = min(due_s, self._trim_at - now)
        checkpoint_at = self.store.checkpoint_deadline()
        if checkpoint_at:
            due_s = min(due_s, checkpoint_at - now)
        return max(0.0, due_s)

    def _trim_along(self) -> None:
        """The log behind a snapshot is dropped a little with every commit that happens anyway,
        and in a commit of its own at most every TRIM_GAP_S: an enqueue that arrives during one
        waits for it, and back-to-back trim commits (600 of them for a 600,000-entry log) doubled
        the enqueue p99 (BENCHMARKS.md)."""
        if not self._trim_to:
            return
        batch = self.broker.batch
        if batch:
            batch.trim_log_to = self._trim_to
        elif time.monotonic() >= self._trim_at:
            batch.trim_log_to = self._trim_to
            self._trim_at = time.monotonic() + TRIM_GAP_S

    def _commit_and_send(self) -> bool:
        """Commit what the pass decided, then send its messages; True when a failed send undid
        something that must be committed before the loop sleeps."""
        batch, outbox = self.broker.take()
        history_wanted, self.broker.history_wanted = self.broker.history_wanted, []
        if batch:
            fault("before_commit")
        try:
            self.store.commit(batch, self.broker.clock.wall_ms())
        except StorageFull as exc:
            outbox = self._after_failed_commit(outbox, str(exc))
        if history_wanted:  # the reader's thread reads LMDB: it sees every entry so far
            self._checkpoint()
        for request in history_wanted:
            self.history.submit(*request)
        if batch:
            fault("after_commit_before_ack")
            if batch.steps:
                fault("after_step_stored")
        busy = self._send_all(outbox)
        if outbox:
            self.idle.answered()
        if any(out.job_ids for out in outbox):
            fault("after_dispatch")
        return busy

    def _send_all(self, outbox: list[Outgoing]) -> bool:
        busy = False
        broker, sock = self.broker, self.sock
        for out in in_send_order(outbox):
            try:
                send_frames(sock, out.frames, NOBLOCK, to=out.identity)
            except zmq.Again:  # the peer's queue is full: it does not read what we send
                broker.undeliverable(out, not_reading=True)
                busy = True
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone
                log.debug("could not deliver to %s: %s", out.identity.hex(), exc)
                broker.undeliverable(out)
                busy = True
        return busy

    def _housekeeping(self) -> None:
        """After the replies are out, so it never adds to anyone's latency: events, snapshots, metrics."""
        broker = self.broker
        if self.reload_requested and self.curve is not None:
            self.reload_requested = False
            self.curve.reload(self.settings)
        if broker.events:
            broker.events_dropped += self.events.publish(broker.events)
            broker.events = []
        if self.store.checkpoint_due(time.monotonic()):
            self._checkpoint()
        self._trim_to = self.snapshots.due()
        if self.metrics is not None and time.monotonic() - self._metrics_at >= 1.0:
            self._metrics_at = time.monotonic()
            self.metrics.text = render_metrics(broker.stats(), broker.events_dropped)

    def _checkpoint(self) -> None:
        """Commit LMDB's open transaction; a failure loses nothing (the write-ahead file keeps
        the batches) and is tried again a second later."""
        try:
            self.store.checkpoint()
        except StorageFull as exc:
            log.error("checkpoint failed, the write-ahead file keeps the batches: %s", exc)

    def _drain(self, broker: Broker) -> None:
        """Handle what waits on the socket: everything that arrived together shares one commit,
        but a pass ends after PASS_BUDGET_S of handling, so a burst (a peer flooding the broker)
        never holds the replies of the pass back for long."""
        if self.curve is not None:
            self._drain_keyed(broker)
            return
        sock = self.sock
        option = sock.getsockopt
        started = time.monotonic()
        for n in range(MAX_DRAIN):
            try:
                identity, *frames = recv_frames(sock)
            except zmq.Again:
                return
            broker.handle(identity, frames)
            # A lone request (a sequential caller) is the common pass: asking whether more is
            # waiting costs a third of the refused recv (zmq.Again) that would tell the same.
            if n == 0 and not cast(int, option(_EVENTS)) & _POLLIN:
                return
            if n & 3 == 3 and time.monotonic() - started > PASS_BUDGET_S:
                return

    def _drain_keyed(self, broker: Broker) -> None:
        """``_drain`` with CURVE on: each message also carries its sender's key (the ZAP User-Id,
        readable only from a frame received without copying), and the core gets its principal."""
        sock, principal_of = self.sock, self.curve.ring.principal_of  # type: ignore[union-attr]
        started = time.monotonic()
        for n in range(MAX_DRAIN):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            user_id: str | None
            try:
                user_id = str(parts[0].get("User-Id"))
            except zmq.ZMQError:  # no User-Id (cannot happen with ZAP enforced): a key with no rights
                user_id = None
            broker.handle(parts[0].bytes, [part.bytes for part in parts[1:]], principal_of(user_id))
            if n & 3 == 3 and time.monotonic() - started > PASS_BUDGET_S:
                return

    def _forward_history(self) -> None:
        """Send the HISTORY replies the reader thread has finished."""
        while True:
            try:
                identity, *frames = self.history.replies.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.broker.history_answered(identity)
            try:
                self.sock.send_multipart([identity, *frames], zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # the client went away meanwhile
                log.debug("could not deliver a history to %s: %s", identity.hex(), exc)

    def _after_failed_commit(self, outbox: list[Outgoing], reason: str) -> list[Outgoing]:
        """Storage refused a batch: nothing of it is stored, so nothing of it may be said.

        Every client request answered in the batch gets a storage error instead, except the
        answers to WAITs: their jobs are not final after all (that was not stored), so the
        waits stay registered and are answered when the job really ends. JOBs are not sent.
        The broker's memory is rebuilt from LMDB (the truth); workers are asked to say HELLO
        again and keep the leases they still hold.
        """
        log.error("commit failed, the pass is discarded: %s", reason)
        refusals, answered = [], []
        for out in outbox:
            command, body = P.decode(out.frames)
            if out.wait_for is not None:
                answered.append((out.wait_for, out.identity, body["rid"]))
            elif command in (P.REPLY, P.ERROR) and body.get("rid") is not None:
                refusals.append(Outgoing(out.identity, P.encode(P.ERROR, {
                    "rid": body["rid"], "code": P.E_STORAGE, "message": f"storage full: {reason}"})))
        self.broker, answers = self.broker.reloaded(answered)
        return refusals + answers

    def close(self) -> None:
        """Drain the workers we started, then release the socket and the environment."""
        if self.broker.supervisor is not None:
            self.broker.supervisor.stop(timeout_s=0.0)
        self.store.closing = True  # background readers stop at their next check
        self.snapshots.stop()
        self.history.close()
        if self.curve is not None:
            self.curve.unwatch()
        self.sock.close(0)
        self.events.close()
        if self.curve is not None:
            self.curve.close()
        if self.metrics is not None:
            self.metrics.close()
        self.store.close()


def serve(settings: Settings) -> int:
    """Run a broker in this process until SIGTERM or Ctrl-C; returns the exit code."""
    # Every job born allocates a few dozen objects: the youngest generation is collected every
    # 50,000 allocations instead of every 700 (bulk enqueue +7%, median of 6 alternated runs;
    # BENCHMARKS.md, "The write-ahead file"). Cycles are still collected.
    gc.set_threshold(50_000, 20, 100)
    server = BrokerServer(settings)
    extra = f", metrics on http://{server.metrics.address}/metrics" if server.metrics else ""
    banner("shoal.broker", f"shoal broker listening on {server.endpoint} (data {settings.broker.data}, "
           f"events on {server.events.endpoint}{extra}; {security_note(server.curve, settings)})")

    interrupts = 0

    def on_signal(signum: int, frame: object) -> None:
        # Runs between bytecodes of the loop, maybe while it holds a lock: only set flags here.
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                raise SystemExit(1)  # second Ctrl-C: stop now
        server.stop_requested = True

    def on_hangup(signum: int, frame: object) -> None:
        server.reload_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    started = time.monotonic()
    try:
        server.run()
    finally:
        server.close()
        log.info("broker stopped after %.1fs", time.monotonic() - started)
    return 0
