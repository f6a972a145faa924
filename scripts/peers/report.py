"""The peers table (markdown, printed and written) and the BENCHMARKS.md section writer."""
from __future__ import annotations

import os
import platform
import re
import shlex
import statistics
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
PACKAGES = ("shoal", "pyzmq", "lmdb", "celery", "kombu", "redis", "rq", "dramatiq", "pika", "huey", "taskito",
            "pgqueuer", "psycopg", "asyncpg")
# (figure key, column title, a rate (higher is better) or a latency)
COLUMNS = [("seq_jobs_s", "sequential enqueue, jobs/s", True),
           ("threads_jobs_s", "16 threads, one client, jobs/s", True),
           ("bulk_jobs_s", "bulk ×1000, jobs/s", True),
           ("e2e_jobs_s", "end to end, 1 producer, jobs/s", True),
           ("rt_p50_ms", "round trip p50, ms", False),
           ("rt_p99_ms", "round trip p99, ms", False)]


def _run(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine(tmp: Path, argv: list[str]) -> dict[str, Any]:
    """What the run was measured on and with, taken at its start."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    df = _run(["df", "-hT", str(tmp)]).splitlines()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "loadavg_start": os.getloadavg(),
            "disk": " ".join(df[1].split()) if len(df) > 1 else "?", "tmp": str(tmp.parent),
            "commit": commit + (" (uncommitted changes)" if dirty else ""), "packages": versions,
            "command": "python scripts/peers/run.py " + " ".join(shlex.quote(a) for a in argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _num(value: float, rate: bool) -> str:
    return f"{value:,.0f}" if rate else f"{value:.2f}"


def _cell(fig: dict[str, float], shoal: dict[str, float], key: str, rate: bool, is_shoal: bool) -> str:
    if key not in fig:
        return "n/a"
    text = _num(fig[key], rate)
    if is_shoal or key not in shoal or not fig[key]:
        return text
    ratio = shoal[key] / fig[key] if rate else fig[key] / shoal[key]  # > 1: Shoal is ahead
    return f"{text} ({ratio:.2f})"


def table(variants: list[Any], results: dict[str, dict[str, Any]], floor: dict[str, float]) -> list[str]:
    """Markdown rows: one per system, the floor last; failures say why."""
    shoal = results.get("shoal", {}).get("median", {})
    head = ["system", "durable", "durability", *[title for _, title, _ in COLUMNS]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * len(COLUMNS)]
    for v in variants:
        res = results[v.name]
        fig = res["median"]
        durable = "yes" if v.durable else "no"
        if not fig:
            reason = "; ".join(sorted(set(res["errors"])))[:300].replace("|", "/")
            rows.append(f"| {v.label} | {durable} | {v.durability} | FAILED: {reason} |" + " |" * (len(COLUMNS) - 1))
            continue
        cells = [_cell(fig, shoal, key, rate, v.name == "shoal") for key, _, rate in COLUMNS]
        failed = res["runs"] - res["ok"]
        label = f"{v.label} ({failed} of {res['runs']} runs failed)" if failed else v.label
        rows.append(f"| {label} | {durable} | {v.durability} | " + " | ".join(cells) + " |")
    rows.append(f"| floor: 1 raw zmq round trip + 1 synced LMDB commit | | {floor['zmq_rt_p50_ms']:.3f} + "
                f"{floor['lmdb_commit_p50_ms']:.3f} ms p50 | {floor['floor_seq_jobs_s']:,.0f} |"
                + " |" * (len(COLUMNS) - 1))
    return rows


def summary(variants: list[Any], results: dict[str, dict[str, Any]], floor: dict[str, float]) -> list[str]:
    """The ten-second view: per measure, Shoal, the best durable peer, the best non-durable peer."""
    shoal = results.get("shoal", {}).get("median", {})
    rows = ["| measure | Shoal | best durable peer | best non-durable peer |", "|---|---:|---|---|"]
    for key, title, rate in COLUMNS:
        best = []
        for durable in (True, False):
            peers = [(results[v.name]["median"][key], v.label) for v in variants
                     if v.name != "shoal" and v.durable == durable and key in results[v.name]["median"]]
            if not peers:
                best.append("n/a")
                continue
            value, label = max(peers) if rate else min(peers)
            ratio = ""
            if key in shoal and value:
                ratio = f" (Shoal {shoal[key] / value if rate else value / shoal[key]:.2f} ×)"
            best.append(f"{label}: {_num(value, rate)}{ratio}")
        rows.append(f"| {title} | {_num(shoal[key], rate) if key in shoal else 'n/a'} | {best[0]} | {best[1]} |")
    of_floor = f" (Shoal {shoal['seq_jobs_s'] / floor['floor_seq_jobs_s']:.2f} × it)" if "seq_jobs_s" in shoal else ""
    rows.append(f"| floor of a sequential durable enqueue, jobs/s | {floor['floor_seq_jobs_s']:,.0f}{of_floor} | | |")
    return rows


def by_round(variants: list[Any], results: dict[str, dict[str, Any]], floors: list[dict[str, float]]) -> list[str]:
    """Shoal against the best durable peer of the same round, round by round, and against that
    round's floor: a VM whose speed moves between rounds moves all of a round together, so these
    ratios are steadier than ratios of medians taken from different rounds."""
    shoal_runs = results.get("shoal", {}).get("each", [])
    if len(shoal_runs) < 2:
        return []
    rounds = range(len(shoal_runs))
    rows = ["| Shoal ÷ … in the same round | " + " | ".join(f"round {n + 1}" for n in rounds) + " | median |",
            "|---|" + "---:|" * (len(shoal_runs) + 1)]
    for key, title, rate in COLUMNS:
        cells, ratios = [], []
        for n in rounds:
            mine = (shoal_runs[n] or {}).get(key)
            peers = []
            for v in variants:
                each = results[v.name].get("each", [])
                fig = (each[n] if n < len(each) else None) or {}
                if v.name != "shoal" and v.durable and key in fig:
                    peers.append((fig[key], v.label))
            if mine is None or not peers:
                cells.append("n/a")
                continue
            value, label = max(peers) if rate else min(peers)
            ratio = mine / value if rate else value / mine
            ratios.append(ratio)
            cells.append(f"{ratio:.2f} ({label})")
        if not ratios:
            continue  # a phase this run left out
        median = f"**{statistics.median(ratios):.2f}**"
        rows.append(f"| {title}: the best durable peer | " + " | ".join(cells) + f" | {median} |")
    of_floor = [(run or {}).get("seq_jobs_s", 0.0) / f["floor_seq_jobs_s"] for run, f in zip(shoal_runs, floors)]
    if not any(of_floor):
        return rows
    rows.append("| sequential enqueue: the round's floor | "
                + " | ".join(f"{r:.2f} (floor {f['floor_seq_jobs_s']:,.0f}/s)" for r, f in zip(of_floor, floors))
                + f" | **{statistics.median(of_floor):.2f}** |")
    return rows


def render(variants: list[Any], results: dict[str, dict[str, Any]], floor: dict[str, float], info: dict[str, Any],
           p: dict[str, Any], repeat: int, floors: list[dict[str, float]] | None = None) -> str:
    """The whole section: how it was run, the table, what the columns and ratios mean, the versions."""
    load0, load1 = info["loadavg_start"], info["loadavg_end"]
    rounds = by_round(variants, results, floors or [])
    failures = [f"- {v.label}: " + "; ".join(sorted({_gist(e) for e in results[v.name]["errors"]}))
                for v in variants if results[v.name]["errors"]]
    lines = [
        "## Shoal and its peers, side by side",
        "",
        f"`{info['command']}` at `{info['commit']}`, {info['date']}, {info['wall_s']:.0f} s; median of {repeat} "
        f"run{'s' if repeat > 1 else ''} per system. {info['nproc']} × {info['cpu']}; load average "
        f"{load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} at the start, {load1[0]:.2f} / {load1[1]:.2f} / "
        f"{load1[2]:.2f} at the end; data under `{info['tmp']}` on `{info['disk']}` (df -hT). "
        f"Python {info['python']}.",
        "",
        *summary(variants, results, floor),
        "",
        *table(variants, results, floor),
        "",
        *rounds, *([""] if rounds else []),
        f"Same no-op task, one client process, one worker process ({p['concurrency']} threads or slots "
        f"where it has them). Sequential enqueue n={p['seq_n']:,}; 16 threads × "
        f"{p['per_thread']:,} on one client; bulk {p['bulk_total']:,} in calls of {p['bulk_batch']:,} (n/a: no "
        f"bulk call); end to end: {p['e2e_n']:,} jobs enqueued one at a time, clock stopped when all have run; "
        f"round trip: enqueue then wait for the result, n={p['rt_samples']:,}. Enqueue phases run with no worker. "
        "In brackets: Shoal ÷ peer for rates, peer ÷ Shoal for latencies, so above 1 means Shoal is ahead. "
        "The floor is one sequential durable enqueue with nothing but its two costs: one raw pyzmq DEALER/ROUTER "
        "round trip between two processes and one synced LMDB commit of a job record and its log entry.",
        "",
        *dict.fromkeys(f"- {v.label.split(' / ')[0]}: {v.note}" for v in variants if v.note),
        "",
        "Servers (Debian packages, started by the script on 127.0.0.1): "
        + ("; ".join(f"{k}: {v}" for k, v in sorted(info.get("servers", {}).items())) or "none in this run") + ".",
        "Python packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()) + ".",
    ]
    if failures:
        lines += ["", "Failures:", *failures]
    return "\n".join(lines)


def _gist(error: str, limit: int = 240) -> str:
    """An error as one short line: a server's whole start-up log is for its log file, not the table."""
    error = " ".join(error.split())
    if len(error) <= limit:
        return error
    for word in ("eaddrinuse", "timed out", "Traceback"):  # what a reader needs, where the log says it
        at = error.find(word)
        if at > limit // 2:
            return f"{error[:limit // 2]} … {error[at - 40:at + limit // 2 - 40]} …"
    return error[:limit] + " …"


def write_section(text: str, path: Path = BENCHMARKS) -> Path:
    """Replace the marked peers section of BENCHMARKS.md, or put one right under its title."""
    section = f"{BEGIN}\n{text}\n{END}"
    doc = path.read_text()
    if BEGIN in doc and END in doc:
        doc = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: section, doc, count=1, flags=re.S)
    else:
        title, _, rest = doc.partition("\n")
        doc = f"{title}\n\n{section}\n{rest}" if title.startswith("# ") else f"{section}\n\n{doc}"
    path.write_text(doc)
    return path
