"""The workflow that ``scripts/chaos.py`` drives; workers load it with ``--app chaos_app``.

Every run of ``chaos-job`` appends one line to ``$SHOAL_CHAOS_RUNS/runs-<pid>.log`` (opened
``O_APPEND``, one ``write`` per line, so lines of concurrent runs never interleave):

    <job id> <attempt> <pid> <start monotonic> <end monotonic> ok|fail

The harness counts runs per job from these files after the run; ``time.monotonic`` is the
system-wide ``CLOCK_MONOTONIC`` on Linux, so the times compare with the harness's fault times.
A payload with ``fail_once`` raises on the job's first attempt only (then retried).
"""
from __future__ import annotations

import os
import time
from typing import Any

from shoal import workflow
from shoal.ids import id_to_str

GROUP = "chaos"
_fd: int | None = None


def _runs_fd() -> int:
    """The per-worker run log, opened once per process (the handler runs in many threads)."""
    global _fd
    if _fd is None:
        path = os.path.join(os.environ["SHOAL_CHAOS_RUNS"], f"runs-{os.getpid()}.log")
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    return _fd


@workflow("chaos-job", worker=GROUP)
def chaos_job(payload: dict[str, Any], step: Any) -> int:
    """Holds its slot ``ms`` milliseconds; with ``fail_once``, raises on attempt 1."""
    started = time.monotonic()
    time.sleep(payload.get("ms", 0) / 1000)
    fail = bool(payload.get("fail_once")) and step.attempt == 1
    line = (f"{id_to_str(step.job_id)} {step.attempt} {os.getpid()} {started:.6f} "
            f"{time.monotonic():.6f} {'fail' if fail else 'ok'}\n")
    os.write(_runs_fd(), line.encode())
    if fail:
        raise RuntimeError("injected failure on the first attempt")
    return int(payload.get("n", 0))
