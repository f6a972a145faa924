"""The TypeScript worker and client against a broker with CURVE on (docs/security.md): real
broker, real node processes, real keys made by `shoal keygen` under tmp_path. Which key may join
(the broker's authenticator), which group a worker key may serve, and where the TS side takes its
key files from (flag, SHOAL_KEY / SHOAL_BROKER_KEY, `[security]` of shoal.toml)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.conformance` from any cwd

from shoal import Client  # noqa: E402
from shoal.security import keygen, read_certificate  # noqa: E402
from tests.conformance import IMPLEMENTATIONS, TS_SDK  # noqa: E402
from tests.conformance.__main__ import run_scenario  # noqa: E402
from tests.conformance.scenarios import SCENARIOS  # noqa: E402
from tests.conformance.node import ensure_built, tools  # noqa: E402
from tests.conftest import DEFAULT_TOML, Cluster, Proc, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(90)

CLI = TS_SDK / "dist" / "cli.js"
APP = TS_SDK / "conformance" / "app.mjs"
# name -> allow-list directory (under keys/), laid out as docs/security.md tells operators
ROLES = {"app": "clients", "conf-1": "workers-conf", "media-1": "workers-media"}


@pytest.fixture(scope="module")
def node() -> str:
    ensure_built()
    return tools()[0]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """keys/secrets/NAME.key_secret for the broker and each name in ROLES; public keys in their lists."""
    root = tmp_path / "keys"
    for name in ("broker", *ROLES):
        keygen(name, root / "secrets")
    for name, folder in ROLES.items():
        (root / folder).mkdir()
        (root / folder / f"{name}.key").write_bytes((root / "secrets" / f"{name}.key").read_bytes())
    return root


@pytest.fixture
def secured(cluster_factory: Callable[..., Cluster], keys: Path) -> Cluster:
    """A broker with CURVE on: clients `app`, worker keys `conf-1` (group conf) and `media-1` (media)."""
    cluster = cluster_factory(DEFAULT_TOML + f"""
[security]
broker_secret_key = "{keys}/secrets/broker.key_secret"
clients = "{keys}/clients"

[security.workers]
conf = "{keys}/workers-conf"
media = "{keys}/workers-media"
""")
    cluster.start_broker()
    assert "CURVE on, 3 keys allowed" in cluster.broker_output()
    return cluster


def secret(keys: Path, name: str) -> str:
    return str(keys / "secrets" / f"{name}.key_secret")


def python_client(cluster: Cluster, keys: Path) -> Client:
    client = Client(cluster.endpoint, timeout=10, key=secret(keys, "app"), broker_key=str(keys / "secrets" / "broker.key"))
    cluster.clients.append(client)
    return client


def ts_worker(cluster: Cluster, node: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
    """`shoal-worker` for group conf, with no SHOAL_ variable but those in ``env``."""
    clean = {k: v for k, v in cluster.env.items() if not k.startswith("SHOAL_")}
    proc = Proc([node, str(CLI), "--app", str(APP), "--group", "conf", "--connect", cluster.endpoint,
                 "--heartbeat-interval", "0.2", *args], cluster.tmp / f"ts-worker-{len(cluster.procs)}.log",
                {**clean, **(env or {})}, cwd or cluster.tmp)
    cluster.procs.append(proc)
    return proc


def joined(cluster: Cluster, client: Client, proc: Proc) -> bool:
    if not proc.alive():
        pytest.fail(f"the worker exited with {proc.popen.returncode}:\n{proc.output()}")
    return any(w.get("pid") == proc.pid for w in client.workers("conf"))


def test_a_worker_key_from_the_config_joins_and_runs_a_python_clients_job(node: str, secured: Cluster, keys: Path) -> None:
    """`[security] key` / `broker_public_key` of the worker's own shoal.toml, relative to its working
    directory (as the Python side reads them)."""
    (keys / "worker.toml").write_text('[security]\nkey = "secrets/conf-1.key_secret"\nbroker_public_key = "secrets/broker.key"\n')
    proc = ts_worker(secured, node, "--config", "worker.toml", cwd=keys)
    client = python_client(secured, keys)
    wait_for(lambda: joined(secured, client, proc), 30, "the TypeScript worker to join over CURVE")
    result = client.wait(client.enqueue("conf-echo", {"n": 7}), timeout=30)
    assert result.status == "completed" and result.value == {"echo": {"n": 7}, "impl": "typescript"}, result
    public = read_certificate(secret(keys, "conf-1"), "test", secret=True)[0].decode()
    assert f"(CURVE, key {public})" in proc.output(), proc.output()


def test_a_worker_with_no_key_never_joins_and_keeps_retrying(node: str, secured: Cluster, keys: Path) -> None:
    proc = ts_worker(secured, node)
    wait_for(lambda: "refused a connection to the command socket: " in secured.broker_output(), 30, "the refusal logged")
    wait_for(lambda: "requires CURVE and this program has no key: give one (--key and --broker-key" in proc.output(), 30,
             "the worker to say why it is not answered")
    wait_for(lambda: "is silent; reconnecting in" in proc.output(), 30, "the worker to retry")
    assert proc.alive(), proc.output()  # it keeps reconnecting, as the Python worker does
    assert not any(w.get("pid") == proc.pid for w in python_client(secured, keys).workers("conf"))


def test_a_worker_with_an_unknown_key_never_joins_and_keeps_retrying(node: str, secured: Cluster, keys: Path,
                                                                      tmp_path: Path) -> None:
    """Keys from SHOAL_KEY / SHOAL_BROKER_KEY; the broker logs the key it does not know."""
    keygen("stranger", tmp_path / "elsewhere")
    proc = ts_worker(secured, node, env={"SHOAL_KEY": str(tmp_path / "elsewhere" / "stranger.key_secret"),
                                         "SHOAL_BROKER_KEY": str(keys / "secrets" / "broker.key")})
    public = read_certificate(str(tmp_path / "elsewhere" / "stranger.key"), "test", secret=False)[0].decode()
    wait_for(lambda: f"key {public} is in no allow-list" in secured.broker_output(), 30, "the refusal logged")
    wait_for(lambda: f"refused this key ({public}): it is in none of its allow-lists (unknown or revoked); retrying" in proc.output(), 30,
             "the worker to say why it is not answered")
    wait_for(lambda: proc.output().count("is silent; reconnecting in") >= 2, 30, "the worker to retry twice")
    assert proc.output().count("refused this key") == 1, "once per reason, not once per reconnect"
    assert proc.alive(), proc.output()
    assert not any(w.get("pid") == proc.pid for w in python_client(secured, keys).workers("conf"))


def test_a_worker_key_of_another_group_is_forbidden_and_exits_2_with_the_reason(node: str, secured: Cluster,
                                                                                keys: Path) -> None:
    proc = ts_worker(secured, node, "--key", secret(keys, "media-1"), "--broker-key", str(keys / "secrets" / "broker.key"))
    assert proc.wait(30) == 2, proc.output()
    reason = "key 'media-1' may not serve group 'conf' (its groups: media)"
    assert f"the broker refused this worker: forbidden: {reason}" in proc.output(), proc.output()
    assert reason in secured.broker_output()


def test_the_typescript_client_with_a_client_key_enqueues_and_waits(node: str, secured: Cluster, keys: Path) -> None:
    """Keys as options, from SHOAL_KEY / SHOAL_BROKER_KEY, from `[security]` of SHOAL_CONFIG (paths
    relative to the working directory); with none or the wrong broker key, no answer, and it says why."""
    worker = ts_worker(secured, node, "--key", secret(keys, "conf-1"), "--broker-key", str(keys / "secrets" / "broker.key"))
    wait_for(lambda: joined(secured, python_client(secured, keys), worker), 30, "the worker to join")
    (secured.tmp / "client.toml").write_text('[security]\nkey = "keys/secrets/app.key_secret"\n'
                                             'broker_public_key = "keys/secrets/broker.key"\n')
    script = secured.tmp / "enqueue.mjs"
    script.write_text(f"""
import {{ Client }} from {json.dumps((TS_SDK / "dist" / "index.js").as_uri())};
const [endpoint, key, brokerKey] = process.argv.slice(2);
const out = {{}};
const sources = [["options", {{ key, brokerKey }}], ["env", {{ env: {{ SHOAL_KEY: key, SHOAL_BROKER_KEY: brokerKey }} }}],
                 ["config", {{ env: {{ SHOAL_CONFIG: "client.toml" }} }}]];
for (const [name, keys] of sources) {{
  const client = new Client(endpoint, 10, keys);
  const result = await client.wait(await client.enqueue("conf-echo", {{ via: name }}), 30);
  out[name] = [result.status, result.value];
  client.close();
}}
// no key at all, and the wrong broker key: no answer, and the error says why
for (const [name, keys] of [["plain", {{ env: {{}} }}], ["wrong", {{ key, brokerKey: key.replace(".key_secret", ".key") }}]]) {{
  const client = new Client(endpoint, 1, keys);
  out[name] = await client.enqueue("conf-echo", {{}}).then(() => "answered", (err) => `${{err.name}}: ${{err.message}}`);
  client.close();
}}
console.log(JSON.stringify(out));
""")
    done = subprocess.run([node, str(script), secured.endpoint, secret(keys, "app"), str(keys / "secrets" / "broker.key")],
                          capture_output=True, text=True, timeout=60, cwd=secured.tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["options"] == ["completed", {"echo": {"via": "options"}, "impl": "typescript"}], out
    assert out["env"] == ["completed", {"echo": {"via": "env"}, "impl": "typescript"}], out
    assert out["config"] == ["completed", {"echo": {"via": "config"}, "impl": "typescript"}], out
    assert out["plain"].startswith(f"BrokerUnreachable: no answer from the broker at {secured.endpoint} within 1.0s"), out
    # Which side reads the other's ZMTP greeting first is a race: when the client does, libzmq reports
    # the mechanism mismatch and the error names it; when the broker does and hangs up first, the
    # client sees only a disconnect, and the error gives the general reason instead. Both say why.
    assert ("requires CURVE and this program has no key" in out["plain"]
            or "a broker with CURVE on never answers a client without a key" in out["plain"]), out
    assert out["wrong"].startswith(f"BrokerUnreachable: no answer from the broker at {secured.endpoint} within 1.0s"), out
    assert "is the broker key its public key?" in out["wrong"], out


def test_bad_key_settings_stop_the_worker_naming_the_file(node: str, tmp_path: Path) -> None:
    """No broker needed: the worker checks its key files before it connects."""
    keygen("w", tmp_path)
    (tmp_path / "junk.key").write_text('public-key = "too short"\n')
    (tmp_path / "shoal.toml").write_text('[security]\nkey = "w.key_secret"\nbroker_public_key = "missing.key"\n')

    def run(*args: str, **env: str) -> str:
        done = subprocess.run([node, str(CLI), "--app", str(APP), "--group", "conf", *args], capture_output=True,
                              text=True, timeout=30, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env})
        assert done.returncode == 2, done.stdout + done.stderr
        return done.stderr

    assert "shoal.toml:3: security.broker_public_key missing.key: cannot read the key file (ENOENT)" in run()
    assert "--broker-key junk.key: not a CURVE certificate" in run("--broker-key", "junk.key")
    assert "SHOAL_KEY w.key: holds only a public key; give the NAME.key_secret file" in run(SHOAL_KEY="w.key")
    (tmp_path / "shoal.toml").unlink()
    assert "key is set (--key) but broker_public_key is not" in run("--key", "w.key_secret")
    assert "broker_public_key is set (SHOAL_BROKER_KEY) but key is not" in run(SHOAL_BROKER_KEY="w.key")


@pytest.mark.parametrize("scenario", ["hello_and_credit", "job_and_result", "cancel_stops_a_running_job"])
@pytest.mark.parametrize("implementation", ["python", "typescript"])
def test_conformance_scenarios_with_curve_on(node: str, implementation: str, scenario: str, tmp_path: Path) -> None:
    """The suite's basic scenarios with the broker's CURVE on and the keys in SHOAL_KEY /
    SHOAL_BROKER_KEY (the cancel one needs the client's admin role)."""
    chosen = next(s for s in SCENARIOS if s.name == scenario)
    run_scenario(chosen, IMPLEMENTATIONS[implementation], tmp_path, curve=True)
    assert "CURVE on, 2 keys allowed" in (tmp_path / "01-broker.log").read_text()
