"""The worker's connection without CURVE keys: ZMTP on its own loop thread (``worker/link.py``).

A libzmq DEALER reconnected by itself and queued what was sent meanwhile; the ZMTP link sees a
lost connection at once and makes a new one, saying HELLO on it first (with the jobs still
running) and sending its recent outcomes again. The shell runs on a thread of the test,
connected over ipc to a ROUTER the test holds (``WireEnd``); a broker restart is that ROUTER
closed and bound again.
"""
from __future__ import annotations

import threading
from pathlib import Path

import zmq

from shoal import protocol as P
from shoal import workflow
from shoal.security import CurveKeys
from shoal.worker.link import ZmqLink, ZmtpLink, open_worker_link
from shoal.worker.runner import Runner
from shoal.worker.shell import WorkerOptions, WorkerShell

from conftest import wait_for
from test_worker_faults import WireEnd, drain_over_wire, stop_over_wire

GATE = threading.Event()


@workflow("link-echo", worker="link")
def echo(payload):
    return payload


@workflow("link-gated", worker="link")
def gated(payload):
    GATE.wait(30)
    return payload


WORKFLOWS = {w.name: w for w in (echo, gated)}


def _job(i: int, wf: str = "link-echo") -> dict:
    return {"id": i.to_bytes(16, "big"), "token": i + 1, "wf": wf, "payload": P.pack(i), "attempt": 1}


def _shell(endpoint: str, slots: int = 2) -> tuple[WorkerShell, threading.Thread]:
    # liveness 1000: the broker's silence never triggers the reconnect here; only the lost connection does
    options = WorkerOptions(endpoint, "link", slots, heartbeat_interval_s=0.1, liveness=1000)
    shell = WorkerShell(options, Runner(WORKFLOWS, "link", slots))
    thread = threading.Thread(target=shell.run, daemon=True)
    thread.start()
    return shell, thread


def test_a_worker_started_before_its_broker_says_hello_once_the_broker_listens(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/broker.sock"
    shell, thread = _shell(endpoint)
    wait_for(lambda: isinstance(shell.link, ZmtpLink) and shell.link.down(), what="the worker's first try")
    wire = WireEnd(endpoint)  # the broker comes up after the worker
    try:
        hello = wire.expect(P.HELLO)
        assert (hello["group"], hello["slots"], hello["running"]) == ("link", 2, [])
        wire.send(P.JOB, {"jobs": [_job(1)]})
        assert [r[0] for r in wire.expect(P.DONE)["results"]] == [_job(1)["id"]]
        drain_over_wire(shell, thread, wire)
    finally:
        stop_over_wire(shell, thread, wire)


def test_after_a_lost_connection_the_worker_says_hello_with_its_running_job_and_resends_its_results(
        tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/broker.sock"
    GATE.clear()
    wire = WireEnd(endpoint)
    shell, thread = _shell(endpoint)
    try:
        assert wire.expect(P.HELLO)["running"] == []
        quick, slow = _job(1), _job(2, "link-gated")
        wire.send(P.JOB, {"jobs": [quick, slow]})
        assert [r[0] for r in wire.expect(P.DONE)["results"]] == [quick["id"]]
        wire.close()  # the broker goes away with the result of the first job maybe unread
        wire = WireEnd(endpoint)  # and comes back on the same endpoint, knowing nothing of us
        hello = wire.expect(P.HELLO)  # first on the new connection: no RECONNECT was needed
        assert hello["running"] == [[slow["id"], slow["token"]]]
        resent = wire.expect(P.DONE)["results"]
        assert [r[0] for r in resent] == [quick["id"]]  # a result sent just before the loss, sent again
        GATE.set()
        assert [r[0] for r in wire.expect(P.DONE)["results"]] == [slow["id"]]
        drain_over_wire(shell, thread, wire)
    finally:
        GATE.set()
        stop_over_wire(shell, thread, wire)


def test_a_worker_uses_zmtp_without_keys_and_libzmq_with_them() -> None:
    ctx = zmq.Context()
    try:
        for endpoint in ("tcp://127.0.0.1:5999", "ipc:///tmp/shoal-link-test.sock"):
            link = open_worker_link(ctx, endpoint, None)
            assert isinstance(link, ZmtpLink) and link.down() and link.poll_target() is None
            link.close(0)
        public, secret = zmq.curve_keypair()
        keys = CurveKeys(public=public, secret=secret, server_public=public)
        link = open_worker_link(ctx, "tcp://127.0.0.1:5999", keys)
        assert isinstance(link, ZmqLink) and not link.down()  # libzmq connects (and re-connects) by itself
        link.close(0)
    finally:
        ctx.term()
