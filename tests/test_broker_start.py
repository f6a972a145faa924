"""What a broker needs to start: a bind that cannot be made, or a data directory that cannot be
used, is a clear refusal; and IPv6 endpoints work.

A taken port, an address that is not this host's, or a data directory with a file in its way
stops the broker with exit code 1 and one line naming what, what it is for and why, never a
traceback; after a refused bind the data directory is left free for the next broker. A broker bound to ``tcp://[::1]:PORT`` serves the ZMTP client,
the async client, the events stream, its own workers and the ones it supervises.
"""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import AsyncClient

from conftest import DEFAULT_TOML, Cluster, needs_ipv6, wait_for


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port another process (here: a plain socket) listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def broker(tmp_path: Path, *args: str, toml: str = DEFAULT_TOML) -> subprocess.CompletedProcess[str]:
    """A broker run to its end (it should refuse to start)."""
    config = tmp_path / "shoal.toml"
    config.write_text(toml)
    return subprocess.run([sys.executable, "-m", "shoal.broker", "--config", str(config), "--data",
                           str(tmp_path / "data"), "--no-supervise", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def refused(done: subprocess.CompletedProcess[str], *wanted: str) -> None:
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "Traceback" not in said, said
    for text in wanted:
        assert text in done.stderr, said


def test_a_taken_port_stops_the_broker_naming_the_endpoint_and_the_reason_and_frees_the_data_dir(
        tmp_path: Path, taken: int, cluster_factory) -> None:
    done = broker(tmp_path, "--bind", f"tcp://127.0.0.1:{taken}")
    refused(done, f"broker: cannot listen on tcp://127.0.0.1:{taken} (the broker's endpoint: --bind, [broker] bind): "
                  "Address already in use: another process holds that port")
    c: Cluster = cluster_factory()  # the same data directory: the failed broker let go of its lock
    c.start_broker()
    assert c.client().stats() is not None


def test_an_address_that_is_not_this_hosts_is_refused_naming_it(tmp_path: Path) -> None:
    done = broker(tmp_path, "--insecure", "--bind", "tcp://192.0.2.1:5599")  # TEST-NET-1: never a host's
    refused(done, "cannot listen on tcp://192.0.2.1:5599", "that address is not one of this host's")


def test_a_taken_events_port_is_refused_naming_the_events_setting(tmp_path: Path, taken: int) -> None:
    done = broker(tmp_path, "--bind", "tcp://127.0.0.1:*",
                  toml=DEFAULT_TOML.replace("[broker]", f'[broker]\nevents = "tcp://127.0.0.1:{taken}"'))
    refused(done, f"cannot listen on tcp://127.0.0.1:{taken} (the events stream: [broker] events): "
                  "Address already in use")


def test_a_taken_metrics_port_is_refused_naming_the_metrics_setting(tmp_path: Path, taken: int) -> None:
    done = broker(tmp_path, "--bind", "tcp://127.0.0.1:*",
                  toml=DEFAULT_TOML.replace("[broker]", f'[broker]\nmetrics = "127.0.0.1:{taken}"'))
    refused(done, f"cannot serve metrics on 127.0.0.1:{taken} ([broker] metrics): Address already in use")


def test_a_data_directory_with_a_file_in_its_place_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    done = broker(tmp_path, "--bind", "tcp://127.0.0.1:*")
    refused(done, f"broker: cannot use {tmp_path / 'data'} as the data directory (--data, [broker] data, SHOAL_DATA): "
                  "File exists: a file, not a directory, has that name")


def test_a_data_directory_under_a_file_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file")
    done = broker(tmp_path, "--bind", "tcp://127.0.0.1:*", "--data", str(tmp_path / "plain" / "data"))
    refused(done, f"cannot use {tmp_path / 'plain' / 'data'} as the data directory",
            "Not a directory: a part of that path is a file, not a directory")


SUPERVISED_TOML = DEFAULT_TOML.replace("[broker]", '[broker]\nmetrics = "[::1]:0"') + """
[workflows.email]
app = "testapp"
workers = 1
concurrency = 2
"""


@needs_ipv6
def test_a_broker_on_ipv6_loopback_serves_clients_events_and_workers(cluster_factory) -> None:
    c: Cluster = cluster_factory()
    c.endpoint = "tcp://[::1]:*"
    c.start_broker()
    assert c.endpoint.startswith("tcp://[::1]:"), c.endpoint
    c.start_worker("email", 2)
    client = c.client()  # a plain socket speaking ZMTP
    job = client.enqueue("echo", {"n": 1}, group="email")
    assert client.wait(job, timeout=20).status == "completed"

    heard: list[str] = []  # the events stream, on the IPv6 endpoint the broker derived from its own
    listener = threading.Thread(target=lambda: heard.extend(
        e["id"] for e in c.client().events(group="email", timeout=2) if e["event"] == "completed"))
    listener.start()
    # a SUB socket misses what is published before its subscription lands: probe until it hears
    wait_for(lambda: client.enqueue("echo", {}, group="email") and heard, what="an event over IPv6")
    listener.join(30)

    async def through_async() -> str:  # libzmq's DEALER on the event loop
        async with AsyncClient(c.endpoint) as aio:
            return (await aio.wait(await aio.enqueue("echo", {"n": 2}, group="email"), timeout=20)).status

    assert asyncio.run(through_async()) == "completed"


@needs_ipv6
def test_a_supervising_broker_on_ipv6_starts_workers_that_reach_it(cluster_factory) -> None:
    c: Cluster = cluster_factory(SUPERVISED_TOML)
    c.endpoint = "tcp://[::1]:*"
    c.start_broker(supervise=True)
    assert "metrics on http://[::1]:" in c.broker_output()
    client = c.client()
    wait_for(lambda: client.stats()["email"]["workers"] == 1, what="the supervised email worker")
    assert client.wait(client.enqueue("echo", {}, group="email"), timeout=20).status == "completed"
