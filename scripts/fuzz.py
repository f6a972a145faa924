"""Structure-aware fuzzing of a running broker, beside a normal client.

    python scripts/fuzz.py [--frames 100000] [--rate 3000] [--seed 1]

Starts a broker (LMDB under a temp dir) and one worker, then sends ``--frames`` hostile
frames from a DEALER at about ``--rate`` a second: the right version and a real command, with
fields missing, of the wrong type, huge, or nested, and some valid-looking ones. Beside it a
normal client enqueues and waits one job at a time; its round-trip p50/p99 before and during
the fuzz, the broker's resident memory, and every traceback or internal error in the broker's
log are printed. Exit 1 when the broker logged a traceback, died, or the client's p99 during
the fuzz is over 3x its p99 before (the issue's bound).

``frames(rng)`` is also what tests/test_fuzz.py sends (fewer frames) so the suite keeps the
same generator.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import zmq

from shoal import protocol as P

JOB_FIELDS = ["id", "wf", "group", "payload", "delay_ms", "priority", "retries", "key", "key_ttl_ms"]
FIELDS: dict[bytes, list[str]] = {
    P.ENQUEUE: ["rid", "jobs"], P.GET: ["rid", "ids"], P.WAIT: ["rid", "id"], P.STATS: ["rid"],
    P.DEAD: ["rid", "group", "limit"], P.REQUEUE: ["rid", "ids", "all", "group"],
    P.JOBS: ["rid", "state", "group", "limit"], P.STEPS: ["rid", "id"], P.HISTORY: ["rid", "id"],
    P.CANCEL: ["rid", "id", "token"], P.CRON: ["rid"], P.STORAGE: ["rid"],
    P.HELLO: ["group", "pid", "host", "server", "slots", "workflows", "running"], P.READY: ["slots"],
    P.DONE: ["results"], P.FAIL: ["failures"], P.RETURN: ["jobs"],
    P.STEP: ["rid", "id", "token", "name", "record", "enqueue"],
    P.SUSPEND: ["id", "token", "name", "due_ms", "wait_on"], P.HEARTBEAT: [], P.BYE: [],
}
# a few commands are skipped: HELLO with slots would take real jobs from the worker under test
# only when its group matches, so the fuzz uses its own groups; nothing else is left out.


def _scalar(rng: random.Random) -> Any:
    return rng.choice([
        None, True, False, 0, -1, 1, 2**31, -(2**63), 2**64 - 1, 0.5, float("nan"), "", "x", "é" * 3,
        b"", b"\x00" * 16, os.urandom(16), os.urandom(15), os.urandom(17), "email", "send-email",
    ])


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.55 or depth > 3:
        return _scalar(rng)
    if roll < 0.7:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.8:
        return {rng.choice(["id", "token", "x", 1, b"k"]): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if roll < 0.87:
        return "s" * rng.choice([1_000, 100_000])           # huge text
    if roll < 0.93:
        return list(range(rng.choice([1_000, 20_000])))     # long list
    nested: Any = 0
    for _ in range(rng.choice([50, 400])):                  # deep nesting
        nested = [nested]
    return nested


def _plausible(rng: random.Random, name: str) -> Any:
    """A value of the right type for ``name``, so the checks past the first are reached too."""
    table: dict[str, Any] = {
        "rid": rng.randint(1, 1000), "id": os.urandom(16), "token": rng.randint(0, 2**62), "slots": rng.randint(0, 8),
        "group": rng.choice(["fuzz", "fuzz2"]), "name": "step", "pid": rng.randint(1, 99999), "host": "fuzzhost",
        "server": "", "limit": 10, "state": "pending", "due_ms": rng.randint(0, 2**41), "all": False,
        "record": {"value": P.pack(1)}, "workflows": {"fuzz-wf": {"retries": 1}}, "ids": [os.urandom(16)],
        "running": [[os.urandom(16), 1]], "wait_on": [os.urandom(16)], "enqueue": [],
        "results": [[os.urandom(16), 1, P.pack(1), 0, 1]],
        "failures": [{"id": os.urandom(16), "token": 1, "kind": "error", "error": "e"}],
        "jobs": [{"id": os.urandom(16), "wf": "fuzz-wf", "group": "fuzz", "payload": P.pack(None)}],
    }
    return table.get(name, _scalar(rng))


def _body(rng: random.Random, command: bytes) -> dict[Any, Any]:
    body: dict[Any, Any] = {}
    for name in FIELDS[command]:
        roll = rng.random()
        if roll < 0.15:
            continue                              # missing
        body[name] = _plausible(rng, name) if roll < 0.55 else _value(rng)
    if command in (P.ENQUEUE, P.RETURN) and rng.random() < 0.3:
        body["jobs"] = [{f: (_plausible(rng, f) if rng.random() < 0.6 else _value(rng)) for f in JOB_FIELDS
                         if rng.random() < 0.8} for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.1:
        body[_value(rng) if rng.random() < 0.5 else "extra"] = _value(rng)
    return body


def frames(rng: random.Random) -> list[bytes]:
    """One hostile message: the right version, a real command, a body that is wrong somewhere."""
    command = rng.choice(sorted(FIELDS))
    roll = rng.random()
    if roll < 0.03:
        return [P.VERSION, command, b"\x91" * 3000 + b"\xc0"]   # nested past msgpack's stack
    if roll < 0.06:
        return [P.VERSION, command, os.urandom(rng.randint(0, 64))]
    if roll < 0.08:
        return [P.VERSION, command, P.pack([1, 2, 3])]
    try:
        return [P.VERSION, command, P.pack(_body(rng, command))]
    except (TypeError, ValueError, OverflowError):
        return [P.VERSION, command, P.pack({})]


def stream(seed: int) -> Iterator[list[bytes]]:
    rng = random.Random(seed)
    while True:
        yield frames(rng)


# --- the run ----------------------------------------------------------------------------------
NULL_RECEIVER = """
import zmq
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind("tcp://127.0.0.1:*")
print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
while True:
    sock.recv_multipart()
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def fuzz(endpoint: str, total: int, rate: float, seed: int) -> float:
    """Send ``total`` frames at about ``rate`` a second, reading (and dropping) the replies; returns seconds."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    started = time.monotonic()
    source = stream(seed)
    for n in range(total):
        sock.send_multipart(next(source))
        while sock.poll(0):
            sock.recv_multipart()
        ahead = n / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    sock.close(0)
    return time.monotonic() - started


def roundtrips(client: Any, stop: threading.Event, into: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        client.wait(client.enqueue("echo", {"n": 1}, group="email"), timeout=30)
        into.append((time.perf_counter() - t0) * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="hostile frames to send (default 100000)")
    parser.add_argument("--rate", type=float, default=3000, help="frames per second (default 3000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the frame generator")
    parser.add_argument("--baseline-s", type=float, default=5.0, help="seconds of round trips before the fuzz")
    args = parser.parse_args()
    from shoal import Client

    tests_apps = Path(__file__).resolve().parent.parent / "tests" / "apps"
    with tempfile.TemporaryDirectory(prefix="shoal-fuzz-") as tmp:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_apps), os.environ.get("PYTHONPATH", "")]),
               "SHOAL_TEST_DIR": tmp}
        log_path = Path(tmp) / "broker.log"
        with open(log_path, "wb") as log_fh:
            broker = subprocess.Popen([sys.executable, "-m", "shoal.broker", "--data", f"{tmp}/data", "--bind",
                                       "tcp://127.0.0.1:*", "--no-supervise"], stdout=log_fh, stderr=subprocess.STDOUT,
                                      env=env, cwd=tmp)
        try:
            deadline = time.monotonic() + 30
            while not (m := re.search(r"listening on (\S+)", log_path.read_text())):
                if time.monotonic() > deadline or broker.poll() is not None:
                    raise SystemExit(f"the broker did not start:\n{log_path.read_text()}")
                time.sleep(0.05)
            endpoint = m.group(1)
            worker = subprocess.Popen([sys.executable, "-m", "shoal.worker", "--group", "email", "--app", "testapp",
                                       "--connect", endpoint, "--concurrency", "4"], env=env, cwd=tmp,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                return run(endpoint, broker.pid, log_path, args, Client)
            finally:
                worker.kill()
                worker.wait()
        finally:
            broker.terminate()
            broker.wait(30)


def run(endpoint: str, broker_pid: int, log_path: Path, args: argparse.Namespace, client_class: Any) -> int:
    client = client_class(endpoint, timeout=30)
    client.wait(client.enqueue("echo", {"warm": 1}, group="email"), timeout=30)
    stop = threading.Event()
    before: list[float] = []
    during: list[float] = []
    sampler = threading.Thread(target=roundtrips, args=(client, stop, before))
    sampler.start()
    time.sleep(args.baseline_s)
    stop.set()
    sampler.join()
    rss_before = rss_mb(broker_pid)
    stop.clear()
    sampler = threading.Thread(target=roundtrips, args=(client, stop, during))
    sampler.start()
    peak = [rss_before]

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(broker_pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    took = fuzz(endpoint, args.frames, args.rate, args.seed)
    stop.set()
    sampler.join()
    watcher.join()
    # The floor under the same traffic: the frames go to a receiver that does nothing (its own
    # process, as the broker is), while the client talks to the broker as before.
    null: list[float] = []
    sink = subprocess.Popen([sys.executable, "-c", NULL_RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        null_endpoint = (sink.stdout.readline() if sink.stdout else "").strip()
        stop.clear()
        sampler = threading.Thread(target=roundtrips, args=(client, stop, null))
        sampler.start()
        fuzz(null_endpoint, args.frames, args.rate, args.seed)
        stop.set()
        sampler.join()
    finally:
        sink.kill()
        sink.wait()
    client.close()
    text = log_path.read_text(errors="replace")
    tracebacks = text.count("Traceback")
    internal = text.count("internal error")
    p99_before, p99_during = percentile(before, 0.99), percentile(during, 0.99)
    print(f"fuzz: {args.frames} frames in {took:.1f}s ({args.frames / took:,.0f}/s), seed {args.seed}")
    print(f"client round trip before: n={len(before)} p50 {percentile(before, 0.5):.2f} ms, p99 {p99_before:.2f} ms")
    print(f"client round trip during: n={len(during)} p50 {percentile(during, 0.5):.2f} ms, p99 {p99_during:.2f} ms "
          f"({p99_during / p99_before:.2f}x)")
    p99_null = percentile(null, 0.99)
    print(f"client round trip while the same frames go to a receiver that does nothing: n={len(null)} "
          f"p99 {p99_null:.2f} ms ({p99_null / p99_before:.2f}x)")
    print(f"broker RSS: {rss_before:.0f} MiB before, peak {peak[0]:.0f} MiB during")
    print(f"broker log: {tracebacks} tracebacks, {internal} internal errors, {len(text.splitlines())} lines")
    ok = tracebacks == 0 and internal == 0 and p99_during <= 3 * p99_before
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
