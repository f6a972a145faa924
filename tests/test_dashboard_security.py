"""The dashboard with transport security on, in a real browser: it connects with its own key and
says what that key may do. A client key reads but cannot requeue (the buttons say why); an admin
key requeues. Real broker, worker and dashboard processes, real keys from `shoal keygen`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import Cluster
from test_dashboard import CHROMIUM, browser, page, playwright_sync, start_dashboard  # noqa: F401 (fixtures)
from test_security import Keys, connect

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)"),
              pytest.mark.timeout(90)]


@pytest.fixture
def secured_dead(cluster_factory: Callable[..., Cluster], tmp_path: Path) -> tuple[Cluster, Keys, str]:
    """A CURVE broker with one dead letter (``toggle``, which works once its flag file exists)."""
    keys = Keys(tmp_path / "keys")
    cluster = cluster_factory(keys.toml())
    cluster.start_broker()
    cluster.start_worker("email", 2, *keys.flags("email-1"))
    app = connect(cluster, keys, "app", timeout=10)
    job_id = app.enqueue("toggle", {}, group="email")
    assert app.wait(job_id, timeout=20).status == "dead"
    return cluster, keys, job_id


def test_a_client_key_dashboard_reads_but_may_not_requeue(secured_dead: tuple[Cluster, Keys, str], page: Any) -> None:
    cluster, keys, job_id = secured_dead
    _, url = start_dashboard(cluster, "--key", keys.secret("app"), "--broker-key", keys.broker_public)
    page.goto(url + "/dead")
    playwright_sync.expect(page.locator("#access")).to_have_text(
        "your key: app, role client — read only: requeue and cancel need an admin key")
    row = page.locator(f'tr[data-job="{job_id}"]')
    playwright_sync.expect(row).to_contain_text("not yet")  # it reads the dead letters
    button = row.get_by_role("button", name="Requeue")
    playwright_sync.expect(button).to_be_disabled()
    assert "needs an admin key" in (button.get_attribute("title") or "")
    playwright_sync.expect(page.locator(".not-allowed")).to_contain_text("key 'app' (client) may not requeue")


def test_an_admin_key_dashboard_requeues(secured_dead: tuple[Cluster, Keys, str], page: Any) -> None:
    cluster, keys, job_id = secured_dead
    (cluster.tmp / "toggle-ok").touch()
    _, url = start_dashboard(cluster, "--key", keys.secret("ops"), "--broker-key", keys.broker_public)
    page.goto(url + "/dead")
    playwright_sync.expect(page.locator("#access")).to_have_text("your key: ops, role admin — may requeue and cancel")
    row = page.locator(f'tr[data-job="{job_id}"]')
    row.get_by_role("button", name="Requeue").click()
    page.get_by_role("button", name="Yes, do it").click()
    playwright_sync.expect(page.locator(".banner.ok")).to_have_text(f"requeued job {job_id}")
    assert connect(cluster, keys, "app").wait(job_id, timeout=20).status == "completed"


def test_a_dashboard_without_a_key_gets_no_answer_from_a_curve_broker(secured_dead: tuple[Cluster, Keys, str],
                                                                      page: Any) -> None:
    cluster, _, _ = secured_dead
    _, url = start_dashboard(cluster, "--timeout", "0.5")
    page.goto(url + "/")
    playwright_sync.expect(page.locator("#live")).to_contain_text("0.5s")
