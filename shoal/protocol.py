"""The wire format, in one place: broker, worker and client all speak through here.

A message is three ZeroMQ frames: ``[VERSION, command, msgpack body]``. The body is
always a map. Requests from clients carry ``rid`` (a request id chosen by the client)
and every reply carries it back, so many requests can be in flight on one socket.
Nobody else builds or parses frames by hand.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import msgpack

from .errors import ProtocolError

VERSION = b"SHOAL1"
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# client -> broker
ENQUEUE = b"ENQUEUE"    # {rid, jobs: [{id, wf, payload, group?, delay_ms?, priority?, retries?, key?, key_ttl_ms?}]}
                        #   REPLY {rid, existed: [bool], ids: [id], deduplicated: [bool]}
GET = b"GET"            # {rid, ids}: job records, now
WAIT = b"WAIT"          # {rid, id}: reply when the job is final (pushed, never polled)
STATS = b"STATS"        # {rid}
DEAD = b"DEAD"          # {rid, group?, limit?}
REQUEUE = b"REQUEUE"    # {rid, ids?, all?, group?}: REPLY {rid, requeued: [id], refused: [[id, why]]}
JOBS = b"JOBS"          # {rid, state?, group?, limit?}
STEPS = b"STEPS"        # {rid, id}: the stored steps of a job
HISTORY = b"HISTORY"    # {rid, id}: the job's history from the log, oldest first ({entries, skipped})
CANCEL = b"CANCEL"      # {rid, id}: cancel a job (broker -> worker too: {id, token})
CRON = b"CRON"          # {rid}: cron entries with their last and next fire times
STORAGE = b"STORAGE"    # {rid}: sizes of the state, the log and the snapshots
WORKERS = b"WORKERS"    # {rid, group?}: connected workers ({workers: [{name, group, host, pid, server, slots,
                        # busy, jobs, workflows, last_seen_s, rss_bytes?}]}); for the dashboard and operators
# broker -> client
REPLY = b"REPLY"        # {rid, ...}
ERROR = b"ERROR"        # {rid?, code, message}
# worker -> broker
HELLO = b"HELLO"        # {group, pid, host, server, slots, workflows: {name: {retries?}}, running}
READY = b"READY"        # {slots}: the worker's advertised slot count changed
DONE = b"DONE"          # {results: [[id, token, value, duration_ms]]}: value is the msgpack-packed result
FAIL = b"FAIL"          # {failures: [{id, token, kind, error, traceback?, duration_ms?}]} (kind "permanent": no retry)
RETURN = b"RETURN"      # {jobs: [[id, token]]}: unfinished jobs handed back on drain
STEP = b"STEP"          # {rid, id, token, name, record, enqueue?}: persist a step result (REPLY once committed)
SUSPEND = b"SUSPEND"    # {id, token, name, due_ms?, wait_on?}: give the slot back until a time or children
HEARTBEAT = b"HEARTBEAT"  # {} both ways
BYE = b"BYE"            # {}: the worker is leaving
# broker -> worker
JOB = b"JOB"            # {jobs: [{id, token, wf, payload, attempt, max_retries, steps?: {name: record}}]}
RECONNECT = b"RECONNECT"  # {}: the broker does not know this worker; say HELLO again
DEFER = b"DEFER"        # {results: [[id, token]], reason, retry_ms}: results not stored yet (storage
                        # full); the worker keeps them, the jobs stay running, and it sends them again

CLIENT_COMMANDS = frozenset({ENQUEUE, GET, WAIT, STATS, DEAD, REQUEUE, JOBS, STEPS, CANCEL, HISTORY, CRON, STORAGE,
                             WORKERS})
WORKER_COMMANDS = frozenset({HELLO, READY, DONE, FAIL, RETURN, HEARTBEAT, BYE, STEP, SUSPEND})
BROKER_COMMANDS = frozenset({REPLY, ERROR, JOB, HEARTBEAT, RECONNECT, CANCEL, DEFER})
KNOWN_COMMANDS = CLIENT_COMMANDS | WORKER_COMMANDS | BROKER_COMMANDS
# Commands whose bodies are a few fields: a bigger one is refused before it is decoded, so a
# hostile peer cannot make the broker unpack megabytes to find a wrong field.
SMALL_BODY_COMMANDS = frozenset({WAIT, STATS, DEAD, JOBS, STEPS, HISTORY, CANCEL, CRON, STORAGE, WORKERS,
                                 READY, HEARTBEAT, BYE})
SMALL_BODY_BYTES = 64 * 1024

# Error codes the broker sends back in ERROR replies.
E_PROTOCOL = "protocol"
E_TOO_LARGE = "too_large"
E_BAD_REQUEST = "bad_request"
E_UNKNOWN_JOB = "unknown_job"
E_STORAGE = "storage"
E_INTERNAL = "internal"
E_GROUP_UNHEALTHY = "group_unhealthy"
E_STALE_LEASE = "stale_lease"
E_SATURATED = "saturated"
E_BUSY = "busy"  # the broker is doing this peer's previous request of the kind (HISTORY); ask again
E_FORBIDDEN = "forbidden"  # the sender's key may not send this command (or serve this group)
E_TOO_MANY_WAITS = "too_many_waits"  # a client has too many WAITs outstanding (limit in the message)


def pack(obj: Any) -> bytes:
    """Encode with msgpack (bin for bytes, str for text); raises TypeError on the unencodable."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def packer() -> Callable[[Any], bytes]:
    """``pack`` for many objects in a row: one Packer for them all (``packb`` makes one per
    call), the same bytes. Not to share between threads."""
    pack_one: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
    return pack_one


def unpack(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Decode msgpack with limits tied to the input's real size, so a hostile peer
    cannot make us allocate much more than it sent."""
    if len(data) > max_bytes:
        raise ValueError(f"{len(data)} bytes is over the limit of {max_bytes}")
    size = len(data)
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        max_str_len=size,
        max_bin_len=size,
        max_array_len=size,
        max_map_len=size // 2,
        max_ext_len=0,
    )


def encode(command: bytes, body: Mapping[str, Any]) -> list[bytes]:
    """Frames for one message."""
    return [VERSION, command, pack(body)]


def decode(frames: list[bytes], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[bytes, dict[str, Any]]:
    """Parse ``[version, command, body]``; any flaw raises ``ProtocolError``.

    The error's ``code`` attribute tells the broker which error reply to send.
    """
    if len(frames) != 3:
        raise _error(E_PROTOCOL, f"expected 3 frames [version, command, body], got {len(frames)}", frames)
    version, command, body = frames
    if version != VERSION:
        raise _error(E_PROTOCOL, f"unknown protocol version {bytes(version[:32])!r}, expected {VERSION!r}", version)
    if command not in KNOWN_COMMANDS:
        raise _error(E_PROTOCOL, f"unknown command {bytes(command[:32])!r}", command)
    if command in SMALL_BODY_COMMANDS and len(body) > SMALL_BODY_BYTES:
        raise _error(E_TOO_LARGE, f"a {command.decode()} body of {len(body)} bytes is over the {SMALL_BODY_BYTES} "
                     f"bytes such a message needs", len(body))
    if len(body) > max_bytes:
        err = _error(E_TOO_LARGE, f"message body of {len(body)} bytes is over the limit of {max_bytes} bytes", len(body))
        err.size = len(body)  # type: ignore[attr-defined]  # lets the sender match the refusal to its request
        raise err
    try:
        value = unpack(body, max_bytes)
    except Exception as exc:  # msgpack raises several unrelated types
        raise _error(E_PROTOCOL, f"malformed msgpack body for {command.decode()}: {exc}", bytes(body[:64])) from None
    if not isinstance(value, dict):
        raise _error(E_PROTOCOL, f"body of {command.decode()} must be a map, got {type(value).__name__}", value)
    return command, value


def _error(code: str, reason: str, received: object) -> ProtocolError:
    err = ProtocolError(reason, received)
    err.code = code  # type: ignore[attr-defined]
    return err


def job_id_field(body: Mapping[str, Any], name: str = "id") -> bytes:
    """A 16-byte job id field; anything else raises ProtocolError."""
    value = field(body, name, bytes)
    if len(value) != 16:
        raise _error(E_BAD_REQUEST, f"field {name!r} must be a 16-byte job id, got {len(value)} bytes", value)
    return bytes(value)


def field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """Read one field of a decoded body, checking its type; a flaw raises ProtocolError."""
    if name not in body:
        if default is ...:
            raise _error(E_BAD_REQUEST, f"missing field {name!r}", dict(body))
        return default
    value = body[name]
    if default is not ... and value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _error(E_BAD_REQUEST, f"field {name!r} must be {names}, got {type(value).__name__}", value)
    return value
