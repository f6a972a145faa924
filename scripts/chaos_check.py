"""The checks and the summary of a ``scripts/chaos.py`` run.

Runs per job come from the handlers' own run logs (``chaos_app``); final states from the broker
(``wait``); faults from the harness. A job may run ``1 + failures injected + faults that
happened while it was between its first and its last run`` times: an extra run that a fault
explains is at-least-once delivery, one that no fault explains is a bug.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

BASELINE_S = 5.0        # throughput before a fault is measured over this window
AFTERMATH_S = 10.0      # an unexplained re-run this soon after a fault is its aftermath (e.g. HELLO races)
RECOVERED_SHARE = 0.5   # "recovered" = a WINDOW_S window with at least this share of the baseline rate
WINDOW_S = 0.25


class Fault(NamedTuple):
    """One injected fault: ``start`` when the signal went, ``end`` when the broker was back
    (listening again after a kill, SIGCONT after a stop); monotonic seconds."""

    kind: str
    start: float
    end: float


class Run(NamedTuple):
    """One handler run as the app logged it."""

    job: str
    attempt: int
    pid: int
    start: float
    end: float
    failed: bool


@dataclass
class Report:
    """Figures and checks of one run; ``checks`` maps a check to (passed, detail)."""

    run_dir: str
    mode: str
    figures: dict[str, Any] = field(default_factory=dict)
    per_fault: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(ok for ok, _ in self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "mode": self.mode, "figures": self.figures, "per_fault": self.per_fault,
                "checks": {k: {"passed": ok, "detail": d} for k, (ok, d) in self.checks.items()},
                "passed": self.passed}


def read_runs(runs_dir: Path) -> dict[str, list[Run]]:
    """Every logged run, by job id, oldest first."""
    out: dict[str, list[Run]] = {}
    for path in sorted(runs_dir.glob("runs-*.log")):
        for line in path.read_text().splitlines():
            job, attempt, pid, start, end, outcome = line.split()
            out.setdefault(job, []).append(Run(job, int(attempt), int(pid), float(start), float(end),
                                               outcome == "fail"))
    for runs in out.values():
        runs.sort(key=lambda r: r.start)
    return out


def faults_between(faults: list[Fault], start: float, end: float) -> list[int]:
    """Indexes of the faults that overlap [start, end]."""
    return [i for i, f in enumerate(faults) if f.start <= end and f.end >= start]


def extra_runs(acked: Iterable[str], runs: dict[str, list[Run]], faults: list[Fault]) -> dict[str, Any]:
    """Extra runs per job split into fault-explained (at-least-once) and unexplained (bugs)."""
    explained, unexplained = Counter[int](), Counter[int]()
    by_fault, after_fault, worst = Counter[int](), Counter[int](), []
    for job in acked:
        mine = runs.get(job, [])
        extra = len(mine) - 1 - sum(r.failed for r in mine)
        if extra <= 0:
            continue
        window = faults_between(faults, mine[0].start, mine[-1].start)
        ok = min(extra, len(window))
        for i in window[:ok]:
            by_fault[i] += 1
        if ok:
            explained[ok] += 1
        if extra > ok:
            unexplained[extra - ok] += 1
            last = aftermath_of(faults, mine[-1].start)
            if last is not None:
                after_fault[last] += extra - ok
            worst.append((extra - ok, job, [(r.attempt, r.pid, round(r.start, 2)) for r in mine]))
    worst.sort(reverse=True)
    return {"explained": explained, "unexplained": unexplained, "by_fault": by_fault, "worst": worst[:5],
            "after_fault": after_fault}


def aftermath_of(faults: list[Fault], when: float) -> int | None:
    """The fault that ended at most AFTERMATH_S before ``when`` (the latest such), if any."""
    before = [i for i, f in enumerate(faults) if f.end <= when <= f.end + AFTERMATH_S]
    return before[-1] if before else None


def recovery(fault: Fault, run_starts: list[float], next_start: float) -> dict[str, Any]:
    """Runs started per second before the fault; after the broker was back, when the first run
    started and when a quarter-second window reached half that rate again (runs started, not
    ended: a run in flight across a kill ends without the new broker's help)."""
    before = sum(fault.start - BASELINE_S <= t < fault.start for t in run_starts) / BASELINE_S
    wanted = max(1.0, RECOVERED_SHARE * before * WINDOW_S)
    first = next((s for s in run_starts if s >= fault.end), None)
    out: dict[str, Any] = {"baseline_runs_per_s": round(before, 1), "recovered_after_s": None,
                           "first_run_after_s": None if first is None else round(first - fault.end, 2)}
    t = fault.end
    while t < next_start:
        if sum(t <= s < t + WINDOW_S for s in run_starts) >= wanted:
            out["recovered_after_s"] = round(t - fault.end, 2)
            break
        t += 0.05
    return out


def fault_costs(faults: list[Fault], runs: dict[str, list[Run]], calls: list[tuple[float, float]],
                extra: dict[str, Any], end_of_run: float) -> list[dict[str, Any]]:
    """What each fault cost: outage, recovery, slowest enqueue across it, extra runs it explains
    and unexplained ones that started in its aftermath."""
    starts = sorted(r.start for rs in runs.values() for r in rs)
    origin = starts[0] if starts else 0.0
    out = []
    for i, f in enumerate(faults):
        nxt = faults[i + 1].start if i + 1 < len(faults) else end_of_run
        slowest = max((e - s for s, e in calls if s <= f.end and e >= f.start), default=0.0)
        out.append({"kind": f.kind, "at_s": round(f.start - origin, 1), "down_s": round(f.end - f.start, 2),
                    **recovery(f, starts, nxt),
                    "slowest_enqueue_s": round(slowest, 2), "extra_runs": extra["by_fault"].get(i, 0),
                    "unexplained_after": extra["after_fault"].get(i, 0)})
    return out


def log_figures(broker_logs: str, pids: list[int]) -> dict[str, Any]:
    """HELLOs per worker, stale-token warnings and tracebacks in the broker logs."""
    hellos = Counter(int(p) for p in re.findall(r"worker \S+:(\d+) joined group", broker_logs))
    silent = [int(n) for n in re.findall(r"went silent; releasing (\d+) leases", broker_logs)]
    return {"hellos_per_worker": {str(p): hellos.get(p, 0) for p in pids},
            "went_silent_warnings": len(silent), "leases_released_as_silent": sum(silent),
            "stale_token_warnings": broker_logs.count("stale lease token"),
            "broker_tracebacks": broker_logs.count("Traceback")}


def describe(job: str, result: Any) -> str:
    if result is None:
        return f"{job}: unknown to the broker"
    return f"{job}: {result.status} error_kind={result.error_kind} attempts={result.attempts} error={result.error!r}"


def analyse(run_dir: Path, mode: str, ledger: Any, finals: dict[str, Any], unknown: dict[str, Any],
            faults: list[Fault], pids: list[int], workers_lived: bool, broker_logs: str,
            verified: tuple[bool, str], takes_ids: tuple[bool, bool]) -> Report:
    """Compute the figures and the checks of a finished run."""
    runs = read_runs(run_dir / "runs")
    acked = list(ledger.acked)
    status = Counter(r.status if r is not None else "missing" for r in finals.values())
    bad = [describe(j, r) for j, r in finals.items() if r is None or r.status != "completed"]
    lost_live = [j for j, r in finals.items()
                 if r is not None and r.status == "dead" and r.error_kind == "worker_lost"]
    extra = extra_runs(acked, runs, faults)
    unrun = [r.attempts - len(runs.get(j, [])) for j, r in finals.items() if r is not None and r.status == "completed"]
    end_of_run = max((r.end for rs in runs.values() for r in rs), default=0.0) + 1.0
    report = Report(str(run_dir), mode)
    report.per_fault = fault_costs(faults, runs, ledger.calls, extra, end_of_run)
    report.figures = {
        "faults": len(faults), "acked": len(acked), "by_kind": dict(Counter(ledger.acked.values())),
        "final_status": dict(status), "fail_once_jobs": len(ledger.fail_once),
        "runs": sum(len(rs) for rs in runs.values()),
        "injected_failures": sum(r.failed for rs in runs.values() for r in rs),
        "extra_runs_fault_explained": dict(extra["explained"]),
        "extra_runs_unexplained": dict(extra["unexplained"]), "worst_unexplained": extra["worst"],
        "unexplained_within_10s_after_a_fault": sum(extra["after_fault"].values()),
        "attempts_charged_without_a_run": {"jobs": sum(n > 0 for n in unrun), "attempts": sum(n for n in unrun if n > 0)},
        "deduplicated_answers": ledger.deduplicated, "client_errors": dict(ledger.errors),
        "unknown_outcome": unknown_figures(unknown, runs), "same_id_retries_acked": ledger.retried_ok,
        "client_takes_ids": {"enqueue(id=)": takes_ids[0], "enqueue_many(ids=)": takes_ids[1]},
        "workers_lived": workers_lived, **log_figures(broker_logs, pids),
        "not_completed": bad[:20], "replay_verify": verified[1][-600:],
    }
    report.checks = {
        "every acked job completed": (not bad, f"{len(bad)} of {len(acked)} not completed"),
        "no worker_lost while workers lived": (not (lost_live and workers_lived),
                                               f"{len(lost_live)} dead as worker_lost, workers lived: {workers_lived}"),
        "no run beyond failures + faults": (not extra["unexplained"],
                                            f"{sum(k * v for k, v in extra['unexplained'].items())} unexplained extra runs"),
        "no traceback in broker logs": (not report.figures["broker_tracebacks"],
                                        f"{report.figures['broker_tracebacks']} tracebacks"),
        "replay --verify": (verified[0], verified[1].splitlines()[-1] if verified[1] else ""),
    }
    return report


def unknown_figures(unknown: dict[str, Any], runs: dict[str, list[Run]]) -> dict[str, int]:
    """Enqueues that raised BrokerUnreachable and were not retried with the same id: their fate."""
    return {"ids": len(unknown), "stored": sum(r is not None for r in unknown.values()),
            "completed": sum(r is not None and r.status == "completed" for r in unknown.values()),
            "ran": sum(1 for j in unknown if runs.get(j))}


def print_summary(report: Report) -> None:
    """The human summary: figures, one line per fault, PASS/FAIL per check."""
    f = report.figures
    print(f"chaos ({report.mode}): {f['faults']} faults; logs and data in {report.run_dir}")
    for key in ("acked", "by_kind", "final_status", "fail_once_jobs", "runs", "injected_failures",
                "extra_runs_fault_explained", "extra_runs_unexplained",
                "unexplained_within_10s_after_a_fault", "attempts_charged_without_a_run", "deduplicated_answers",
                "client_errors", "unknown_outcome", "same_id_retries_acked", "client_takes_ids",
                "workers_lived", "hellos_per_worker", "went_silent_warnings", "leases_released_as_silent",
                "stale_token_warnings", "broker_tracebacks"):
        print(f"  {key}: {f[key]}")
    for line in f["not_completed"]:
        print(f"  not completed: {line}")
    for extra, job, runs in f["worst_unexplained"]:
        print(f"  unexplained: {job} +{extra} runs (attempt, pid, start): {runs}")
    for i, cost in enumerate(report.per_fault, 1):
        print(f"  fault {i:2d} {cost['kind']} at {cost['at_s']} s: down {cost['down_s']} s, throughput back after "
              f"{cost['recovered_after_s']} s (first run {cost['first_run_after_s']} s; baseline "
              f"{cost['baseline_runs_per_s']} runs/s), slowest enqueue "
              f"{cost['slowest_enqueue_s']} s, extra runs {cost['extra_runs']} explained, "
              f"{cost['unexplained_after']} unexplained after it")
    for name, (ok, detail) in report.checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print("PASS" if report.passed else "FAIL")
