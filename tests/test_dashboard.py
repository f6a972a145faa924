"""The dashboard in a real browser: headless Debian chromium driven by Playwright, against a real
broker, real workers and the dashboard as its own process on a free loopback port."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import DEFAULT_TOML, Cluster, Proc, wait_for

playwright_sync = pytest.importorskip("playwright.sync_api")
playwright_sync.expect.set_options(timeout=20_000)  # a loaded 2-core machine; each wait ends on its event
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOML = DEFAULT_TOML + "\n[workflows.email]\nconcurrency = 4\n"  # the group shows before its first job
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (.ci/run installs it)")


def start_dashboard(cluster: Cluster, *extra: str) -> tuple[Proc, str]:
    """``shoal dashboard`` for the cluster's broker on a free loopback port; returns it and its URL."""
    args = [sys.executable, "-m", "shoal.cli", "dashboard", "--bind", "127.0.0.1:0", "--broker", cluster.endpoint,
            *extra]
    proc = Proc(args, cluster.tmp / "dashboard.log", cluster.env, cluster.tmp)
    cluster.procs.append(proc)
    found = wait_for(lambda: re.search(r"serving (http://\S+/)", proc.output()) or (not proc.alive() and
                     pytest.fail(f"dashboard exited:\n{proc.output()}")), what="the dashboard to listen")
    return proc, found.group(1).rstrip("/")


def launch(p: Any) -> Any:
    """Debian's chromium, headless, without any network of its own."""
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # a zone with a half-hour offset: times must be the viewer's, not the server's UTC
    context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="Asia/Kolkata")
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


@pytest.fixture
def dash(cluster_factory: Callable[..., Cluster]) -> tuple[Cluster, str]:
    cluster = cluster_factory(TOML)
    cluster.start_broker()
    _, url = start_dashboard(cluster)
    return cluster, url


def test_overview_shows_pending_change_without_reload(dash: tuple[Cluster, str], page: Any) -> None:
    cluster, url = dash
    page.goto(url + "/")
    pending = page.locator('[data-group="email"] [data-count="pending"]')
    playwright_sync.expect(pending).to_have_text("0")
    page.evaluate("window.__not_reloaded = true")
    cluster.client().enqueue_many("echo", [{"i": i} for i in range(3)], group="email")  # no worker: they wait
    playwright_sync.expect(pending).to_have_text("3")
    assert page.evaluate("window.__not_reloaded === true"), "the page was reloaded"


def test_a_broker_that_stops_answering_shows_a_banner_until_it_is_back(dash: tuple[Cluster, str], page: Any) -> None:
    cluster, url = dash
    page.goto(url + "/workers")
    banner = page.locator('[data-banner="unreachable"]')
    playwright_sync.expect(banner).to_have_count(0)
    assert cluster.broker is not None
    cluster.broker.kill()
    playwright_sync.expect(banner).to_contain_text(f"Broker at {cluster.endpoint} is not answering")
    cluster.start_broker()  # same endpoint, same data
    playwright_sync.expect(banner).to_have_count(0)
    playwright_sync.expect(page.locator("#live")).to_contain_text("No worker is connected")


def test_dead_letter_requeue_button_requeues_and_the_job_completes(dash: tuple[Cluster, str], page: Any) -> None:
    cluster, url = dash
    cluster.start_worker("email")
    client = cluster.client()
    job_id = client.enqueue("toggle", {}, group="email")
    assert client.wait(job_id, timeout=20).status == "dead"
    (cluster.tmp / "toggle-ok").touch()  # from now on the handler succeeds

    page.goto(url + "/dead")
    row = page.locator(f'tr[data-job="{job_id}"]')
    playwright_sync.expect(row).to_contain_text("not yet")
    row.get_by_role("button", name="Requeue").click()
    playwright_sync.expect(page.locator("form.confirm")).to_contain_text(f"Requeue job {job_id}")
    assert client.get(job_id).status == "dead", "requeued before the confirmation"
    page.get_by_role("button", name="Yes, do it").click()
    playwright_sync.expect(page.locator(".banner.ok")).to_have_text(f"requeued job {job_id}")
    result = client.wait(job_id, timeout=20)
    assert result.status == "completed" and result.value == "ok"
    playwright_sync.expect(row).to_have_count(0)  # gone from the list, live


def test_job_page_shows_steps_and_history(dash: tuple[Cluster, str], page: Any) -> None:
    cluster, url = dash
    cluster.start_worker("steps", app="stepsapp")
    client = cluster.client()
    job_id = client.enqueue("async-steps", {}, group="steps")
    assert client.wait(job_id, timeout=20).status == "completed"

    page.goto(f"{url}/jobs/{job_id}")
    playwright_sync.expect(page.locator("[data-status]")).to_have_text("completed")
    steps = page.locator("#steps tbody tr")
    playwright_sync.expect(steps).to_have_count(3)
    assert [steps.nth(i).locator("td").first.inner_text() for i in range(3)] == ["a", "b", "short"]
    playwright_sync.expect(steps.nth(1)).to_contain_text("42")
    history = page.locator("#history tbody tr")
    ops = [history.nth(i).locator("td").nth(2).inner_text() for i in range(history.count())]
    logged = [e.op for e in client.history(job_id)]
    assert ops == logged and ops[0] == "enqueue", ops  # the same entries as `shoal job why`
    first = page.locator("#history tbody tr").first.locator("time")
    shown_ms = int(first.get_attribute("data-ms"))
    in_kolkata = datetime.fromtimestamp(shown_ms / 1000, timezone(timedelta(hours=5, minutes=30)))
    assert in_kolkata.strftime("%H:%M:%S") in first.inner_text()


def test_overview_fits_a_phone_screen(dash: tuple[Cluster, str], browser: Any) -> None:
    cluster, url = dash
    cluster.client().enqueue("echo", {}, group="email")
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        pg = context.new_page()
        for path in ("/", "/jobs", "/workers", "/dead", "/cron"):
            pg.goto(url + path)
            overflow = pg.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} is {overflow}px wider than a phone screen"
    finally:
        context.close()


def test_job_page_follows_a_running_job_live(dash: tuple[Cluster, str], page: Any) -> None:
    cluster, url = dash
    cluster.start_worker("steps", app="stepsapp")
    client = cluster.client()
    job_id = client.enqueue("between-steps", {}, group="steps")  # stops after step "first" until go-on exists
    page.goto(f"{url}/jobs/{job_id}")
    status = page.locator("[data-status]")
    playwright_sync.expect(status).to_have_text("running")
    playwright_sync.expect(page.locator("#steps tbody tr")).to_have_count(1)
    page.evaluate("window.__not_reloaded = true")
    (cluster.tmp / "go-on").touch()
    playwright_sync.expect(status).to_have_text("completed")
    playwright_sync.expect(page.locator("#steps tbody tr")).to_have_count(2)
    playwright_sync.expect(page.locator("#history tbody tr").last).to_contain_text("complete")
    assert page.evaluate("window.__not_reloaded === true")
