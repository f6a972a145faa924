"""The dashboard over plain HTTP (a real dashboard process, a real broker): bad input gets a clear
page, actions refuse forged requests, and an unreachable broker is named in a banner."""
from __future__ import annotations

import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

import pytest

from conftest import Cluster, wait_for
from test_dashboard import TOML, dash, start_dashboard  # noqa: F401  (dash: the fixture)


def fetch(url: str, data: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    body = None if data is None else urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, body, headers or {}, method="POST" if data is not None else "GET")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=20) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def message_of(html: str) -> str:
    found = re.search(r'<p class="message">(.*?)</p>', html, re.S)
    assert found, html
    return found.group(1).replace("&#39;", "'")


@pytest.mark.parametrize("query, status, says", [
    ("/jobs?state=finished", 400, "unknown state 'finished'"),
    ("/jobs?page=0", 400, "page must be a whole number from 1"),
    ("/jobs?q=not-an-id", 400, "'not-an-id' is not a job id"),
    ("/jobs/0190c3d2-7a1b-7c3e-9a4f-2b6d8e1f0a3c", 404, "no job 0190c3d2-7a1b-7c3e-9a4f-2b6d8e1f0a3c"),
    ("/jobs/xyz", 400, "'xyz' is not a job id"),
    ("/no/such/page", 404, "no page at /no/such/page"),
])
def test_bad_input_gets_a_page_that_says_what_is_wrong(dash: tuple[Cluster, str], query: str, status: int,
                                                       says: str) -> None:
    code, html, _ = fetch(dash[1] + query)
    assert code == status and says in message_of(html)
    assert "Traceback" not in html


def test_search_by_id_goes_to_the_job(dash: tuple[Cluster, str]) -> None:
    cluster, url = dash
    job_id = cluster.client().enqueue("echo", {}, group="email")
    code, _, headers = fetch(f"{url}/jobs?q={job_id}")
    assert code == 303 and headers["location"] == f"/jobs/{job_id}"


def _dead_job(cluster: Cluster) -> str:
    cluster.start_worker("email")
    client = cluster.client()
    job_id = client.enqueue("toggle", {}, group="email")
    assert client.wait(job_id, timeout=20).status == "dead"
    return job_id


def _token_and_cookie(url: str, page: str = "/dead") -> tuple[str, str]:
    _, html, headers = fetch(url + page)
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert token, html
    return token.group(1), headers["set-cookie"].split(";")[0]


@pytest.mark.parametrize("forgery, says", [
    ("no origin", "no Origin or Referer"),
    ("other origin", "comes from 'http://evil.example'"),
    ("bad token", "CSRF token is missing or stale"),
    ("no cookie", "CSRF token is missing or stale"),
])
def test_a_forged_requeue_is_refused_and_changes_nothing(dash: tuple[Cluster, str], forgery: str, says: str) -> None:
    cluster, url = dash
    job_id = _dead_job(cluster)
    token, cookie = _token_and_cookie(url)
    headers = {"Origin": url, "Cookie": cookie}
    form = {"id": job_id, "csrf": token, "confirm": "yes"}
    if forgery == "no origin":
        del headers["Origin"]
    elif forgery == "other origin":
        headers["Origin"] = "http://evil.example"
    elif forgery == "bad token":
        form["csrf"] = "0" * 64
    else:
        del headers["Cookie"]
    code, html, _ = fetch(url + "/dead/requeue", form, headers)
    assert code == 403 and says in message_of(html)
    assert cluster.client().get(job_id).status == "dead"


def test_requeue_with_token_and_origin_works(dash: tuple[Cluster, str]) -> None:
    cluster, url = dash
    job_id = _dead_job(cluster)
    token, cookie = _token_and_cookie(url)
    (cluster.tmp / "toggle-ok").touch()
    code, _, headers = fetch(url + "/dead/requeue", {"id": job_id, "csrf": token, "confirm": "yes"},
                             {"Origin": url, "Cookie": cookie})
    assert code == 303 and "requeued+job" in headers["location"]
    assert cluster.client().wait(job_id, timeout=20).status == "completed"


def test_a_foreign_host_header_is_refused(dash: tuple[Cluster, str]) -> None:
    code, html, _ = fetch(dash[1] + "/", headers={"Host": "rebound.example:8008"})
    assert code == 421 and "loopback only" in html


def test_an_unreachable_broker_is_named_in_a_banner(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(TOML)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        cluster.endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    _, url = start_dashboard(cluster, "--timeout", "0.5")
    for path in ("/", "/workers", "/dead"):
        code, html, _ = fetch(url + path)
        assert code == 503, path
        assert f"Broker at {cluster.endpoint} is not answering" in html
        assert "Traceback" not in html


def test_a_bad_bind_is_a_usage_error(cluster_factory: Callable[..., Cluster]) -> None:
    import subprocess
    import sys

    cluster = cluster_factory(TOML)
    done = subprocess.run([sys.executable, "-m", "shoal.cli", "dashboard", "--bind", "localhost"],
                          capture_output=True, text=True, timeout=60, env=cluster.env)
    assert done.returncode == 2 and "expected HOST:PORT" in done.stderr


def test_workers_lists_each_connected_worker_with_what_it_holds(dash: tuple[Cluster, str]) -> None:
    import asyncio

    from shoal import AsyncClient

    cluster, url = dash
    worker = cluster.start_worker("media", 2)
    client = cluster.client()
    job_id = client.enqueue("block", {"i": 1, "max_s": 60}, group="media")
    rows = wait_for(lambda: [w for w in client.workers() if w["busy"] == 1], what="the worker to hold the job")
    assert len(rows) == 1
    row = rows[0]
    assert (row["group"], row["pid"], row["slots"], row["jobs"]) == ("media", worker.pid, 2, [job_id])
    assert row["rss_bytes"] > 0 and row["last_seen_s"] < 3.0 and "block" in row["workflows"]
    assert client.workers(group="email") == []

    async def from_async() -> list[dict[str, object]]:
        async with AsyncClient(cluster.endpoint) as ac:
            return await ac.workers("media")
    assert [w["pid"] for w in asyncio.run(from_async())] == [worker.pid]

    code, html, _ = fetch(url + "/workers")
    assert code == 200 and f'data-worker="{row["name"]}"' in html and f"/jobs/{job_id}" in html
    (cluster.tmp / "release").touch()
    assert client.wait(job_id, timeout=20).status == "completed"


def _post(url: str, path: str, form: dict[str, str], page: str = "/dead") -> tuple[int, str, dict[str, str]]:
    token, cookie = _token_and_cookie(url, page)
    return fetch(url + path, {**form, "csrf": token}, {"Origin": url, "Cookie": cookie})


def test_requeue_all_asks_first_then_requeues_every_dead_job(dash: tuple[Cluster, str]) -> None:
    cluster, url = dash
    cluster.start_worker("email")
    client = cluster.client()
    ids = [client.enqueue("toggle", {"n": n}, group="email") for n in range(3)]
    assert all(client.wait(i, timeout=20).status == "dead" for i in ids)
    code, html, _ = _post(url, "/dead/requeue-all", {"group": "email"})
    assert code == 200 and "Requeue all 3 dead jobs of group email" in html
    assert len(client.dead_letters()) == 3, "requeued before the confirmation"
    (cluster.tmp / "toggle-ok").touch()
    code, _, headers = _post(url, "/dead/requeue-all", {"group": "email", "confirm": "yes"})
    assert code == 303 and "requeued+3+dead+jobs+of+group+email" in headers["location"]
    assert [client.wait(i, timeout=20).status for i in ids] == ["completed"] * 3


def test_cancel_from_the_job_page_asks_first(dash: tuple[Cluster, str]) -> None:
    cluster, url = dash
    client = cluster.client()
    job_id = client.enqueue("echo", {}, group="email", delay=600)
    code, html, _ = _post(url, f"/jobs/{job_id}/cancel", {}, page=f"/jobs/{job_id}")
    assert code == 200 and f"Cancel job {job_id}?" in html and client.get(job_id).status == "scheduled"
    code, _, headers = _post(url, f"/jobs/{job_id}/cancel", {"confirm": "yes"}, page=f"/jobs/{job_id}")
    assert code == 303 and headers["location"].startswith(f"/jobs/{job_id}?done=")
    assert client.get(job_id).status == "cancelled"
