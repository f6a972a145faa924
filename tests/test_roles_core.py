"""Authorisation in the core: which key may send which command (broker/core/commands.py).

Driven on the socket-free core with a fake clock; the shell's part (learning the key from the
CURVE handshake) is tested with real processes in the security tests.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from shoal import protocol as P
from shoal.broker.storage.memstore import MemoryStore
from shoal.broker.core.commands import ADMIN, CLIENT, ROLE_OF, WORKER, Principal, refusal
from shoal.ids import new_job_id

from test_broker_core import WORKER as WORKER_ID, Harness, Msg, dispatched, errors

pytestmark = pytest.mark.timeout(30)

APP = Principal("app", frozenset({CLIENT}))
OPS = Principal("ops", frozenset({ADMIN}))
MEDIA = Principal("media-1", frozenset({WORKER}), frozenset({"media"}))
EMAIL = Principal("email-1", frozenset({WORKER}), frozenset({"email"}))


@pytest.fixture
def core(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "data", memory=MemoryStore())


def send(core: Harness, identity: bytes, command: bytes, body: dict, who: Principal | None) -> list[Msg]:
    core.broker.handle(identity, P.encode(command, body), who)
    return core.tick()


def hello_body(group: str) -> dict:
    return {"group": group, "pid": 7, "host": "h", "slots": 1, "workflows": {"send-email": {}}, "running": []}


def enqueue_body(job_id: bytes, rid: int = 1) -> dict:
    return {"rid": rid, "jobs": [{"id": job_id, "wf": "send-email", "group": "email", "payload": P.pack({})}]}


def test_every_command_the_broker_accepts_names_a_role(core: Harness) -> None:
    assert set(core.broker._handlers) <= set(ROLE_OF)
    assert {ROLE_OF[c] for c in P.WORKER_COMMANDS} == {WORKER}
    assert ROLE_OF[P.REQUEUE] == ROLE_OF[P.CANCEL] == ADMIN


def test_security_off_allows_everything() -> None:
    for command in ROLE_OF:
        assert refusal(None, command, {"group": "x"}) is None


def test_a_client_key_enqueues_and_reads(core: Harness) -> None:
    job_id = new_job_id()
    out = send(core, b"c", P.ENQUEUE, enqueue_body(job_id), APP)
    assert [m.command for m in out if m.identity == b"c"] == [P.REPLY]
    out = send(core, b"c", P.GET, {"rid": 2, "ids": [job_id]}, APP)
    assert [m.command for m in out if m.identity == b"c"] == [P.REPLY]


def test_a_client_key_saying_hello_is_refused_and_gets_no_jobs(core: Harness) -> None:
    send(core, b"c", P.ENQUEUE, enqueue_body(new_job_id()), APP)
    out = send(core, b"intruder", P.HELLO, hello_body("email"), APP)
    err = errors(out, b"intruder")
    assert err and err[0]["code"] == P.E_FORBIDDEN and "'app'" in err[0]["message"]
    assert dispatched(out, b"intruder") == []
    assert core.broker.workers.get(b"intruder") is None


def test_a_media_worker_key_may_not_serve_email(core: Harness) -> None:
    send(core, b"c", P.ENQUEUE, enqueue_body(new_job_id()), APP)
    out = send(core, WORKER_ID, P.HELLO, hello_body("email"), MEDIA)
    err = errors(out, WORKER_ID)
    assert err[0]["code"] == P.E_FORBIDDEN and "'media-1'" in err[0]["message"] and "media" in err[0]["message"]
    assert dispatched(out) == []
    out = send(core, WORKER_ID, P.HELLO, hello_body("email"), EMAIL)
    assert len(dispatched(out)) == 1  # the right key gets the job


def test_admin_commands_need_an_admin_key(core: Harness) -> None:
    job_id = new_job_id()
    send(core, b"c", P.ENQUEUE, enqueue_body(job_id), APP)
    for command, body in ((P.CANCEL, {"rid": 5, "id": job_id}), (P.REQUEUE, {"rid": 6, "ids": [job_id]})):
        out = send(core, b"c", command, body, APP)
        err = errors(out, b"c")
        assert err and err[0]["code"] == P.E_FORBIDDEN and err[0]["rid"] == body["rid"]
    assert core.state(job_id) == "pending"  # nothing was applied
    out = send(core, b"ops", P.CANCEL, {"rid": 7, "id": job_id}, OPS)
    assert [m.command for m in out if m.identity == b"ops"] == [P.REPLY]
    assert core.state(job_id) == "cancelled"


def test_an_admin_key_may_do_what_a_client_may(core: Harness) -> None:
    out = send(core, b"ops", P.ENQUEUE, enqueue_body(new_job_id()), OPS)
    assert [m.command for m in out if m.identity == b"ops"] == [P.REPLY]


def test_a_worker_key_may_not_enqueue_as_a_client(core: Harness) -> None:
    out = send(core, b"w", P.ENQUEUE, enqueue_body(new_job_id()), EMAIL)
    assert errors(out, b"w")[0]["code"] == P.E_FORBIDDEN


def test_a_key_with_two_roles_may_do_both(core: Harness) -> None:
    both = Principal("both", frozenset({CLIENT, WORKER}), frozenset({"email"}))
    send(core, b"b", P.ENQUEUE, enqueue_body(new_job_id()), both)
    out = send(core, b"b", P.HELLO, hello_body("email"), both)
    assert len(dispatched(out, b"b")) == 1
