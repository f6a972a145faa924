"""What the broker does for clients: enqueue, get, wait, stats, dead letters, requeue."""
from __future__ import annotations

import os
import socket
from typing import Any, Callable

from shoal import jobs as J
from shoal import protocol as P
from shoal.errors import ProtocolError
from shoal.ids import id_to_str
from shoal.protocol import field

from .core import BrokerCore, Outgoing

MAX_LIST = 10_000
MAX_WORKER_JOBS = 100  # job ids listed per worker in WORKERS; ``busy`` has the full count


class ClientCommands(BrokerCore):
    """Handlers for the commands clients send."""

    def handlers(self) -> dict[bytes, Callable[[bytes, dict[str, Any]], None]]:
        table = super().handlers()
        table.update({P.ENQUEUE: self._on_enqueue, P.GET: self._on_get, P.WAIT: self._on_wait,
                      P.STATS: self._on_stats, P.DEAD: self._on_dead, P.REQUEUE: self._on_requeue,
                      P.JOBS: self._on_jobs, P.WORKERS: self._on_workers})
        return table

    # --- enqueue ---------------------------------------------------------------
    def _on_enqueue(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        items = field(body, "jobs", list)
        parsed = [self._parse_job(item) for item in items]
        refused = self.admission(parsed)
        if refused:
            self.outbox.append(Outgoing(identity, P.encode(P.ERROR, {"rid": rid, **refused})))
            return
        unseen = [p["id"] for p in parsed if p["id"] not in self.jobs and p["id"] not in self.batch.jobs]
        stored = self.store.has_jobs(unseen) if unseen else set()
        stored.update(p["id"] for p in parsed if self.batch.jobs.get(p["id"]) is not None)
        now = self.clock.wall_ms()
        existed: list[bool] = []
        ids: list[bytes] = []
        deduplicated: list[bool] = []
        for item in parsed:
            holder = self.key_holder(item["key"]) if item["key"] else None
            if item["id"] in self.jobs or item["id"] in stored:
                existed.append(True)  # a re-send whose first ack was lost: never a second job
                ids.append(item["id"])
                deduplicated.append(False)
            elif holder is not None:
                existed.append(True)  # the key is taken: the caller gets the job that holds it
                ids.append(holder)
                deduplicated.append(True)
            else:
                existed.append(False)
                ids.append(item["id"])
                deduplicated.append(False)
                self._create(item, now)
        self.reply(identity, rid, existed=existed, ids=ids, deduplicated=deduplicated)

    def admission(self, parsed: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The one check every way a job is born passes (enqueue, enqueue_many, step children,
        cron ticks): storage room, a group whose workers cannot start, a group at its
        max_pending. None when the jobs may be created, else the ERROR body (code, message).
        Dedup keys are the job table's rule, applied where each job is created."""
        incoming = sum(len(p["payload"]) + 512 for p in parsed)
        no_room = self.storage_refusal(incoming)
        if no_room:
            return {"code": P.E_STORAGE, "message": no_room}
        refused = self._refusal(parsed)
        if refused:
            return {"code": P.E_GROUP_UNHEALTHY, "message": refused}
        saturated = self._saturation(parsed)
        if saturated:
            return self._saturated_error(*saturated)
        self.storage_used += 2 * incoming  # until the next measurement: job record + log entry
        self.storage_room -= 2 * incoming
        return None

    def _saturation(self, parsed: list[dict[str, Any]]) -> tuple[str, int, int] | None:
        """(group, backlog, max_pending) of a group this request would push past its max_pending."""
        adding: dict[str, int] = {}
        for item in parsed:
            group = item["group"] or (self.routes.get(item["wf"]) or {}).get("group")
            if group:
                adding[group] = adding.get(group, 0) + 1
        for group, n in adding.items():
            limit = self.group_settings(group).max_pending
            queue = self.ready.get(group)
            backlog = len(queue) if queue else 0
            if limit and backlog + n > limit:
                return group, backlog, limit
        return None

    def _saturated_error(self, group: str, backlog: int, limit: int) -> dict[str, Any]:
        done = self.counters.get(group, {}).get("completed", 0)
        # a rough hint: how long the group needs to work off the overflow at one job per slot per second
        slots = max(1, sum(w.slots for w in self.workers.in_group(group)))
        retry_after_s = round(max(0.1, (backlog - limit + 1) / slots), 2)
        message = (f"group {group!r} has {backlog} pending jobs, at its max_pending of {limit}; "
                   f"retry after about {retry_after_s}s ({done} completed so far)")
        return {"code": P.E_SATURATED, "message": message, "retry_after_s": retry_after_s}

    def _refusal(self, parsed: list[dict[str, Any]]) -> str | None:
        if self.supervisor is None:
            return None
        now = self.clock.mono()
        for item in parsed:
            group = item["group"] or (self.routes.get(item["wf"]) or {}).get("group")
            reason = self.supervisor.refusal(group, now) if group else None
            if reason:
                return reason
        return None

    def _parse_job(self, item: Any) -> dict[str, Any]:
        """One job of an ENQUEUE, checked. The common case (well-formed) takes a fast path;
        anything odd goes through the field-by-field checks, which name the problem."""
        if type(item) is dict:
            get = item.get
            job_id, wf, payload = get("id"), get("wf"), get("payload")
            group, delay, priority = get("group"), get("delay_ms", 0), get("priority", 0)
            retries, key, key_ttl = get("retries"), get("key"), get("key_ttl_ms", 0)
            if (type(job_id) is bytes and len(job_id) == 16 and type(wf) is str and wf
                    and type(payload) is bytes and (group is None or type(group) is str)
                    and type(delay) is int and type(priority) is int and (retries is None or type(retries) is int)
                    and (key is None or type(key) is str) and type(key_ttl) is int):
                return {"id": job_id, "wf": wf, "payload": payload, "group": group, "delay_ms": delay,
                        "priority": priority, "retries": retries, "key": key, "key_ttl_ms": key_ttl}
        return self._parse_job_checked(item)

    def _parse_job_checked(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise ProtocolError("each job must be a map", item)
        job_id = field(item, "id", bytes)
        if len(job_id) != 16:
            raise ProtocolError(f"job id must be 16 bytes, got {len(job_id)}", job_id)
        workflow = field(item, "wf", str)
        if not workflow:
            raise ProtocolError("workflow name is empty", item)
        return {
            "id": job_id, "wf": workflow, "payload": field(item, "payload", bytes),
            "group": field(item, "group", str, None), "delay_ms": field(item, "delay_ms", int, 0),
            "priority": field(item, "priority", int, 0), "retries": field(item, "retries", int, None),
            "key": field(item, "key", str, None), "key_ttl_ms": field(item, "key_ttl_ms", int, 0),
        }

    def _create(self, item: dict[str, Any], now_ms: int, parent: bytes | None = None) -> None:
        group = item["group"]
        if group is None:
            route = self.routes.get(item["wf"])
            group = route["group"] if route else ""  # "" = unrouted until a worker announces it
        job = J.Job(id=item["id"], workflow=item["wf"], group=group, payload=item["payload"],
                    seq=self._seq, priority=item["priority"], key=item["key"],
                    max_retries=item["retries"], created_ms=now_ms, parent=parent,
                    key_ttl_ms=max(0, item.get("key_ttl_ms", 0)))
        self._seq += 1
        if group:
            self.known_groups.add(group)
        if item["delay_ms"] > 0:
            job.state = J.SCHEDULED
            job.due_ms = now_ms + item["delay_ms"]
            self.schedule_at(job, job.due_ms)
        self.jobs[job.id] = job
        self.active[job.group] = self.active.get(job.group, 0) + 1
        record = job.to_record()
        self.batch.jobs[job.id] = record
        self.batch.log.append(("enqueue", job.id, record))
        if job.state == J.PENDING:
            self._queue(job)
        if job.key:
            self._hold_key(job)
        self._emit("queued", job)

    # --- reading -----------------------------------------------------------------
    def record_of(self, job_id: bytes) -> dict[str, Any] | None:
        """The current record of a job, active or finished."""
        job = self.jobs.get(job_id)
        if job is not None:
            return J.public_view(job.to_record())
        if job_id in self.batch.jobs:  # finished in this pass, not committed yet
            record = self.batch.jobs[job_id]
        else:
            record = self.store.get_job(job_id)
        return None if record is None else J.public_view(record)

    def _on_get(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        ids = field(body, "ids", list)
        self.reply(identity, rid, jobs=[self.record_of(i) if isinstance(i, bytes) and len(i) == 16 else None
                                        for i in ids])

    def _on_wait(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        job_id = P.job_id_field(body)
        if job_id in self.jobs:
            if not self.add_waiter(job_id, identity, rid):
                self.error(identity, rid, P.E_TOO_MANY_WAITS,
                           f"this client already has {self.MAX_WAITS_PER_PEER} WAITs outstanding, the most the "
                           f"broker keeps for one connection; wait for some of them to finish first")
            return
        record = self.record_of(job_id)
        if record is None:
            self.error(identity, rid, P.E_UNKNOWN_JOB, f"no job with id {job_id.hex()} (never enqueued, or expired)")
        else:
            self.reply(identity, rid, job=record)

    def _on_stats(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        self.reply(identity, rid, groups=self.stats(), unrouted={k: len(v) for k, v in self.unrouted.items() if v},
                   events=self.events_endpoint, events_dropped=self.events_dropped,
                   replies_dropped=self.replies_dropped, frames_dropped=self.strikes.dropped,
                   quarantined=len(self.strikes.quarantined))

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-group counters, from counts kept as jobs change (no walk over the jobs: cheap to poll)."""
        groups = set(self.known_groups) | set(self.ready) | set(self.workers.by_group) | set(self.dead)
        groups.discard("")
        now = self.clock.wall_ms()
        orphans_by_group: dict[str, int] = {}
        for job_id in self.orphans:
            group = self.jobs[job_id].group
            orphans_by_group[group] = orphans_by_group.get(group, 0) + 1
        for old, _ in self.superseded.values():  # a reconnected worker's old connection, briefly
            orphans_by_group[old.group] = orphans_by_group.get(old.group, 0) + len(old.leases)
        per: dict[str, dict[str, Any]] = {}
        for name in sorted(groups):
            counts = self.counters.get(name, {})
            members = self.workers.in_group(name)
            demand = self.demand(name)
            running = demand.running + orphans_by_group.get(name, 0)
            queue = self.ready.get(name)
            head = queue.peek() if queue else None
            row: dict[str, Any] = {
                "pending": demand.pending, "running": running,
                "scheduled": max(0, self.active.get(name, 0) - demand.pending - running),
                "completed": counts.get("completed", 0), "failed": counts.get("failed", 0),
                "retried": counts.get("retried", 0), "dead": len(self.dead.get(name, ())),
                "workers": len(members), "free_slots": sum(max(0, w.credit) for w in members),
                "oldest_pending_s": max(0.0, (now - self.jobs[head].created_ms) / 1000) if head is not None else 0.0}
            if self.supervisor is not None:
                row.update(self.supervisor.state_of(name, demand, self.clock.mono()))
            else:
                row["state"] = "warm" if members else "cold"
            # starving: work has waited past the threshold and nothing can take it now
            row["starvation"] = bool(row["pending"] and row["oldest_pending_s"] > self.group_settings(name).starvation_s
                                     and (row["workers"] == 0 or row["free_slots"] == 0))
            per[name] = row
        return per

    def _on_dead(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        group = field(body, "group", str, None)
        limit = field(body, "limit", int, MAX_LIST)
        groups = [group] if group is not None else sorted(self.dead)
        out: list[dict[str, Any]] = []
        for name in groups:
            for job_id in sorted(self.dead.get(name, ())):
                record = self.record_of(job_id)
                if record is not None and len(out) < limit:
                    out.append(record)
        self.reply(identity, rid, jobs=out)

    def _on_requeue(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        ids = field(body, "ids", list, [])
        if field(body, "all", bool, False):
            group = field(body, "group", str, None)
            ids = [i for g, members in self.dead.items() if group in (None, g) for i in sorted(members)]
        requeued: list[bytes] = []
        refused: list[list[Any]] = []
        for job_id in ids:
            if not (isinstance(job_id, bytes) and len(job_id) == 16):
                continue
            why = self._requeue(job_id)
            if why is None:
                requeued.append(job_id)
            else:
                refused.append([job_id, why])
        self.reply(identity, rid, requeued=requeued, refused=refused)

    def _requeue(self, job_id: bytes) -> str | None:
        """Give a dead job a fresh retry budget; None when done, else why not."""
        record = self.batch.jobs[job_id] if job_id in self.batch.jobs else self.store.get_job(job_id)
        if record is None or record.get("state") != J.DEAD:
            return "not a dead letter" if record is not None else "no such job"
        job = J.Job.from_record(record)
        holder = self.key_holder(job.key) if job.key else None
        if holder is not None and holder != job_id:  # two jobs never share a live dedup key
            return f"its dedup key {job.key!r} is held by job {id_to_str(holder)} now"
        job.move("requeue")
        job.attempts = 0  # a fresh retry budget
        job.error = job.error_kind = job.traceback = None
        job.finished_ms = 0
        job.token = 0
        self.dead.get(job.group, set()).discard(job_id)
        self.jobs[job_id] = job
        self.active[job.group] = self.active.get(job.group, 0) + 1
        self._save(job, "requeue", {"state": job.state, "attempts": 0, "error": None, "error_kind": None,
                                    "traceback": None, "finished_ms": 0, "token": 0})
        self._queue(job)
        if job.key:
            self._hold_key(job)  # active again: the key is its own until it ends
        return None

    def _on_jobs(self, identity: bytes, body: dict[str, Any]) -> None:
        rid = field(body, "rid", int)
        state = field(body, "state", str, None)
        group = field(body, "group", str, None)
        limit = min(field(body, "limit", int, 100), MAX_LIST)
        out: list[dict[str, Any]] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.seq):
            if len(out) >= limit:
                break
            if state in (None, job.state) and group in (None, job.group):
                view = J.public_view(job.to_record())
                view.pop("payload", None)
                out.append(view)
        self.reply(identity, rid, jobs=out)

    # --- workers -----------------------------------------------------------------
    def _on_workers(self, identity: bytes, body: dict[str, Any]) -> None:
        """Connected workers (of ``group``), with what each holds and how long it has been silent."""
        rid = field(body, "rid", int)
        group = field(body, "group", str, None)
        now = self.clock.mono()
        here = socket.gethostname()
        out: list[dict[str, Any]] = []
        for w in sorted(self.workers, key=lambda w: (w.group, w.name)):
            if group not in (None, w.group):
                continue
            row: dict[str, Any] = {
                "name": w.name, "group": w.group, "host": w.host, "pid": w.pid, "server": w.server,
                "slots": w.slots, "busy": len(w.leases), "jobs": sorted(w.leases)[:MAX_WORKER_JOBS],
                "workflows": list(w.workflows), "last_seen_s": round(max(0.0, now - w.last_seen), 3)}
            rss = _rss_bytes(w.pid) if w.host == here else None
            if rss is not None:
                row["rss_bytes"] = rss
            out.append(row)
        self.reply(identity, rid, workers=out)


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes(pid: int) -> int | None:
    """Resident memory of a worker on this host (Linux /proc), or None where it cannot be known."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None
