#!/usr/bin/env python3
"""One request's round trip to a libzmq ROUTER in another process: from a libzmq DEALER, and from
``shoal.zmtp.ZmtpDealer`` (the client's connection without CURVE), alternated, on loopback TCP.

    python scripts/bench_zmtp.py [--samples 3000] [--rounds 3] [--spin 0.0005]

The ROUTER echoes each message back, as the broker answers a request. With ``--spin S`` it polls
without blocking for S seconds after each message before it blocks again, as the broker's
``[broker] spin`` does. Prints p50/p90/p99 in µs for each client, each round.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq  # noqa: E402

from shoal.sockets import recv_frames, send_frames  # noqa: E402
from shoal.zmtp import ZmtpDealer  # noqa: E402

MESSAGE = [b"\x01", b"ENQUEUE", b"x" * 80]
WARMUP = 200


def echo_server(spin_s: float, bound: "mp.Queue[str]") -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    bound.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    last = 0.0
    while True:
        if spin_s and time.monotonic() - last < spin_s:
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                os.sched_yield()
                continue
        else:
            frames = recv_frames(sock, 0)
        last = time.monotonic()
        send_frames(sock, frames[1:], to=frames[0])
        if frames[-1] == b"quit":
            break
    sock.close()
    ctx.term()


def with_libzmq(endpoint: str, samples: int) -> list[int]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    out = []
    for i in range(WARMUP + samples):
        t = time.perf_counter_ns()
        send_frames(sock, MESSAGE)
        recv_frames(sock, 0)
        if i >= WARMUP:
            out.append(time.perf_counter_ns() - t)
    send_frames(sock, [b"quit"])
    recv_frames(sock, 0)
    sock.close()
    ctx.term()
    return out


def with_zmtp(endpoint: str, samples: int) -> list[int]:
    dealer = ZmtpDealer(endpoint)
    out = []
    for i in range(WARMUP + samples):
        t = time.perf_counter_ns()
        assert dealer.send(MESSAGE, 5.0)
        assert dealer.wait(5.0)
        dealer.recv()
        if i >= WARMUP:
            out.append(time.perf_counter_ns() - t)
    dealer.send([b"quit"], 5.0)
    dealer.wait(5.0)
    dealer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spin", type=float, default=0.0, help="the ROUTER's spin after each message, in s")
    args = parser.parse_args()
    clients: dict[str, Callable[[str, int], list[int]]] = {"libzmq DEALER": with_libzmq, "ZmtpDealer": with_zmtp}
    print(f"# round trip to a ROUTER in another process, tcp loopback, {args.samples} samples, "
          f"ROUTER spin {args.spin * 1e6:.0f} us; load {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for rnd in range(1, args.rounds + 1):
        for name, client in clients.items():
            bound: "mp.Queue[str]" = mp.Queue()
            server = mp.Process(target=echo_server, args=(args.spin, bound))
            server.start()
            endpoint = bound.get(timeout=10)
            times = sorted(client(endpoint, args.samples))
            server.join(10)
            n = len(times)
            print(f"round {rnd} {name:>14}: p50 {times[n // 2] / 1000:.0f} us, p90 {times[n * 9 // 10] / 1000:.0f} us, "
                  f"p99 {times[n * 99 // 100] / 1000:.0f} us", flush=True)


if __name__ == "__main__":
    main()
