"""Worker processes the broker starts and keeps alive on its own host.

A group with ``workers >= 1`` always has that many processes; one that crashes is
restarted with doubling backoff (a crash loop is reported, never a busy loop). A group
with ``workers = 0`` is cold until work arrives for it: then one worker is launched
(more, up to ``max_workers``, while the backlog outgrows the slots), and after
``idle_timeout`` with nothing pending or running it is drained back to zero. A
launched worker that dies before taking any job (bad import, missing dependency)
puts its group in a cooldown as ``unhealthy``: enqueues to it are refused with the
exit code and the tail of the worker's stderr, so a job never waits silently forever.
"""
from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import IO

from shoal.conf.settings import GroupSettings, Settings
from shoal.logs import child_line, logging_json
from shoal.security import SUPERVISED_ENV, CurveKeys

from ..core.demand import Demand  # the core computes it; the supervisor scales on it

log = logging.getLogger("shoal.broker.supervisor")

RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
CRASH_LOOP_WINDOW_S = 60.0
CRASH_LOOP_COUNT = 3
UNHEALTHY_COOLDOWN_S = 30.0
STDERR_TAIL_LINES = 20
# Children are polled for their exit at most this often: a waitpid costs 5 µs a child, and every
# pass of the loop ran two per child (46 µs a pass with 2 groups of 2 workers, BENCHMARKS.md).
# A crash is restarted after RESTART_FIRST_S or more anyway.
REAP_EVERY_S = 0.1


@dataclass
class Child:
    """One worker process started by the supervisor."""

    popen: subprocess.Popen[bytes]
    started: float
    scaled: bool                        # launched on demand (scale-to-zero), not always-on
    stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=STDERR_TAIL_LINES))
    joined: bool = False                # said HELLO
    draining: bool = False


@dataclass
class GroupState:
    """The supervisor's bookkeeping for one group."""

    settings: GroupSettings
    children: list[Child] = field(default_factory=list)
    crashes: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=CRASH_LOOP_COUNT))
    restart_delay_s: float = RESTART_FIRST_S
    next_start: float = 0.0
    unhealthy_until: float = 0.0
    unhealthy_reason: str = ""
    idle_since: float | None = None
    last_cold_start_s: float | None = None   # seconds from launch to HELLO
    launches: int = 0
    crash_loop: bool = False

    def live(self) -> list[Child]:
        """Children running and not draining, as of the last reap (they leave ``children`` when reaped)."""
        return [c for c in self.children if not c.draining]


class Supervisor:
    """Starts, watches and stops the worker processes of the groups on this host."""

    def __init__(self, settings: Settings, endpoint: str) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.groups: dict[str, GroupState] = {
            name: GroupState(gs) for name, gs in settings.groups.items()
            if gs.app  # without an app module there is nothing this host could start
        }
        # CURVE on: group -> the key its workers connect with (made by the broker, allowed for
        # that group only, in memory; handed over in the child's environment, never on argv)
        self.keys: dict[str, CurveKeys] = {}
        self._reap_at = 0.0  # when the children are next polled for their exit (monotonic)

    # --- what the broker asks ---------------------------------------------------------
    def supervises(self, group: str) -> bool:
        """True when this broker starts the workers of ``group``."""
        return group in self.groups

    def refusal(self, group: str, now: float) -> str | None:
        """Why an enqueue to ``group`` is refused now (its workers cannot start), or None."""
        state = self.groups.get(group)
        if state is None or now >= state.unhealthy_until:
            return None
        return state.unhealthy_reason

    def state_of(self, group: str, demand: Demand, now: float) -> dict[str, object]:
        """``state`` (cold/starting/warm/draining/unhealthy) and cold-start figures for stats."""
        state = self.groups.get(group)
        if state is None:
            return {"state": "warm" if demand.connected_pids else "cold", "supervised": False}
        live = [c for c in state.children if c.popen.poll() is None]
        if now < state.unhealthy_until or state.crash_loop:
            name = "unhealthy"
        elif any(c.draining for c in live):
            name = "draining"
        elif any(c.joined for c in live) or demand.connected_pids:
            name = "warm"
        elif live:
            name = "starting"
        else:
            name = "cold"
        out: dict[str, object] = {"state": name, "supervised": True, "processes": len(live),
                                  "launches": state.launches, "crash_loop": state.crash_loop,
                                  "last_cold_start_s": state.last_cold_start_s}
        if name == "unhealthy":
            out["reason"] = state.unhealthy_reason
        return out

    # --- the loop's pass ------------------------------------------------------------------
    def tick(self, demand_of: Callable[[str], Demand], now: float) -> None:
        """Reap exits (at most every REAP_EVERY_S), restart, scale up and idle out; run every
        pass, so its work per pass is kept to what changed: ``demand_of(group)`` is asked only
        where a decision needs it, and the children are polled (a ``waitpid`` each, 5 µs) only
        when it is time to reap."""
        reap = now >= self._reap_at
        if reap:
            self._reap_at = now + REAP_EVERY_S
        for name, state in self.groups.items():
            if reap:
                self._reap(name, state, now)
            demand: Demand | None = None
            if any(not child.joined for child in state.children):
                demand = demand_of(name)
                self._joined(name, state, demand, now)
            if now < state.next_start:  # crash backoff
                continue
            gs = state.settings
            if gs.workers > 0:  # always on: the reaped children tell all (no demand needed)
                for _ in range(gs.workers - len(state.live())):
                    self._launch(name, state, now, scaled=False)
                continue
            if now < state.unhealthy_until:
                continue  # a cold group whose launch failed waits out its cooldown
            self._scale(name, state, demand if demand is not None else demand_of(name), now)

    def _joined(self, name: str, state: GroupState, demand: Demand, now: float) -> None:
        """Children that said HELLO since the last pass are warm."""
        for child in state.children:
            if not child.joined and child.popen.pid in demand.connected_pids:
                child.joined = True
                state.restart_delay_s = RESTART_FIRST_S
                state.crash_loop = False
                if child.scaled:
                    state.last_cold_start_s = round(now - child.started, 3)
                    log.info("group %s is warm: cold start took %.3fs", name, state.last_cold_start_s)

    def _scale(self, name: str, state: GroupState, demand: Demand, now: float) -> None:
        """A group of ``workers = 0``: launch on a backlog, drain after ``idle_timeout``."""
        gs = state.settings
        live = state.live()
        busy = demand.pending + demand.running
        if busy:
            state.idle_since = None
            starting = [c for c in live if not c.joined]
            # Any connected worker counts, ours or one started by hand: a free slot is warm,
            # and no group is cold-started while a worker of it could take the job now.
            backlog_outgrows = demand.pending > max(0, demand.slots - demand.running)
            if not starting and len(live) < gs.max_workers and backlog_outgrows:
                self._launch(name, state, now, scaled=True)  # at most one launch in flight per group
            return
        if not live:
            state.idle_since = None
            return
        if state.idle_since is None:
            state.idle_since = now
        elif now - state.idle_since >= gs.idle_timeout_s:
            for child in live:
                log.info("group %s idle for %.0fs: draining worker pid %d", name, gs.idle_timeout_s, child.popen.pid)
                child.draining = True
                child.popen.send_signal(signal.SIGTERM)
            state.idle_since = None

    def _reap(self, name: str, state: GroupState, now: float) -> None:
        for child in list(state.children):
            code = child.popen.poll()
            if code is None:
                continue
            state.children.remove(child)
            if child.draining or code == 0:
                log.info("worker pid %d of group %s exited (%d)", child.popen.pid, name, code)
                if code == 0 and not child.draining:
                    state.restart_delay_s = RESTART_FIRST_S  # recycled (max_jobs/max_memory): respawn now
                continue
            tail = "".join(child.stderr_tail).strip()
            if not child.joined:
                state.unhealthy_until = now + UNHEALTHY_COOLDOWN_S
                state.unhealthy_reason = (f"the worker of group {name!r} exited with code {code} before taking "
                                          f"any job; its stderr ends with:\n{tail[-2000:]}")
                log.error("%s", state.unhealthy_reason)
            state.crashes.append(now)
            state.crash_loop = (len(state.crashes) == CRASH_LOOP_COUNT
                                and now - state.crashes[0] < CRASH_LOOP_WINDOW_S)
            state.next_start = now + state.restart_delay_s
            log.warning("worker pid %d of group %s died (exit %d); restarting in %.1fs%s", child.popen.pid, name,
                        code, state.restart_delay_s, " (crash loop)" if state.crash_loop else "")
            state.restart_delay_s = min(state.restart_delay_s * 2, RESTART_MAX_S)

    def _launch(self, name: str, state: GroupState, now: float, scaled: bool) -> None:
        gs = state.settings
        args = [sys.executable, "-m", "shoal.worker", "--group", name, "--connect", self.endpoint,
                "--server", self.settings.server, "--app", ",".join(gs.app),
                "--log-level", logging.getLevelName(logging.getLogger().level).lower(),
                "--log-format", "json" if logging_json() else "text"]
        if self.settings.path:
            args += ["--config", self.settings.path]
        nice = gs.nice
        # stdout joins stderr so that every line the worker writes (its start line, a handler's
        # print) reaches our terminal through _pump_output, marked with its group and pid.
        env = dict(os.environ)
        if name in self.keys:
            env[SUPERVISED_ENV] = self.keys[name].encode()
        popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 preexec_fn=lambda: _in_child(nice), start_new_session=bool(nice), env=env)
        child = Child(popen, now, scaled)
        state.children.append(child)
        state.launches += 1
        if child.popen.stdout is not None:
            threading.Thread(target=_pump_output, args=(child.popen.stdout, child.stderr_tail, name, popen.pid),
                             daemon=True, name=f"output-{name}").start()
        log.info("started worker pid %d for group %s%s", popen.pid, name, " (cold start)" if scaled else "")

    def live_children(self) -> list[Child]:
        """Children still running."""
        return [c for s in self.groups.values() for c in s.children if c.popen.poll() is None]

    def drain_all(self) -> float:
        """SIGTERM every child (they finish in-flight jobs); returns how long to wait for them."""
        for state in self.groups.values():
            state.next_start = float("inf")  # nothing is restarted while we stop
            for child in state.children:
                if child.popen.poll() is None:
                    child.draining = True
                    child.popen.send_signal(signal.SIGTERM)
        return float(max([s.settings.grace_s for s in self.groups.values()] + [0.0])) + 2.0

    def stop(self, timeout_s: float = 10.0) -> None:
        """Drain every child (SIGTERM), then SIGKILL what is left after ``timeout_s``."""
        children = self.live_children()
        for child in children:
            child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in children:
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()


def _pump_output(stream: IO[bytes], tail: collections.deque[str], group: str, pid: int) -> None:
    """Forward a child's output to our stderr, each line marked with its group and pid,
    keeping the last lines (unmarked) for error reports."""
    as_json = logging_json()
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        tail.append(line)
        sys.stderr.write(child_line(line, group, pid, as_json=as_json))
        sys.stderr.flush()
    stream.close()


def _in_child(nice: int) -> None:
    """Runs in the child before exec: die with the broker, and take the group's priority."""
    _exit_with_parent()
    if nice:
        _lower_priority(nice)


def _exit_with_parent() -> None:
    """Linux: SIGTERM (a graceful drain) when the broker dies, even by SIGKILL, so its workers
    never outlive it as duplicates of the ones a restarted broker starts."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the worker still leaves when it finds the broker gone for good


def _lower_priority(nice: int) -> None:
    """In the child, before exec: a new session (own autogroup) at the group's nice level.

    Under Linux session autogroups the scheduler shares the CPU between sessions first,
    so ``os.nice`` alone barely matters against another session; setting the new
    session's autogroup nice makes the priority real.
    """
    os.nice(nice)
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(nice))
    except OSError:
        pass  # no autogroups here: os.nice is what the scheduler uses
