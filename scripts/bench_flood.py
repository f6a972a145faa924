"""Hardening against unauthenticated peers, measured: a CURVE broker under a connection flood.

    python scripts/bench_flood.py [--peers N] [--seconds S]

A broker with ``[security]`` serves one legitimate client (its key in ``clients``) while
``--peers`` unauthenticated peers hammer its port, a third each of:
- raw TCP connections held open, half of them after sending garbage, half silent (slowloris);
- ZeroMQ DEALERs with no CURVE key (the mechanism does not match), reconnecting constantly;
- ZeroMQ DEALERs with a CURVE key that is in no allow-list (refused by the ZAP handler).

It prints the legitimate client's sequential enqueue latency before and during the flood, the
broker's resident memory and open file descriptors before, during and after, and how many of
the idle raw connections the broker still holds after its handshake interval. This is a
benchmark: it asserts nothing, it reports.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine, percentile  # noqa: E402
from bench_curve import CurveCluster  # noqa: E402

from shoal.security import keygen  # noqa: E402


def broker_usage(pid: int) -> tuple[float, int]:
    """(resident MiB, open file descriptors) of the broker process."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def enqueue_latencies(client: object, n: int) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        client.enqueue("noop", {"i": i}, group="bench")  # type: ignore[attr-defined]
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


class Flood:
    """Unauthenticated peers against ``host:port`` until ``stop`` is set."""

    def __init__(self, endpoint: str, peers: int, stranger_key: Path, broker_key: Path) -> None:
        self.host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        self.port = int(port)
        self.endpoint, self.peers = endpoint, peers
        self.stop = threading.Event()
        self.held: list[socket.socket] = []
        self.attempts = 0
        self.stranger = zmq.auth.load_certificate(str(stranger_key))
        self.server_public = zmq.auth.load_certificate(str(broker_key))[0]
        self.threads = [threading.Thread(target=self._zmq_churn, args=(curve,), daemon=True)
                        for curve in (False, True) for _ in range(2)]

    def start(self) -> None:
        for n in range(self.peers // 3):  # slowloris: hold the connection, half after garbage, half silent
            s = socket.create_connection((self.host, self.port))
            if n % 2:
                s.sendall(os.urandom(64))
            self.held.append(s)
        for t in self.threads:
            t.start()

    def _zmq_churn(self, curve: bool) -> None:
        ctx = zmq.Context.instance()
        per_thread = max(1, self.peers // 3 // 2)
        while not self.stop.is_set():
            socks = []
            for _ in range(per_thread):
                s = ctx.socket(zmq.DEALER)
                s.linger = 0
                if curve:
                    s.curve_publickey, s.curve_secretkey = self.stranger
                    s.curve_serverkey = self.server_public
                s.connect(self.endpoint)
                s.send_multipart([b"SHOAL1", b"STATS", b"\x81\xa3rid\x01"], zmq.NOBLOCK)
                socks.append(s)
            self.attempts += per_thread
            self.stop.wait(0.2)
            for s in socks:
                s.close(0)

    def end(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for s in self.held:
            s.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=300, help="unauthenticated peers at once (default 300)")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long the flood lasts (default 8)")
    parser.add_argument("--samples", type=int, default=500, help="legitimate enqueues per measurement")
    args = parser.parse_args()
    with CurveCluster("flood") as c:
        keygen("stranger", c.dir / "keys")  # a well-formed key that no allow-list holds
        c.start_broker()
        pid = c.broker.popen.pid
        client = c.client()
        enqueue_latencies(client, 50)  # warm up
        before = enqueue_latencies(client, args.samples)
        usage_before = broker_usage(pid)
        flood = Flood(c.endpoint, args.peers, c.dir / "keys" / "stranger.key_secret", c.dir / "keys" / "broker.key")
        flood.start()
        time.sleep(0.5)
        held_fds = broker_usage(pid)[1]  # the raw connections the broker still holds half a second in
        t0 = time.monotonic()
        during: list[float] = []
        peak = usage_before
        while time.monotonic() - t0 < args.seconds:
            during += enqueue_latencies(client, 50)
            now = broker_usage(pid)
            peak = (max(peak[0], now[0]), max(peak[1], now[1]))
        flood.stop.set()
        for t in flood.threads:
            t.join(5)
        time.sleep(6.0)  # past the 5 s handshake interval: idle raw connections should be gone
        after_ivl = broker_usage(pid)
        flood.end()
        refused = c.broker.output().count("refused a connection")
    print(f"machine: {machine()}")
    print(f"flood: {args.peers // 3} raw TCP connections held open (half after garbage, half silent), "
          f"{flood.attempts} keyless/unknown-key ZeroMQ connection attempts in {args.seconds:.0f} s")
    print("| measure | before | during the flood | after |")
    print("|---|---:|---:|---:|")
    print(f"| legitimate enqueue p50 (ms) | {percentile(before, 50):.2f} | {percentile(during, 50):.2f} | |")
    print(f"| legitimate enqueue p99 (ms) | {percentile(before, 99):.2f} | {percentile(during, 99):.2f} | |")
    print(f"| legitimate enqueues served | {len(before)} | {len(during)} | |")
    print(f"| broker resident memory (MiB) | {usage_before[0]:.1f} | {peak[0]:.1f} (peak) | {after_ivl[0]:.1f} |")
    print(f"| broker open file descriptors | {usage_before[1]} | {held_fds} (0.5 s in) / {peak[1]} (peak) | "
          f"{after_ivl[1]} (6 s after the churn stopped; the raw sockets still open on the flooder's side) |")
    print(f"refusal lines in the broker log (rate-limited): {refused}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
