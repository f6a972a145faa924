"""How every job is born: a client's ENQUEUE, a step's children, a cron tick, all through ``admit``.

``admit`` applies admission's one check to the jobs that would be new (an id already known is a
re-send, a held dedup key gives the caller the holder), then creates them in order, so two
items of one request with the same key make one job.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoal import messages as M

from ..state import Core

Outcome = tuple[list[bool], list[bytes], list[bool]]  # existed, ids, deduplicated (one each per item)


def admit(core: Core, items: Sequence[M.JobItem], parent: bytes | None = None) -> dict[str, Any] | Outcome:
    """Create the new jobs among ``items``, or refuse them all: the ERROR body (code, message)."""
    admission, jobs = core.admission, core.jobs
    known = admission.known(items)
    key_holder = jobs.key_holder  # the dedup rule is the job table's (checked only for items with a key)
    new = items
    if known or any(i.key for i in items):
        new = [i for i in items if i.id not in known and not (i.key and key_holder(i.key))]
    if new:
        refused = admission.refusal(new)
        if refused:
            return refused
    now = core.clock.wall_ms()
    if new is items and len({i.id for i in items}) == len(items):
        # every item is a new job (``new is items``: no id known, no dedup key; and none twice): made in one go
        jobs.create_many(items, now, parent)
        none = [False] * len(items)
        return none, [i.id for i in items], list(none)
    existed: list[bool] = []
    ids: list[bytes] = []
    deduplicated: list[bool] = []
    for item in items:
        holder = key_holder(item.key) if item.key else None
        if item.id in known or item.id in jobs.jobs:
            existed.append(True)  # a re-send whose first ack was lost: never a second job
            ids.append(item.id)
            deduplicated.append(False)
        elif holder is not None:
            existed.append(True)  # the key is taken: the caller gets the job that holds it
            ids.append(holder)
            deduplicated.append(True)
        else:
            existed.append(False)
            ids.append(item.id)
            deduplicated.append(False)
            jobs.create(item, now, parent)
    return existed, ids, deduplicated


def on_enqueue(core: Core, identity: bytes, msg: M.Enqueue) -> None:
    outcome = admit(core, msg.jobs)
    if isinstance(outcome, dict):
        core.effects.refuse(identity, msg.rid, outcome)
        return
    existed, ids, deduplicated = outcome
    core.effects.reply(identity, msg.rid, existed=existed, ids=ids, deduplicated=deduplicated)
