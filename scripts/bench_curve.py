"""The cost of transport security: the same measurements with and without CURVE, in one run.

    python scripts/bench.py curve [--quick] [--repeat N] [--json]

Each repetition measures enqueue (one thread), end to end through one worker and the round
trip twice, on brokers without and with ``[security]`` (CURVE on every socket, the ZAP
authenticator, a key per peer), alternating which goes first so that a machine that gets
busier during the run does not bias one side. One key is both the client and the worker key.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import (CONFIG_TOML, Cluster, Row, enqueue_one_thread, end_to_end, machine, percentile, print_table,
                   progress, roundtrip_ms, summarize, zmq_roundtrip_ms)

from shoal import Client
from shoal.security import keygen


class CurveCluster(Cluster):
    """``bench.Cluster`` with CURVE on: the broker's key, and one key allowed as client and as bench worker."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        keys = self.dir / "keys"
        keygen("broker", keys)
        keygen("bench", keys)
        for folder in ("clients", "workers-bench"):
            (keys / folder).mkdir()
            (keys / folder / "bench.key").write_bytes((keys / "bench.key").read_bytes())
        self.config.write_text(CONFIG_TOML + f"""
[security]
broker_secret_key = "{keys / 'broker.key_secret'}"
clients = "{keys / 'clients'}"
[security.workers]
bench = "{keys / 'workers-bench'}"
""")
        self.key, self.broker_key = str(keys / "bench.key_secret"), str(keys / "broker.key")
        self.env["SHOAL_KEY"], self.env["SHOAL_BROKER_KEY"] = self.key, self.broker_key  # the workers' key

    def client(self, timeout_s: float = 30.0) -> Client:
        c = Client(self.endpoint, timeout=timeout_s, key=self.key, broker_key=self.broker_key)
        self.clients.append(c)
        return c


def params(quick: bool) -> dict[str, int]:
    return {"enqueue_n": 500 if quick else 2_000, "e2e_total": 2_000 if quick else 10_000, "e2e_batch": 100,
            "concurrency": 32, "roundtrip_samples": 200 if quick else 1_000, "roundtrip_warmup": 50,
            "zmq_samples": 1_000 if quick else 5_000}


def measure(cluster: Cluster, p: dict[str, int], tag: str) -> dict[str, float]:
    """Enqueue, end to end and round trip on one broker (and one worker)."""
    fig: dict[str, float] = {}
    with cluster as c:
        c.start_broker()
        fig[f"enqueue_1t_{tag}"] = enqueue_one_thread(c.client(), p["enqueue_n"])
        c.start_worker("bench", p["concurrency"])
        fig[f"e2e_{tag}"] = end_to_end(c.client(), p["e2e_total"], p["e2e_batch"])["jobs_s"]
        rt, _ = roundtrip_ms(c.client(), "noop", "bench", p["roundtrip_samples"], p["roundtrip_warmup"])
        fig[f"rt_p50_{tag}"], fig[f"rt_p99_{tag}"] = percentile(rt, 50), percentile(rt, 99)
    return fig


def run_once(p: dict[str, int], run: int) -> dict[str, float]:
    fig: dict[str, float] = {}
    order = ["plain", "curve"] if run % 2 == 0 else ["curve", "plain"]
    for tag in order:
        progress(f"run {run + 1}: {tag}")
        cluster = CurveCluster(f"curve-{run}") if tag == "curve" else Cluster(f"plain-{run}")
        fig.update(measure(cluster, p, tag))
    for tag in order:
        rt = zmq_roundtrip_ms(p["zmq_samples"], curve=tag == "curve", body_bytes=200)
        fig[f"zmq_p50_{tag}"] = percentile(rt, 50)
    fig["zmq_cost_ms"] = fig["zmq_p50_curve"] - fig["zmq_p50_plain"]
    fig["enqueue_cost_pct"] = 100 * (1 - fig["enqueue_1t_curve"] / fig["enqueue_1t_plain"])
    fig["e2e_cost_pct"] = 100 * (1 - fig["e2e_curve"] / fig["e2e_plain"])
    fig["rt_cost_ms"] = fig["rt_p50_curve"] - fig["rt_p50_plain"]
    return fig


def rows(p: dict[str, int]) -> list[Row]:
    return [
        Row(f"enqueue, 1 thread, plain (n={p['enqueue_n']:,})", "enqueue_1t_plain", "jobs/s"),
        Row("enqueue, 1 thread, CURVE", "enqueue_1t_curve", "jobs/s",
            note="{enqueue_cost_pct:.1f}% slower (median of the per-run pairs)"),
        Row(f"end to end, 1 worker x{p['concurrency']}, plain (n={p['e2e_total']:,})", "e2e_plain", "jobs/s"),
        Row("end to end, CURVE", "e2e_curve", "jobs/s", note="{e2e_cost_pct:.1f}% slower (median of the per-run pairs)"),
        Row(f"round trip p50, plain (n={p['roundtrip_samples']:,})", "rt_p50_plain", "ms",
            note="p99 {rt_p99_plain:.3f} ms"),
        Row("round trip p50, CURVE", "rt_p50_curve", "ms",
            note="{rt_cost_ms:+.3f} ms (median of the per-run pairs); p99 {rt_p99_curve:.3f} ms"),
        Row(f"floor: raw DEALER/ROUTER round trip p50, plain (n={p['zmq_samples']:,})", "zmq_p50_plain", "ms"),
        Row("floor: raw DEALER/ROUTER round trip p50, CURVE", "zmq_p50_curve", "ms",
            note="{zmq_cost_ms:+.3f} ms (median of the per-run pairs)"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py curve", description="The cost of CURVE, measured both ways.")
    parser.add_argument("--quick", action="store_true", help="a smaller run (and one repetition)")
    parser.add_argument("--repeat", type=int, help="repetitions (default 4, 1 with --quick)")
    parser.add_argument("--json", action="store_true", help="print machine-readable figures")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 4)
    p, info, started = params(args.quick), machine(), time.perf_counter()
    runs = [run_once(p, n) for n in range(repeat)]
    summary = summarize(runs)
    if args.json:
        print(json.dumps({"command": "curve", "machine": info, "params": p, "runs": runs,
                          "median": {k: v["median"] for k, v in summary.items()}}, indent=2, sort_keys=True))
        return 0
    print(f"shoal bench curve{' --quick' if args.quick else ''} --repeat {repeat}: {info['nproc']} x {info['cpu']}, "
          f"Python {info['python']}, libzmq {info['libzmq']}, load {info['loadavg']:.1f} at start; "
          f"{time.perf_counter() - started:.0f}s\n")
    print_table(rows(p), summary, repeat)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
