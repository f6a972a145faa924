"""Which broker a client reaches, found the way ``shoal`` and ``worker`` find it, and a
malformed endpoint refused at once (never a ZMQError traceback and a hang)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal import Client, ConfigError, ShoalError
from shoal.endpoints import check_endpoint, resolve_endpoint
from shoal.errors import InvalidEndpoint

from conftest import APPS, Cluster

BAD = "localhost:5599"
MESSAGE = "invalid endpoint 'localhost:5599', expected tcp://HOST:PORT or ipc://PATH"


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's SHOAL_BROKER / SHOAL_CONFIG / ./shoal.toml must not steer these tests."""
    monkeypatch.delenv("SHOAL_BROKER", raising=False)
    monkeypatch.delenv("SHOAL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("SHOAL_BROKER", "SHOAL_CONFIG")}
    environ["PYTHONPATH"] = os.pathsep.join([str(APPS), environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=30,
                          env={**environ, **(env or {})})


# --- a malformed endpoint -------------------------------------------------------------------------
def test_client_with_an_endpoint_without_a_scheme_raises_invalid_endpoint_at_once() -> None:
    with pytest.raises(InvalidEndpoint) as info:
        Client(BAD)
    assert str(info.value) == MESSAGE
    assert isinstance(info.value, ValueError) and isinstance(info.value, ShoalError)


def test_client_with_a_malformed_shoal_broker_raises_invalid_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_BROKER", "127.0.0.1:5599")
    with pytest.raises(InvalidEndpoint, match="invalid endpoint '127.0.0.1:5599'"):
        Client()


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5555",
                                      "ipc:///tmp/shoal.sock", "ipc://@abstract"])
def test_well_formed_endpoints_pass_the_check(endpoint: str) -> None:
    assert check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize("endpoint", ["localhost:5599", "tcp://localhost", "tcp://:5555", "tcp://*:5555",
                                      "tcp://host:99999", "ipc://", "http://host:80", " tcp://h:1", ""])
def test_malformed_endpoints_fail_the_check(endpoint: str) -> None:
    with pytest.raises(InvalidEndpoint):
        check_endpoint(endpoint)


def test_shoal_status_with_a_broker_flag_without_a_scheme_exits_2_naming_it() -> None:
    proc = _run(["-m", "shoal.cli", "status", "--broker", BAD])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"shoal status: {MESSAGE}"


def test_shoal_status_with_shoal_broker_without_a_scheme_exits_2_naming_it() -> None:
    proc = _run(["-m", "shoal.cli", "status"], env={"SHOAL_BROKER": "127.0.0.1:5599"})
    assert proc.returncode == 2, proc.stderr
    assert "invalid endpoint '127.0.0.1:5599', expected tcp://HOST:PORT or ipc://PATH" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_worker_with_connect_without_a_scheme_exits_2_naming_it() -> None:
    proc = _run(["-m", "shoal.worker", "--group", "email", "--app", "testapp", "--connect", BAD])
    assert proc.returncode == 2, proc.stderr
    assert f"worker: {MESSAGE}" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- finding the broker -----------------------------------------------------------------------------
def test_resolution_is_argument_then_env_then_config_then_default(tmp_path: Path) -> None:
    assert resolve_endpoint(None, None, env={}) == "tcp://127.0.0.1:5555"  # nothing anywhere
    (tmp_path / "shoal.toml").write_text('[broker]\nbind = "tcp://0.0.0.0:7001"\n')
    assert resolve_endpoint(None, None, env={}) == "tcp://127.0.0.1:7001"  # ./shoal.toml, reached on loopback
    other = tmp_path / "other.toml"
    other.write_text('[broker]\nbind = "ipc:///tmp/other"\n')
    assert resolve_endpoint(None, None, env={"SHOAL_CONFIG": str(other)}) == "ipc:///tmp/other"
    env = {"SHOAL_CONFIG": str(other), "SHOAL_BROKER": "tcp://10.0.0.1:1"}
    assert resolve_endpoint(None, None, env=env) == "tcp://10.0.0.1:1"
    assert resolve_endpoint("tcp://10.0.0.2:2", None, env=env) == "tcp://10.0.0.2:2"


def test_client_without_an_endpoint_reaches_the_broker_named_by_shoal_toml(cluster: Cluster, tmp_path: Path) -> None:
    port = cluster.endpoint.rsplit(":", 1)[1]
    (tmp_path / "shoal.toml").write_text(f'[broker]\nbind = "tcp://*:{port}"\n')
    with Client(timeout=5) as client:
        assert client.endpoint == f"tcp://127.0.0.1:{port}"
        assert client.get(client.enqueue("echo", {"x": 1}, group="email")).status == "pending"


def test_client_without_an_endpoint_reaches_the_broker_named_by_shoal_config(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text(f'[broker]\nbind = "{cluster.endpoint}"\n')
    monkeypatch.setenv("SHOAL_CONFIG", str(config))
    with Client(timeout=5) as client:
        assert client.endpoint == cluster.endpoint
        assert isinstance(client.stats(), dict)


def test_client_without_an_endpoint_reports_a_broken_config_file(tmp_path: Path) -> None:
    (tmp_path / "shoal.toml").write_text('[broker]\nbind = "localhost:5599"\n')
    with pytest.raises(ConfigError, match="shoal.toml"):
        Client()
