"""Outcomes on their way to the broker, kept until the broker surely has them.

The broker does not acknowledge DONE/FAIL/SUSPEND, so two things are kept here:
- what was sent lately, re-sent after a reconnect (a restarted broker accepts a result
  by its lease token; one that already has it ignores the repeat);
- results the broker answered with DEFER (it could not store them yet, e.g. a full
  disk): held, with their jobs still running on the broker, and sent again every
  ``retry_ms`` until a re-send is met by silence instead of another DEFER.
The worker shell owns the socket; this module only decides what to send and when.
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any

from shoal import protocol as P
from shoal.ids import id_to_str

from .runner import KIND_LEASE_LOST, KIND_SUSPEND, Outcome

log = logging.getLogger("shoal.worker")

MAX_RECENT = 10_000
NEVER = float("inf")


BATCH_BYTES = 4 << 20  # a DONE or FAIL carries at most about this much: a re-send of many big
                       # results after a reconnect must stay under the broker's message limit


def _batches(entries: list[Any], size_of: Any) -> list[list[Any]]:
    out: list[list[Any]] = []
    batch: list[Any] = []
    total = 0
    for entry in entries:
        size = size_of(entry)
        if batch and total + size > BATCH_BYTES:
            out.append(batch)
            batch, total = [], 0
        batch.append(entry)
        total += size
    if batch:
        out.append(batch)
    return out


def encode_outcomes(outcomes: list[Outcome]) -> list[list[bytes]]:
    """The messages that report ``outcomes``: DONEs and FAILs of at most ``BATCH_BYTES`` each,
    one SUSPEND per suspension."""
    done = [[o.job_id, o.token, o.value, o.duration_ms] for o in outcomes if o.ok]
    failed = [{"id": o.job_id, "token": o.token, "kind": o.kind, "error": o.error,
               "traceback": o.traceback, "duration_ms": o.duration_ms}
              for o in outcomes if not o.ok and o.kind not in (KIND_SUSPEND, KIND_LEASE_LOST)]
    messages = []
    for batch in _batches(done, lambda d: len(d[2]) + 64):
        messages.append(P.encode(P.DONE, {"results": batch}))
    for batch in _batches(failed, lambda f: len(f["error"]) + len(f["traceback"] or "") + 128):
        messages.append(P.encode(P.FAIL, {"failures": batch}))
    for o in outcomes:
        if o.suspend is not None:
            messages.append(P.encode(P.SUSPEND, {"id": o.job_id, "token": o.token, "name": o.suspend.name,
                                                 "due_ms": o.suspend.due_ms, "wait_on": o.suspend.wait_on or []}))
    return messages


def log_outcome(o: Outcome) -> None:
    """One line per finished run in the worker's terminal (Celery's received / succeeded / failed)."""
    if o.ok and not log.isEnabledFor(logging.INFO):
        return  # id_to_str alone costs ~1 us a job, for a line nobody sees
    job = id_to_str(o.job_id)
    if o.ok:
        log.info("job %s (%s) succeeded in %d ms", job, o.workflow, o.duration_ms)
    elif o.kind == KIND_SUSPEND:
        log.info("job %s (%s) suspended at step %r after %d ms", job, o.workflow,
                 o.suspend.name if o.suspend else "?", o.duration_ms)
    elif o.kind == KIND_LEASE_LOST:
        log.warning("job %s (%s) lost its lease (it was handed to another worker); its outcome is dropped",
                    job, o.workflow)
    else:
        log.warning("job %s (%s) failed in %d ms (%s): %s", job, o.workflow, o.duration_ms, o.kind, o.error)


@dataclass
class Held:
    """A result the broker deferred: re-sent at ``resend_at``, let go at ``release_at``."""

    outcome: Outcome
    resend_at: float
    release_at: float = NEVER


class Outbox:
    """Recently sent outcomes and deferred results, by job id (times on ``time.monotonic()``)."""

    def __init__(self, horizon_s: float, quiet_s: float) -> None:
        self.horizon_s = horizon_s   # how far back a reconnect re-sends
        self.quiet_s = quiet_s       # a re-sent result met by no DEFER for this long is stored
        self._recent: collections.OrderedDict[bytes, tuple[float, Outcome]] = collections.OrderedDict()
        self.held: dict[bytes, Held] = {}
        self._warned: set[bytes] = set()  # jobs whose deferral was logged (one warning per job)
        self._heard_at = 0.0         # when the broker was last heard from (0: not yet)

    def sent(self, outcomes: list[Outcome], now: float) -> None:
        """Remember outcomes just sent, for a re-send after a reconnect."""
        for o in outcomes:
            self._recent.pop(o.job_id, None)
            self._recent[o.job_id] = (now, o)
        self._prune(now)

    def heard(self, now: float) -> None:
        """The broker was heard from: outcomes sent well before this it surely read."""
        self._heard_at = now

    def _prune(self, now: float) -> None:
        # Measured back from the last time the broker was heard, not from now: a broker frozen
        # longer than the horizon (SIGSTOP 15 s) must still get what was sent just before it froze.
        horizon = min(now, self._heard_at or now) - self.horizon_s
        while self._recent and (len(self._recent) > MAX_RECENT or next(iter(self._recent.values()))[0] < horizon):
            job_id, _ = self._recent.popitem(last=False)
            if job_id not in self.held:
                self._warned.discard(job_id)

    def to_resend(self, now: float) -> list[Outcome]:
        """Everything to send again on a new connection: recent outcomes and every held result."""
        self._prune(now)
        again = [o for _, o in self._recent.values() if o.job_id not in self.held]
        for held in self.held.values():
            again.append(held.outcome)
            held.resend_at, held.release_at = NEVER, now + self.quiet_s
        return again

    def defer(self, body: dict[str, Any], now: float) -> list[Outcome]:
        """Hold the results a DEFER names; returns those deferred for the first time (to warn about).

        Entries for results this worker does not have (or under another token) are
        ignored: a stale DEFER must not resurrect a job.
        """
        retry_s = max(0.05, float(body.get("retry_ms") or 1000) / 1000)
        first: list[Outcome] = []
        entries = body.get("results")
        for entry in entries if isinstance(entries, list) else []:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
                continue
            job_id, token = entry
            outcome = self._outcome_of(job_id)
            if outcome is None or not outcome.ok or outcome.token != token:
                continue
            self.held[job_id] = Held(outcome, resend_at=now + retry_s)
            if job_id not in self._warned:
                self._warned.add(job_id)
                first.append(outcome)
        return first

    def _outcome_of(self, job_id: object) -> Outcome | None:
        if not isinstance(job_id, bytes):
            return None
        held = self.held.get(job_id)
        if held is not None:
            return held.outcome
        recent = self._recent.get(job_id)
        return recent[1] if recent is not None else None

    def due(self, now: float) -> list[Outcome]:
        """Held results whose retry time has come: send them now (then wait for a DEFER or silence)."""
        due = [h for h in self.held.values() if h.resend_at <= now]
        for held in due:
            held.resend_at, held.release_at = NEVER, now + self.quiet_s
        outcomes = [h.outcome for h in due]
        self.sent(outcomes, now)
        return outcomes

    def released(self, now: float) -> list[Outcome]:
        """Held results re-sent and met by no DEFER within ``quiet_s``: the broker stored them."""
        done = [job_id for job_id, h in self.held.items() if h.release_at <= now]
        outcomes = [self.held.pop(job_id).outcome for job_id in done]
        return outcomes
