"""The worker's I/O thread: connection, HELLO, credit, heartbeats, reconnect, drain.

Liveness is this module's business alone (Paranoid Pirate style): heartbeats go out
from this thread, never from a handler's, so a CPU-bound handler cannot lose its lease.
The broker is declared gone after ``liveness`` silent intervals; the worker then
reconnects with doubling backoff and says HELLO again, listing the jobs it still runs
so the broker keeps their leases.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import zmq

from shoal import protocol as P
from shoal.ids import id_to_str
from shoal.logs import banner
from shoal.security import CurveKeys

from .calls import Calls
from .link import RECONNECT_IVL_S, WorkerLink, open_worker_link
from .outbox import Outbox, encode_outcomes, log_outcome
from .runner import KIND_CANCELLED, KIND_LEASE_LOST, Outcome, Runner

log = logging.getLogger("shoal.worker")

POLICE_EVERY_S = 0.1  # how often running handlers are checked against their timeouts


@dataclass(frozen=True)
class WorkerOptions:
    """Plain settings of one worker process."""

    endpoint: str
    group: str
    concurrency: int
    server: str = ""
    grace_s: float = 30.0
    heartbeat_interval_s: float = 1.0
    liveness: int = 3
    reconnect_max_s: float = 8.0
    max_jobs: int = 0          # recycle (drain and exit 0) after this many jobs; 0 = never
    max_memory_mb: int = 0     # recycle when resident memory passes this; 0 = never
    max_step_bytes: int = 1024 * 1024
    nice: int = 0              # the group's OS priority (applied by the worker command)
    curve: CurveKeys | None = None  # CURVE keys when the broker has transport security on


class WorkerShell:
    """Connects a ``Runner`` to the broker."""

    def __init__(self, options: WorkerOptions, runner: Runner) -> None:
        self.options = options
        self.runner = runner
        runner.channel = self  # durable steps reach the broker through this shell
        self._calls = Calls()
        self.ctx = zmq.Context()  # sockets only for a libzmq link (CURVE keys)
        self.link: WorkerLink | None = None
        self._watched: Any = None  # what the poller watches besides the wake-up pipe
        self.inflight: dict[bytes, int] = {}     # job id -> lease token
        self.outcomes: "queue.SimpleQueue[Outcome]" = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._outcome_wake_pending = False  # an outcome's wake-up is written and not yet read
        os.set_blocking(self._wake_w, False)
        self._draining = threading.Event()
        self._drain_signalled = False
        self._stop_now = threading.Event()
        self._drain_deadline = 0.0
        self.refused: str | None = None
        self.jobs_done = 0
        self._pending_send: list[Outcome] = []   # outcomes taken while reconnecting
        self._starting: list[dict[str, Any]] = []  # jobs taken on this pass, for the runner at its end
        opts = options
        # outcomes sent lately (re-sent after a reconnect: the broker does not ack them) and
        # results the broker deferred; a re-sent result met by two intervals of no DEFER is stored
        self.outbox = Outbox(horizon_s=opts.heartbeat_interval_s * (opts.liveness + 2) + opts.reconnect_max_s,
                             quiet_s=2 * opts.heartbeat_interval_s)
        self._last_sent = 0.0
        # After a HELLO, RECONNECTs already on their way (one per message the restarted broker
        # got from us before our HELLO) are echoes of the same restart: until the broker sends
        # something else, or two intervals pass, they are not answered again.
        self._hello_echo_until = 0.0
        self._rejoining = False
        self._next_police = 0.0
        self._replacing = False  # a handler ignored its cancel/timeout: drain and exit for a fresh process
        self._joining = False
        self._refused_said: str | None = None
        self._linked = False  # a message went out on the link's current connection
        self._hello_owed = True  # no HELLO has reached a connection yet (a ZMTP link's first may fail)
        self.poller = zmq.Poller()

    # --- control (any thread) -----------------------------------------------------
    def drain(self, grace_s: float | None = None) -> None:
        """Stop taking jobs; finish in-flight ones within the grace time, then exit."""
        if not self._draining.is_set():
            grace_s = self.options.grace_s if grace_s is None else grace_s
            self._drain_deadline = time.monotonic() + grace_s
            self._draining.set()
        self._wake()

    def drain_from_signal(self) -> None:
        """``drain`` for a signal handler: only sets a flag and wakes the loop (no locks)."""
        self._drain_signalled = True
        self._wake()

    def stop_now(self) -> None:
        """Leave at once; the broker redelivers what was in flight."""
        self._stop_now.set()
        self._wake()

    def _wake(self) -> None:
        if self._wake_w < 0:
            return  # stopped already: nothing to wake (and the fd number may be someone else's now)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake anyway

    def call(self, command: bytes, body: dict[str, Any]) -> "Future[dict[str, Any]]":
        """A request from a handler thread (a step result); resolved when the broker has committed it."""
        fut = self._calls.put(command, body)
        self._wake()
        return fut

    def _send_frames(self, frames: list[bytes], hello: bool = False) -> None:
        """Send one message. On a ZMTP link that lost its connection, connect first and say
        HELLO (with the jobs in flight and recent outcomes) before it: the broker sees a new
        peer. While the broker cannot be reached, the message is lost and that recovery,
        on the next connection, stands for it."""
        link = self.link
        assert link is not None
        if link.down() and not (hello or self._rejoin()):
            return
        if link.send(frames):
            self._linked = True
            self._last_sent = time.monotonic()
            if hello:
                self._hello_owed = False

    def _rejoin(self) -> bool:
        """A ZMTP link with no connection: connect (at most every ``RECONNECT_IVL_S``) and say
        HELLO on the new connection, first of all; True when connected."""
        assert self.link is not None
        if self._linked:
            self._linked = False
            log.warning("lost the connection to the broker at %s; connecting again every %.1fs",
                        self.options.endpoint, RECONNECT_IVL_S)
        if self._joining:
            return False
        if not self.link.reconnect():
            if self.link.refused and self.link.refused != self._refused_said:
                self._refused_said = self.link.refused  # once per reason, not every attempt
                log.error("cannot join the broker: %s", self.link.refused)
            return False
        self._joining = True  # a send that fails inside the announcement does not start another
        try:
            if self._hello_owed:
                self._send_hello()  # the first connection: nothing to re-send
            else:
                self._announce()
        finally:
            self._joining = False
        return not self.link.down()

    def _on_outcome(self, outcome: Outcome) -> None:
        """From a handler's thread: queue the outcome; wake the loop only if no wake-up is on its way.

        Outcomes finishing while the loop is busy ride one wake-up and leave in one DONE.
        Safe without a lock: the loop clears the flag before it takes the queue, so an
        outcome queued while the flag is still set is taken by that coming pass."""
        self.outcomes.put(outcome)
        if not self._outcome_wake_pending:
            self._outcome_wake_pending = True
            self._wake()

    # --- connection ---------------------------------------------------------------
    def _connect(self) -> None:
        reconnecting = self.link is not None
        if self.link is not None:
            self.link.close(0)
        self.link = open_worker_link(self.ctx, self.options.endpoint, self.options.curve)
        if reconnecting:
            self._announce()
        else:
            self._send_hello()

    def _announce(self) -> None:
        """Say HELLO again (the broker restarted or we lost it) and re-send recent outcomes, once."""
        self._send_hello()
        self._resend_recent_outcomes()
        self._hello_echo_until = time.monotonic() + 2 * self.options.heartbeat_interval_s
        self._rejoining = True

    def _resend_recent_outcomes(self) -> None:
        """Outcomes sent just before the broker went silent may have died with the old socket
        or the old broker: send them again, with every result the broker deferred. A restarted
        broker still holds those jobs as running with our lease token and accepts them; one
        that already has them ignores the repeat (its token is no longer live), so the job is
        not run twice."""
        for frames in encode_outcomes(self.outbox.to_resend(time.monotonic())):
            self._send_frames(frames)

    def _send_hello(self) -> None:
        slots = 0 if self._draining.is_set() else self.options.concurrency
        self._send_frames(P.encode(P.HELLO, {
            "group": self.options.group, "pid": os.getpid(), "host": socket.gethostname(),
            "server": self.options.server, "slots": slots,
            "workflows": {name: {"retries": wf.retries} for name, wf in self.runner.workflows.items()},
            "running": [[job_id, token] for job_id, token in self.inflight.items()],
        }), hello=True)

    def _send(self, command: bytes, body: dict[str, Any]) -> None:
        self._send_frames(P.encode(command, body))

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> int:
        """Serve until drained or stopped; returns the process exit code."""
        opts = self.options
        self._connect()
        banner("shoal.worker", f"shoal worker for group {opts.group!r} connected to {opts.endpoint} "
               f"with {opts.concurrency} slots")
        self._last_heard = time.monotonic()
        self._backoff_s = opts.heartbeat_interval_s
        self._drain_announced = False
        try:
            while not self._stop_now.is_set():
                if self._starting:
                    self._hand_to_runner()
                down = self.link is not None and self.link.down() and not self._rejoin()
                self._watch()
                wait_s = RECONNECT_IVL_S if down else opts.heartbeat_interval_s
                events = dict(self.poller.poll(int(wait_s * 1000)))
                self._outcome_wake_pending = False  # before the outcomes are taken below
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                if self._watched is not None and self._watched in events and self._read_all():
                    self._last_heard = time.monotonic()
                    self.outbox.heard(self._last_heard)
                    self._backoff_s = opts.heartbeat_interval_s
                if self.refused:
                    return 2
                if self._drain_signalled and not self._draining.is_set():
                    self.drain()
                now = time.monotonic()
                self._calls.send_due(now, self._send_frames)
                self._police_runs(now)
                if self._draining.is_set():
                    self._announce_drain(now)  # READY 0 before the outcomes: no new job lands meanwhile
                self._flush_outcomes()
                self._flush_held(now)
                if self._draining.is_set() and self._drained(now):
                    break
                self._keep_alive(now)
            else:
                return 0  # stopped at once: the broker redelivers in-flight jobs
            self._send(P.BYE, {})
            return 0
        finally:
            self.close()

    def _drained(self, now: float) -> bool:
        """While draining: True once every in-flight job finished or the grace time ran out."""
        self._announce_drain(now)
        if not self.inflight:
            return True
        if now >= self._drain_deadline:
            self._hand_back()
            return True
        return False

    def _announce_drain(self, now: float) -> None:
        if not self._drain_announced:
            log.info("draining: finishing %d in-flight jobs within %.1fs; a second SIGTERM or Ctrl-C "
                     "exits at once (unfinished jobs are then redelivered)",
                     len(self.inflight), max(0.0, self._drain_deadline - now))
            self._send(P.READY, {"slots": 0})
            self._drain_announced = True

    def _keep_alive(self, now: float) -> None:
        """Reconnect when the broker is silent past its liveness; else heartbeat when due."""
        opts = self.options
        if now - self._last_heard > opts.heartbeat_interval_s * opts.liveness:
            log.warning("broker at %s is silent; reconnecting in %.1fs", opts.endpoint, self._backoff_s)
            self._sleep_interruptibly(self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, opts.reconnect_max_s)
            self._connect()
            self._last_heard = time.monotonic()
        elif now - self._last_sent >= opts.heartbeat_interval_s:
            self._send(P.HEARTBEAT, {})

    def _sleep_interruptibly(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not (self._stop_now.is_set() or self._draining.is_set() or self._drain_signalled) \
                and time.monotonic() < deadline:
            self._flush_outcomes_to_memory()
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _watch(self) -> None:
        """Poll the link's current socket (a ZMTP link's descriptor changes with each connection)."""
        assert self.link is not None
        target = self.link.poll_target()
        if target is self._watched and self.poller.sockets:
            return
        self.poller = zmq.Poller()
        self.poller.register(self._wake_r, zmq.POLLIN)
        if target is not None:
            self.poller.register(target, zmq.POLLIN)
        self._watched = target

    def _read_all(self) -> bool:
        assert self.link is not None
        heard = False
        for frames in self.link.messages():
            heard = True
            try:
                command, body = P.decode(frames)
            except P.ProtocolError as exc:
                log.warning("bad message from the broker: %s", exc)
                continue
            if command == P.RECONNECT:  # a restarted broker that does not know us (yet)
                if time.monotonic() >= self._hello_echo_until:
                    self._announce()
                continue
            self._known_again()
            self._dispatch(command, body)
        return heard

    def _known_again(self) -> None:
        """Any message but RECONNECT proves the broker knows us: the next RECONNECT is news."""
        self._hello_echo_until = 0.0
        if self._rejoining:
            self._rejoining = False
            log.info("rejoined the broker at %s with %d jobs in flight", self.options.endpoint, len(self.inflight))

    def _dispatch(self, command: bytes, body: dict[str, Any]) -> None:
        if command == P.JOB:
            self._start(body.get("jobs", []))
        elif command == P.CANCEL:
            self._hand_to_runner()  # a job taken on this pass must be running to be told to stop
            job_id = body.get("id")
            if isinstance(job_id, bytes) and self.inflight.get(job_id) == body.get("token"):
                log.info("job %s was cancelled; stopping it", id_to_str(job_id))
                self.runner.cancel(job_id)
        elif command == P.DEFER:
            self._on_defer(body)
        elif command == P.REPLY or (command == P.ERROR and body.get("rid") is not None):
            self._calls.answer(command, body)
        elif command == P.ERROR:
            self._on_error(body)

    def _on_defer(self, body: dict[str, Any]) -> None:
        """The broker could not store these results yet: keep them (their jobs stay ours) and retry."""
        for outcome in self.outbox.defer(body, time.monotonic()):
            log.warning("job %s (%s): the broker cannot store its result yet (%s); keeping it and sending "
                        "it again every %d ms until stored", id_to_str(outcome.job_id), outcome.workflow,
                        body.get("reason") or "no reason given", body.get("retry_ms") or 1000)
        for job_id, held in self.outbox.held.items():
            self.inflight[job_id] = held.outcome.token  # listed in HELLO's `running`, drained like a run

    def _flush_held(self, now: float) -> None:
        if not self.outbox.held:
            return  # nothing deferred (the common pass): nothing due, nothing to release
        for frames in encode_outcomes(self.outbox.due(now)):
            self._send_frames(frames)
        for outcome in self.outbox.released(now):
            if self.inflight.get(outcome.job_id) == outcome.token:
                del self.inflight[outcome.job_id]
            log.info("job %s (%s): result stored after being deferred", id_to_str(outcome.job_id), outcome.workflow)

    def _on_error(self, body: dict[str, Any]) -> None:
        message = f"{body.get('code')}: {body.get('message')}"
        log.error("broker refused: %s", message)
        if body.get("rid") is None and body.get("code") in (P.E_BAD_REQUEST, P.E_FORBIDDEN):
            self.refused = message  # our HELLO was refused (a workflow claimed by two groups, a key of another group)

    def _start(self, jobs: list[dict[str, Any]]) -> None:
        """Take jobs on (in flight from now); the runner gets them when this pass ends."""
        logged = log.isEnabledFor(logging.INFO)  # once a batch: id_to_str per job is not free
        for job in jobs:
            self.inflight[job["id"]] = job["token"]
            if logged:
                log.info("job %s (%s) received, attempt %s", id_to_str(job["id"]), job["wf"], job.get("attempt"))
        self._starting.extend(jobs)

    def _hand_to_runner(self) -> None:
        """Start the jobs taken on this pass. Done last, just before the loop sleeps in poll:
        a handler's thread woken earlier would wait for this thread to let go of the GIL, and
        be woken a second time when it does (a tenth of a millisecond per job, measured)."""
        starting, self._starting = self._starting, []
        submit, done = self.runner.submit, self._on_outcome
        for job in starting:
            submit(job, done)

    def _police_runs(self, now: float) -> None:
        """A sync handler that ignored its cancel or timeout: report it, then replace this process."""
        if now < self._next_police:
            return  # a few times a second is precise enough, and spares a busy loop the scan
        self._next_police = now + POLICE_EVERY_S
        for outcome in self.runner.overdue(now):
            self.outcomes.put(outcome)
            if self._replacing:
                continue
            self._replacing = True
            log.warning("job %s (%s) ignored its %s for %.0fs and still holds its thread; this worker takes "
                        "no more jobs, lets the others finish, and exits so a fresh process replaces it",
                        id_to_str(outcome.job_id), outcome.workflow,
                        "cancel" if outcome.kind == KIND_CANCELLED else "timeout", self.runner.stuck_grace_s)
            self.drain()

    def _take_outcomes(self) -> list[Outcome]:
        taken: list[Outcome] = []
        outcomes = self.outcomes
        while not outcomes.empty():  # this thread is the only taker: not empty means get succeeds
            outcome = outcomes.get_nowait()
            if self.inflight.get(outcome.job_id) == outcome.token and outcome.job_id not in self.outbox.held:
                taken.append(outcome)
        return taken

    def _flush_outcomes_to_memory(self) -> None:
        self._pending_send = self._pending_send + self._take_outcomes()

    def _flush_outcomes(self) -> None:
        outcomes = self._pending_send + self._take_outcomes()
        self._pending_send = []
        if not outcomes:
            return
        for frames in encode_outcomes(outcomes):
            self._send_frames(frames)
        self.outbox.sent([o for o in outcomes if o.kind != KIND_LEASE_LOST], time.monotonic())
        for o in outcomes:
            log_outcome(o)
            self.inflight.pop(o.job_id, None)
            self.jobs_done += 1
        self._maybe_recycle()

    def _maybe_recycle(self) -> None:
        """Leaky libraries: drain and exit 0 (the supervisor starts a fresh process)."""
        opts = self.options
        if self._draining.is_set():
            return
        if opts.max_jobs and self.jobs_done >= opts.max_jobs:
            log.info("recycling after %d jobs (max_jobs)", self.jobs_done)
            self.drain()
        elif opts.max_memory_mb and _rss_mb() > opts.max_memory_mb:
            log.info("recycling at %d MiB resident (max_memory %d MiB)", _rss_mb(), opts.max_memory_mb)
            self.drain()

    def _hand_back(self) -> None:
        """Grace is over: give the unfinished jobs back so they are requeued at once."""
        returned = [[job_id, token] for job_id, token in self.inflight.items()]
        log.warning("grace time over; handing %d unfinished jobs back to the broker", len(returned))
        self._send(P.RETURN, {"jobs": returned})
        self.inflight.clear()

    def close(self) -> None:
        """Release sockets and pipes; abandons handlers still running."""
        self.runner.shutdown(wait=False)
        if self.link is not None:
            # give the last DONE / RETURN / BYE a moment to leave; then drop them
            self.link.close(0 if self._stop_now.is_set() else 1.0)
            self.link = None
        self.ctx.term()
        fds, self._wake_w = (self._wake_r, self._wake_w), -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _rss_mb() -> int:
    """Resident memory of this process in MiB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
