"""A history checker for crash tests: what clients were told against what the broker did.

``check_history`` takes the ids clients got acknowledged, a connected ``Client`` and the
lines of ``record.log`` (the ``record`` workflow appends its job id there on every run),
and returns the problems it finds (an empty list when the history is sound):

- every acknowledged job ended ``completed`` or ``dead`` (``client.wait`` on each);
- every job that ran (``record.log``) was sent by a client; with ``exact_total`` the
  broker's finished counters add up to the jobs clients created, so no job exists that
  nobody sent and none was created twice;
- one job per dedup key, when keys were used (``keys``: acked id -> the key asked for);
- no job left ``running`` (no lease left hanging) and no active job nobody sent.

Ids may be given in any form ``uuid.UUID`` accepts (the client's 8-4-4-4-12 text,
or the 32 hex digits ``record.log`` holds).
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError

FINAL = ("completed", "dead")
ACTIVE = ("pending", "scheduled", "running")


def norm(job_id: str | bytes) -> str:
    """One spelling for a job id: 32 lowercase hex digits."""
    if isinstance(job_id, bytes) and len(job_id) == 16:
        return job_id.hex()
    if isinstance(job_id, bytes):
        job_id = job_id.decode()
    return uuid.UUID(job_id.strip()).hex


def _ids(values: Iterable[str]) -> list[str]:
    return [norm(v) for v in values if v and str(v).strip()]


RecordLines = Iterable[str] | Path | Callable[[], Iterable[str]]


def _read(record_log_lines: RecordLines) -> list[str]:
    if isinstance(record_log_lines, Path):
        return record_log_lines.read_text().splitlines() if record_log_lines.exists() else []
    if callable(record_log_lines):
        return list(record_log_lines())
    return list(record_log_lines)


def check_history(acked_ids: Iterable[str], client: Any, record_log_lines: RecordLines, *,
                  sent_ids: Iterable[str] = (), keys: Mapping[str, str] | None = None,
                  recorded_workflows: Iterable[str] = ("record",), exact_total: bool = True,
                  final_states: Iterable[str] = FINAL, wait_timeout: float = 60.0) -> list[str]:
    """Problems with this history (empty when fine).

    ``record_log_lines``: the lines, or (better) the file's ``Path`` or a callable giving
    them, read only after every acked job is final (a job's line is written before it
    completes, so read late nothing is missed). ``sent_ids``: ids a client sent whose ack it may never have had (they may or may not
    exist). ``keys``: acked id -> the dedup key its enqueue carried. ``recorded_workflows``:
    workflows whose every completed job must appear in ``record_log_lines`` (at least once).
    ``exact_total``: the cluster ran only these clients' jobs, so the broker's counters of
    finished jobs must lie between the distinct acked ids and acked + sent.
    """
    problems: list[str] = []
    acked = list(dict.fromkeys(_ids(acked_ids)))       # distinct, in ack order
    acked_set = set(acked)
    sent = set(_ids(sent_ids)) | acked_set
    final = set(final_states)
    recorded = set(recorded_workflows)
    # every acknowledged job ended completed or dead
    results: dict[str, Any] = {}
    for job_id in acked:
        try:
            result = client.wait(job_id, timeout=wait_timeout)
        except ShoalError as exc:
            problems.append(f"acked job {job_id} never finished: {type(exc).__name__}: {exc}")
            continue
        results[job_id] = result
        if result.status not in final:
            problems.append(f"acked job {job_id} ended {result.status!r}, not one of {sorted(final)}")
    ran = set(_ids(_read(record_log_lines)))  # after the waits: every finished run has written its line
    for job_id, result in results.items():
        if result.status == "completed" and result.workflow in recorded and job_id not in ran:
            problems.append(f"acked job {job_id} ({result.workflow}) is completed but never ran (not in record.log)")

    # every job that ran was sent by a client
    for job_id in sorted(ran - sent):
        problems.append(f"job {job_id} ran (record.log) but no client sent it")

    problems += _dedup_problems(keys or {}, results)
    active = _active_problems(client, sent, problems)
    if exact_total:
        problems += _total_problems(client, acked, sent, active)
    return problems


def _dedup_problems(keys: Mapping[str, str], results: Mapping[str, Any]) -> list[str]:
    """One job per dedup key, and each acked job holds the key its enqueue carried."""
    problems: list[str] = []
    by_key: dict[str, set[str]] = {}
    for job_id, key in keys.items():
        by_key.setdefault(key, set()).add(norm(job_id))
    for key, holders in sorted(by_key.items()):
        if len(holders) > 1:
            problems.append(f"dedup key {key!r} has {len(holders)} jobs: {sorted(holders)}")
        for job_id in holders:
            result = results.get(job_id)
            if result is not None and result.key != key:
                problems.append(f"job {job_id} was acked for key {key!r} but holds key {result.key!r}")
    return problems


def _active_problems(client: Any, sent: set[str], problems: list[str]) -> list[Any]:
    """No hanging lease, no active job nobody sent; returns the active jobs."""
    try:
        running = client.jobs(state="running", limit=100_000)
        active = [r for r in client.jobs(limit=100_000) if r.status in ACTIVE]
    except ShoalError as exc:
        problems.append(f"could not list jobs: {type(exc).__name__}: {exc}")
        return []
    for result in running:
        problems.append(f"job {norm(result.id)} is still running at the end (a lease left hanging)")
    for result in active:
        if norm(result.id) not in sent:
            problems.append(f"job {norm(result.id)} ({result.status}) exists but no client sent it")
    return active


def _total_problems(client: Any, acked: list[str], sent: set[str], active: list[Any]) -> list[str]:
    """Nothing created twice, nothing made up: the finished counters match the jobs sent."""
    try:
        stats = client.stats()
    except ShoalError as exc:
        return [f"could not read stats: {type(exc).__name__}: {exc}"]
    finished = sum(row.get("completed", 0) + row.get("dead", 0) for row in stats.values())
    if not len(acked) <= finished + len(active) <= len(sent):
        return [f"the broker counts {finished} finished and {len(active)} active jobs, but clients "
                f"had {len(acked)} distinct acked and {len(sent)} sent ids"]
    return []
