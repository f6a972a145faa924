"""The order in which a pass's messages leave the broker: replies before JOBs, each kind in the
order the core decided it (the ack a sequential producer waits on is not held behind the JOB it
made)."""
from __future__ import annotations

from shoal import protocol as P
from shoal.broker.core import Outgoing
from shoal.broker.shell.server import in_send_order


def _out(peer: bytes, command: bytes, job_ids: tuple[bytes, ...] = ()) -> Outgoing:
    return Outgoing(peer, P.encode(command, {}), job_ids)


def test_replies_leave_before_jobs_and_each_kind_keeps_its_order() -> None:
    job_a = _out(b"worker-1", P.JOB, (b"a" * 16,))
    ack_1 = _out(b"client-1", P.REPLY)
    job_b = _out(b"worker-2", P.JOB, (b"b" * 16,))
    ack_2 = _out(b"client-2", P.REPLY)
    error = _out(b"client-3", P.ERROR)
    assert in_send_order([job_a, ack_1, job_b, ack_2, error]) == [ack_1, ack_2, error, job_a, job_b]


def test_a_lone_message_and_a_pass_of_one_kind_go_as_they_are() -> None:
    ack = _out(b"client-1", P.REPLY)
    jobs = [_out(b"worker-1", P.JOB, (b"a" * 16,)), _out(b"worker-1", P.JOB, (b"b" * 16,))]
    assert in_send_order([ack]) == [ack]
    assert in_send_order(jobs) == jobs
    assert in_send_order([]) == []
