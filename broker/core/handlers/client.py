"""What the broker does for clients' reads and returns: GET, WAIT, DEAD, JOBS, REQUEUE."""
from __future__ import annotations

from typing import Any

from shoal import jobs as J
from shoal import messages as M
from shoal import protocol as P
from shoal.ids import id_to_str

from ..state import Core


def _is_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == 16


def on_get(core: Core, identity: bytes, msg: M.Get) -> None:
    record_of = core.jobs.record_of
    core.effects.reply(identity, msg.rid, jobs=[record_of(i) if _is_id(i) else None for i in msg.ids])


def on_wait(core: Core, identity: bytes, msg: M.JobRequest) -> None:
    if msg.id in core.jobs.jobs:
        if not core.waiters.add(msg.id, identity, msg.rid):
            core.effects.error(identity, msg.rid, P.E_TOO_MANY_WAITS,
                               f"this client already has {core.waiters.max_per_peer} WAITs outstanding, the most "
                               f"the broker keeps for one connection; wait for some of them to finish first")
        return
    record = core.jobs.record_of(msg.id)
    if record is None:
        core.effects.error(identity, msg.rid, P.E_UNKNOWN_JOB,
                           f"no job with id {msg.id.hex()} (never enqueued, or expired)")
    else:
        core.effects.reply(identity, msg.rid, job=record)


def on_dead(core: Core, identity: bytes, msg: M.Dead) -> None:
    dead = core.jobs.dead
    groups = [msg.group] if msg.group is not None else sorted(dead)
    out: list[dict[str, Any]] = []
    for name in groups:
        for job_id in sorted(dead.get(name, ())):
            record = core.jobs.record_of(job_id)
            if record is not None and len(out) < msg.limit:
                out.append(record)
    core.effects.reply(identity, msg.rid, jobs=out)


def on_jobs(core: Core, identity: bytes, msg: M.Jobs) -> None:
    out: list[dict[str, Any]] = []
    for job in sorted(core.jobs.jobs.values(), key=lambda j: j.seq):
        if len(out) >= msg.limit:
            break
        if msg.state in (None, job.state) and msg.group in (None, job.group):
            view = J.public_view(job.to_record())
            view.pop("payload", None)
            out.append(view)
    core.effects.reply(identity, msg.rid, jobs=out)


def on_requeue(core: Core, identity: bytes, msg: M.Requeue) -> None:
    ids = list(msg.ids)
    if msg.all:
        ids = [i for g, members in core.jobs.dead.items() if msg.group in (None, g) for i in sorted(members)]
    requeued: list[bytes] = []
    refused: list[list[Any]] = []
    for job_id in ids:
        if not _is_id(job_id):
            continue
        why = requeue(core, job_id)
        if why is None:
            requeued.append(job_id)
        else:
            refused.append([job_id, why])
    core.effects.reply(identity, msg.rid, requeued=requeued, refused=refused)


def requeue(core: Core, job_id: bytes) -> str | None:
    """A dead job back to pending with a fresh retry budget, if admission lets it be born again;
    None when done, else why not."""
    job, why = core.jobs.dead_letter(job_id)
    if job is None:
        return why
    holder = core.jobs.key_holder(job.key) if job.key else None
    if holder is not None and holder != job_id:  # two jobs never share a live dedup key
        return f"its dedup key {job.key!r} is held by job {id_to_str(holder)} now"
    refused = core.admission.refusal([M.JobItem(job.id, job.workflow, job.payload, job.group or None)])
    if refused:
        return str(refused["message"])
    core.jobs.requeue(job)
    return None
