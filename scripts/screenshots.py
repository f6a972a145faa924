"""Screenshots of the dashboard's pages for the docs: ``python scripts/screenshots.py [--out docs/img]``.

Starts a real broker, workers of the test apps and ``shoal dashboard`` in a temporary
directory, runs a minute of mixed work (completed, retried, dead, running, waiting in a cold
group, cron), then photographs each page in headless Debian chromium (no browser download).
Writes ``dashboard-{overview,overview-phone,workers,jobs,job,dead,cron}.png``.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Cluster  # noqa: E402  (the tests' process fixtures: real broker and workers)
from test_dashboard import launch, start_dashboard  # noqa: E402

TOML = """
[broker]
heartbeat_interval = "0.5s"

[workflows]
backoff = "200ms"
backoff_max = "1s"

[workflows.reports]
workers = 0

[cron.nightly-report]
workflow = "noop"
schedule = "0 3 * * *"
payload = { kind = "daily" }

[cron.every-minute]
workflow = "cron-mark"
schedule = "* * * * *"
payload = { entry = "every-minute" }
"""


def make_work(cluster: Cluster, seconds: float) -> str:
    """Run a mix of jobs for ``seconds``; returns the id of a finished fan-out job (for the job page)."""
    client = cluster.client()
    client.enqueue_many("block", [{"i": i, "max_s": 600} for i in range(3)], group="media")  # busy slots
    client.enqueue_many("report", [{"day": d} for d in range(7)], group="reports")  # a cold group waits
    client.enqueue("always-fails", {"to": "bounce@example.com"}, group="email")
    client.enqueue("permanent", {"to": "nobody@example.com"}, group="email")
    fan_out = client.enqueue("fan-out", {"n": 4}, group="steps")
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.enqueue_many("echo", [{"to": f"user{rng.randrange(999)}@example.com"}
                                     for _ in range(rng.randrange(5, 30))], group="email")
        client.enqueue("flaky", {"ok_on": rng.choice([1, 2, 3])}, group="email")
        client.enqueue_many("async-steps", [{}] * rng.randrange(1, 4), group="steps")
        time.sleep(1.0)
    client.wait(fan_out, timeout=60)
    return fan_out


def shoot(url: str, job_id: str, out: Path) -> list[Path]:
    """Photograph every page; returns the files written."""
    from playwright.sync_api import sync_playwright

    shots = [("overview", "/"), ("workers", "/workers"), ("jobs", "/jobs"), ("job", f"/jobs/{job_id}"),
             ("dead", "/dead"), ("cron", "/cron")]
    written = []
    with sync_playwright() as p:
        browser = launch(p)
        desktop = browser.new_context(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
        page = desktop.new_page()
        for name, path in shots:
            page.goto(url + path)
            page.wait_for_timeout(500)  # one live refresh has localised every time
            written.append(out / f"dashboard-{name}.png")
            page.screenshot(path=str(written[-1]), full_page=True)
        phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                    has_touch=True)
        page = phone.new_page()
        page.goto(url + "/")
        page.wait_for_timeout(500)
        written.append(out / "dashboard-overview-phone.png")
        page.screenshot(path=str(written[-1]), full_page=True)
        browser.close()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--seconds", type=float, default=75.0, help="how long to run work before the shots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shoal-shots-") as tmp:
        cluster = Cluster(Path(tmp), TOML)
        try:
            cluster.start_broker()
            for group, app in (("email", "testapp"), ("email", "testapp"), ("media", "testapp"),
                               ("steps", "stepsapp"), ("default", "testapp")):
                cluster.start_worker(group, 8, app=app)
            _, url = start_dashboard(cluster)
            job_id = make_work(cluster, args.seconds)
            for path in shoot(url, job_id, args.out):
                print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        finally:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
