"""Transport security's pieces without a broker: keygen, the [security] config, the allow-lists,
the bind check and the metrics token."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shoal.broker.shell.metrics import MetricsServer
from shoal.broker.core.commands import ADMIN, CLIENT, WORKER
from shoal.broker.shell.security import KeyRing, is_local, refuse_exposure
from shoal.conf import load_settings
from shoal.errors import ConfigError
from shoal.security import client_keys, keygen, resolve_keys

pytestmark = pytest.mark.timeout(30)


def test_keygen_writes_a_zmq_auth_pair_with_a_private_secret(tmp_path: Path) -> None:
    public, secret = keygen("app", tmp_path / "k")
    assert public.name == "app.key" and secret.name == "app.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert "secret-key" in secret.read_text() and "secret-key" not in public.read_text()
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["app.key", "app.key_secret"]  # no scratch left


def test_keygen_never_overwrites_and_refuses_odd_names(tmp_path: Path) -> None:
    keygen("app", tmp_path)
    before = (tmp_path / "app.key_secret").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        keygen("app", tmp_path)
    assert (tmp_path / "app.key_secret").read_bytes() == before
    with pytest.raises(ConfigError, match="invalid key name"):
        keygen("../evil", tmp_path)


def test_shoal_keygen_command(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "shoal.cli", "keygen", "ops", "--dir", str(tmp_path)]
    made = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0 and "ops.key_secret" in made.stdout
    again = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "already exists" in again.stderr


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "shoal.toml"
    path.write_text(text)
    return str(path)


def test_security_table_loads_with_workers_per_group(tmp_path: Path) -> None:
    config = write(tmp_path, '[security]\nbroker_secret_key = "b.key_secret"\nclients = "c"\n'
                             '[security.workers]\nmedia = "wm"\n')
    settings = load_settings(config, env={})
    assert settings.security.on and settings.security.clients == "c"
    assert settings.security.workers == {"media": "wm"}
    assert settings.security_sources["clients"] == "[security]"


def test_a_misspelt_security_key_names_file_line_and_the_right_key(tmp_path: Path) -> None:
    config = write(tmp_path, '[security]\nclients = "c"\nbroker_secret = "x"\n')
    with pytest.raises(ConfigError, match=r'shoal.toml:3: security.broker_secret: unknown key; did you mean '
                                          r'"broker_secret_key"'):
        load_settings(config, env={})


def test_key_env_and_flags_beat_the_file(tmp_path: Path) -> None:
    config = write(tmp_path, '[security]\nkey = "file.key_secret"\nbroker_public_key = "b.key"\n')
    settings = load_settings(config, env={"SHOAL_KEY": "env.key_secret"})
    assert settings.security.key == "env.key_secret" and settings.security_sources["key"] == "env"
    settings = load_settings(config, env={"SHOAL_KEY": "env.key_secret"}, flags={"key": "flag.key_secret"})
    assert settings.security.key == "flag.key_secret" and settings.security_sources["key"] == "flag"


def test_half_a_key_pair_is_a_config_error(tmp_path: Path) -> None:
    keygen("app", tmp_path)
    with pytest.raises(ConfigError, match="broker_public_key is not"):
        client_keys(str(tmp_path / "app.key_secret"), "")
    with pytest.raises(ConfigError, match="holds only a public key"):
        client_keys(str(tmp_path / "app.key"), str(tmp_path / "app.key"))
    with pytest.raises(ConfigError, match="cannot read the key"):
        resolve_keys(str(tmp_path / "missing.key_secret"), str(tmp_path / "app.key"), env={})
    assert resolve_keys(env={}, config=write(tmp_path, "")) is None  # nothing set: a plain connection


def test_a_key_in_two_lists_has_both_roles(tmp_path: Path) -> None:
    keygen("ops", tmp_path / "secrets")
    for folder in ("clients", "admins", "media"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "ops.key").write_bytes((tmp_path / "secrets" / "ops.key").read_bytes())
    config = write(tmp_path, f'[security]\nbroker_secret_key = "x"\nclients = "{tmp_path / "clients"}"\n'
                             f'admins = "{tmp_path / "admins"}"\n[security.workers]\nmedia = "{tmp_path / "media"}"\n')
    ring = KeyRing.load(load_settings(config, env={}))
    public = (tmp_path / "secrets" / "ops.key").read_text().split('public-key = "')[1].split('"')[0]
    principal = ring.principal_of(public)
    assert principal.name == "ops" and principal.roles == {CLIENT, ADMIN, WORKER}
    assert principal.groups == {"media"}
    assert ring.principal_of("no such key").roles == frozenset()


def test_an_allow_list_that_is_missing_or_empty_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "nowhere", "not a directory"), (tmp_path / "empty", "holds no public key")):
        config = write(tmp_path, f'[security]\nbroker_secret_key = "x"\nclients = "{folder}"\n')
        with pytest.raises(ConfigError, match=message):
            KeyRing.load(load_settings(config, env={}))


@pytest.mark.parametrize("endpoint, local", [("ipc:///tmp/x", True), ("tcp://127.0.0.1:5555", True),
                                             ("tcp://localhost:1", True), ("tcp://[::1]:1", True),
                                             ("tcp://0.0.0.0:1", False), ("tcp://*:1", False),
                                             ("tcp://10.0.0.5:1", False), ("tcp://broker.lan:1", False)])
def test_which_binds_stay_on_this_host(endpoint: str, local: bool) -> None:
    assert is_local(endpoint) is local


def test_a_metrics_listener_beyond_loopback_needs_security_or_insecure(tmp_path: Path) -> None:
    config = write(tmp_path, '[broker]\nmetrics = "0.0.0.0:9464"\n')
    with pytest.raises(ConfigError, match="metrics 0.0.0.0:9464"):
        refuse_exposure(load_settings(config, env={}), ["tcp://127.0.0.1:5555"])
    refuse_exposure(load_settings(config, env={"SHOAL_INSECURE": "1"}), ["tcp://127.0.0.1:5555"])


def test_metrics_can_require_a_bearer_token() -> None:
    server = MetricsServer("127.0.0.1:0", token="s3cret")
    url = f"http://{server.address}/metrics"
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401
        refused.value.close()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer wrong"}), timeout=5)
        request = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200 and b"no metrics yet" in answer.read()
    finally:
        server.close()


def test_config_show_does_not_print_the_metrics_token(tmp_path: Path) -> None:
    from shoal.conf.show import render

    config = write(tmp_path, '[broker]\nmetrics_token = "s3cret"\n[security]\nclients = "c"\n')
    shown = render(load_settings(config, env={}))
    assert "s3cret" not in shown and "(set)" in shown and "SECURITY" in shown


def test_allow_lists_without_a_broker_key_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from shoal.broker.shell.security import security_note

    settings = load_settings(write(tmp_path, '[security]\nclients = "c"\n'), env={})
    assert security_note(None, settings) == "no [security]: loopback and ipc only"
    assert "no broker_secret_key: CURVE is off" in caplog.text


def test_a_supervised_key_leaves_the_environment_when_taken() -> None:
    import zmq

    from shoal.security import SUPERVISED_ENV, CurveKeys, supervised_keys

    public, secret = zmq.curve_keypair()
    keys = CurveKeys(public, secret, zmq.curve_keypair()[0])
    env = {SUPERVISED_ENV: keys.encode(), "OTHER": "x"}
    assert supervised_keys(env) == keys
    assert env == {"OTHER": "x"}  # a handler's subprocess would not inherit it
    assert supervised_keys(env) is None
