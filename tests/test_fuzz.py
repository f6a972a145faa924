"""Hostile frames are refusals: the generator of scripts/fuzz.py against the core and a real broker."""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import pytest
import zmq

from shoal import protocol as P

from conftest import Cluster, wait_for
from test_broker_core import Harness

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import fuzz  # noqa: E402


def test_the_core_refuses_thousands_of_hostile_frames_without_an_internal_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(tmp_path / "data")
    try:
        h.hello(slots=2)
        h.new_jobs(3)
        h.broker.strikes.limit = 10**9  # every frame reaches the checks (no peer is put aside)
        rng = random.Random(7)
        with caplog.at_level(logging.ERROR, logger="shoal.broker"):
            for n in range(3000):
                h.broker.handle(b"fuzz-%d" % (n % 7), fuzz.frames(rng))
                if n % 50 == 0:
                    h.tick()
            h.tick()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[:2000]
        assert h.request(P.STATS, {})["groups"]["email"]["running"] == 2  # the real work is untouched
    finally:
        h.close()


@pytest.mark.timeout(90)
def test_a_real_broker_answers_a_normal_client_after_a_fuzz_burst_and_logs_no_traceback(cluster: Cluster) -> None:
    cluster.start_worker("email", 2)
    client = cluster.client()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.endpoint)
    try:
        rng = random.Random(11)
        for _ in range(2000):
            sock.send_multipart(fuzz.frames(rng))
        result = client.wait(client.enqueue("echo", {"after": "fuzz"}, group="email"), timeout=30)
        assert result.status == "completed"
        wait_for(lambda: sock.poll(100), what="the fuzzing peer to get its refusals")
    finally:
        sock.close(0)
    text = cluster.broker_output()
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    assert cluster.broker is not None and cluster.broker.alive()
