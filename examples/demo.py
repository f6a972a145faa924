"""Start a broker (which starts the workers from shoal.toml), enqueue a mix, print results.

    python examples/demo.py

The `email` group is always on; the `media` group scales to zero, so you watch a cold
start happen, and the slow media jobs never hold up the emails.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from shoal import Client

HERE = Path(__file__).resolve().parent


def start_broker(data: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.broker", "--config", str(HERE / "shoal.toml"), "--data", data,
         "--bind", "tcp://127.0.0.1:*", "--log-level", "warning"],
        stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"listening on (\S+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the broker did not start: {line!r}")
    print(line.strip())
    return proc, found.group(1)


def show_groups(client: Client, when: str) -> None:
    stats = client.stats()
    parts = [f"{g}: {s['state']}, {s['workers']} worker(s), {s['pending']} pending, {s['running']} running, "
             f"{s['completed']} done" + (f", cold start {s['last_cold_start_s']}s" if s.get("last_cold_start_s") else "")
             for g, s in stats.items() if g in ("email", "media")]
    print(f"[{when}] " + " | ".join(parts))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as data:
        broker, endpoint = start_broker(data)
        try:
            with Client(endpoint, timeout=30) as client:
                while client.stats().get("email", {}).get("workers", 0) < 1:
                    time.sleep(0.05)  # the always-on email worker is starting
                show_groups(client, "start")
                started = time.monotonic()
                media = client.enqueue_many("resize-image", [{"key": f"photo-{i}.jpg"} for i in range(4)],
                                            group="media")
                emails = client.enqueue_many("send-email", [{"to": f"user{i}@example.com", "order": 1000 + i}
                                                            for i in range(12)], group="email")
                notes = [client.enqueue("notify", {"user": f"user{i}"}, group="email") for i in range(3)]
                show_groups(client, "enqueued")
                with ThreadPoolExecutor(max_workers=20) as pool:
                    futures = {pool.submit(client.wait, job_id, 60): job_id for job_id in media + emails + notes}
                    for fut in as_completed(futures):
                        result = fut.result()
                        took = time.monotonic() - started
                        print(f"{took:6.2f}s  {result.workflow:<13} {result.group:<6} {result.status:<9} {result.value}")
                show_groups(client, "all done")
                print("waiting for the idle media worker to exit (idle_timeout = 5s) ...")
                deadline = time.monotonic() + 20
                while client.stats()["media"]["workers"] and time.monotonic() < deadline:
                    time.sleep(0.2)
                show_groups(client, "later")
        finally:
            broker.terminate()
            broker.wait(30)


if __name__ == "__main__":
    main()
