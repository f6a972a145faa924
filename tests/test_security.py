"""Transport security end to end: real broker and worker processes, real CURVE keys made by
`shoal keygen` under tmp_path. Who may connect (the ZAP authenticator), and what each key may
send once connected (roles), as docs/security.md promises."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest
import zmq

from shoal import Client, Forbidden
from shoal import protocol as P
from shoal.errors import BrokerUnreachable
from shoal.security import keygen, read_certificate

from conftest import DEFAULT_TOML, Cluster, Proc, wait_for

pytestmark = pytest.mark.timeout(60)

class Keys:
    """The broker's key pair and one key per role, laid out as the docs tell operators to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.secrets = root / "secrets"            # each program's own NAME.key_secret
        self.clients = root / "clients"
        self.admins = root / "admins"
        self.media = root / "workers-media"
        self.email = root / "workers-email"
        keygen("broker", self.secrets)
        for name, folder in (("app", self.clients), ("ops", self.admins), ("media-1", self.media),
                             ("email-1", self.email)):
            keygen(name, self.secrets)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.key").write_bytes((self.secrets / f"{name}.key").read_bytes())

    def secret(self, name: str) -> str:
        return str(self.secrets / f"{name}.key_secret")

    @property
    def broker_public(self) -> str:
        return str(self.secrets / "broker.key")

    def flags(self, name: str) -> tuple[str, str, str, str]:
        """``--key``/``--broker-key`` for a worker connecting as ``name``."""
        return ("--key", self.secret(name), "--broker-key", self.broker_public)

    def toml(self, extra: str = "") -> str:
        """The cluster's config with CURVE on and every allow-list."""
        return DEFAULT_TOML + f"""
[security]
broker_secret_key = "{self.secret('broker')}"
clients = "{self.clients}"
admins = "{self.admins}"

[security.workers]
media = "{self.media}"
email = "{self.email}"
""" + extra


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def secured(cluster_factory: Callable[..., Cluster], keys: Keys) -> Cluster:
    """A broker with CURVE on, no workers yet."""
    cluster = cluster_factory(keys.toml())
    cluster.start_broker()
    return cluster


def connect(cluster: Cluster, keys: Keys, name: str, timeout: float = 5.0) -> Client:
    client = Client(cluster.endpoint, timeout=timeout, key=keys.secret(name), broker_key=keys.broker_public)
    cluster.clients.append(client)
    return client


def test_the_start_line_says_curve_is_on(secured: Cluster) -> None:
    assert "CURVE on, 4 keys allowed" in secured.broker_output()


def test_a_client_key_works_end_to_end_with_a_worker_key(secured: Cluster, keys: Keys) -> None:
    secured.start_worker("email", 2, *keys.flags("email-1"))
    client = connect(secured, keys, "app")
    job_id = client.enqueue("echo", {"n": 1})
    assert client.wait(job_id, timeout=20).value["payload"] == {"n": 1}
    assert client.stats()["email"]["workers"] == 1


def test_no_key_gets_no_connection_and_the_broker_logs_it(secured: Cluster) -> None:
    client = Client(secured.endpoint, timeout=1.0)
    secured.clients.append(client)
    # and the client says why: the broker closed the handshake, as it does to a client without keys
    with pytest.raises(BrokerUnreachable, match=f"at {secured.endpoint} within 1.0s: the broker at "
                       f"{secured.endpoint} closed the connection during the handshake, as a broker with "
                       "transport security on does to a client without CURVE keys"):
        client.stats()
    wait_for(lambda: "refused a connection to the command socket: " in secured.broker_output(),
             what="the refusal logged")


def test_a_worker_without_keys_says_once_why_it_cannot_join(secured: Cluster) -> None:
    worker = secured.start_worker("email", 2, wait=False)
    said = "cannot join the broker: the broker at {0} closed the connection during the handshake, as a broker " \
           "with transport security on does to a client without CURVE keys".format(secured.endpoint)
    wait_for(lambda: said in worker.output(), what="the worker to say why")
    wait_for(lambda: worker.output().count("is silent; reconnecting") >= 2, what="the worker to go on trying")
    assert worker.alive() and worker.output().count("cannot join the broker") == 1


def test_the_wrong_broker_key_gets_no_connection(secured: Cluster, keys: Keys, tmp_path: Path) -> None:
    keygen("impostor", tmp_path / "other")  # a client told to trust another broker's key
    client = Client(secured.endpoint, timeout=1.0, key=keys.secret("app"),
                    broker_key=str(tmp_path / "other" / "impostor.key"))
    secured.clients.append(client)
    with pytest.raises(BrokerUnreachable, match=secured.endpoint):
        client.stats()


def test_an_unknown_key_gets_no_connection_and_the_broker_logs_it(secured: Cluster, keys: Keys,
                                                                    tmp_path: Path) -> None:
    keygen("stranger", tmp_path / "elsewhere")
    stranger = Client(secured.endpoint, timeout=1.0, key=str(tmp_path / "elsewhere" / "stranger.key_secret"),
                      broker_key=keys.broker_public)
    secured.clients.append(stranger)
    with pytest.raises(BrokerUnreachable, match=secured.endpoint):
        stranger.stats()
    public = read_certificate(str(tmp_path / "elsewhere" / "stranger.key"), "test", secret=False)[0].decode()
    wait_for(lambda: f"key {public} is in no allow-list" in secured.broker_output(), what="the refusal logged")


def test_a_revoked_key_is_refused_after_a_restart(secured: Cluster, keys: Keys) -> None:
    assert connect(secured, keys, "app").stats() is not None
    (keys.clients / "app.key").unlink()
    (keys.clients / "other.key").write_bytes((keys.secrets / "ops.key").read_bytes())  # the list is not empty
    secured.broker.signal(signal.SIGTERM)
    secured.broker.wait(20)
    secured.start_broker()
    with pytest.raises(BrokerUnreachable, match=secured.endpoint):
        connect(secured, keys, "app", timeout=1.0).stats()
    assert connect(secured, keys, "ops").stats() is not None


def test_sighup_reloads_the_allow_lists_without_a_restart(secured: Cluster, keys: Keys, tmp_path: Path) -> None:
    app = connect(secured, keys, "app")
    assert app.stats() is not None
    keygen("newcomer", tmp_path / "more")
    (keys.clients / "newcomer.key").write_bytes((tmp_path / "more" / "newcomer.key").read_bytes())
    (keys.clients / "app.key").unlink()
    secured.broker.signal(signal.SIGHUP)
    wait_for(lambda: "allow-lists reloaded: 4 keys allowed (1 added, 1 removed)" in secured.broker_output(),
             what="the reload")
    newcomer = Client(secured.endpoint, timeout=5, key=str(tmp_path / "more" / "newcomer.key_secret"),
                      broker_key=keys.broker_public)
    secured.clients.append(newcomer)
    assert newcomer.stats() is not None  # added: in without a restart
    with pytest.raises(Forbidden, match="'unknown key'"):  # removed: its open connection may do nothing now
        app.stats()
    with pytest.raises(BrokerUnreachable):  # and it cannot connect again
        connect(secured, keys, "app", timeout=1.0).stats()


def raw_dealer(cluster: Cluster, keys: Keys, name: str) -> zmq.Socket:
    """A bare pyzmq DEALER holding ``name``'s key: it speaks the protocol, without our client's manners."""
    public, secret = read_certificate(keys.secret(name), "test", secret=True)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_serverkey = read_certificate(keys.broker_public, "test", secret=False)[0]
    sock.connect(cluster.endpoint)
    return sock


def test_a_client_key_saying_hello_is_refused(secured: Cluster, keys: Keys) -> None:
    connect(secured, keys, "app").enqueue("echo", {"n": 1})
    sock = raw_dealer(secured, keys, "app")
    try:
        sock.send_multipart(P.encode(P.HELLO, {"group": "email", "pid": 1, "host": "x", "slots": 4,
                                              "workflows": {"echo": {}}, "running": []}))
        assert sock.poll(5000), "no answer to HELLO"
        command, body = P.decode(sock.recv_multipart())
        assert command == P.ERROR and body["code"] == P.E_FORBIDDEN and "'app'" in body["message"]
        assert not sock.poll(300)  # and no job follows
    finally:
        sock.close(0)
    wait_for(lambda: "may not send HELLO" in secured.broker_output(), what="the refusal logged")


def test_a_media_worker_key_may_not_serve_email(secured: Cluster, keys: Keys) -> None:
    worker = secured.start_worker_raw("email", *keys.flags("media-1"))
    assert worker.wait(20) == 2
    assert "key 'media-1' may not serve group 'email'" in worker.output()
    assert "refused" in secured.broker_output() and "'media-1'" in secured.broker_output()


def test_admin_commands_need_an_admin_key(secured: Cluster, keys: Keys) -> None:
    app, ops = connect(secured, keys, "app"), connect(secured, keys, "ops")
    job_id = app.enqueue("echo", {"n": 1}, delay=60)
    with pytest.raises(Forbidden, match="needs a admin key|needs an admin key"):
        app.cancel(job_id)
    with pytest.raises(Forbidden):
        app.requeue(job_id)
    assert app.get(job_id).status == "scheduled"
    assert ops.requeue(job_id) is False  # allowed: it is just not dead
    assert ops.cancel(job_id).cancelled
    assert app.get(job_id).status == "cancelled"


def test_events_need_a_key_too(secured: Cluster, keys: Keys) -> None:
    secured.start_worker("email", 2, *keys.flags("email-1"))
    app = connect(secured, keys, "app")
    seen: list[str] = []

    def listen() -> None:
        for event in app.events(group="email", timeout=10):
            seen.append(event["event"])
            if event["event"] == "completed":
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    # the subscription starts when the thread gets there: enqueue until an event comes through
    wait_for(lambda: app.wait(app.enqueue("echo", {"n": 2}), timeout=10) and "completed" in seen,
             what="a completed event over CURVE")
    listener.join(10)


def test_a_hand_started_worker_and_the_broker_started_ones_both_work(cluster_factory: Callable[..., Cluster],
                                                                     keys: Keys) -> None:
    cluster = cluster_factory(keys.toml('\n[workflows.email]\napp = "testapp"\nworkers = 1\nconcurrency = 2\n'))
    cluster.start_broker(supervise=True)  # starts the email worker with a key made for it
    cluster.start_worker("media", 2, *keys.flags("media-1"))  # "another host": its own key from the list
    app = connect(cluster, keys, "app", timeout=10)
    email, media = app.enqueue("echo", {"n": 1}), app.enqueue("media-echo", {"n": 2})
    assert app.wait(email, timeout=30).value["group"] == "email"
    assert app.wait(media, timeout=30).value["group"] == "media"
    assert "joined group email" in cluster.broker_output()


def test_a_non_loopback_bind_needs_security_or_insecure(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(DEFAULT_TOML)
    refused = Proc([sys.executable, "-m", "shoal.broker", "--config", str(cluster.config), "--data",
                    str(cluster.data), "--bind", "tcp://0.0.0.0:*", "--no-supervise"],
                   cluster.tmp / "refused.log", cluster.env, cluster.tmp)
    cluster.procs.append(refused)
    assert refused.wait(20) == 1
    assert "refusing to listen on tcp://0.0.0.0:* without transport security" in refused.output()
    assert "--insecure" in refused.output()
    cluster.start_broker("--bind", "tcp://0.0.0.0:*", "--insecure")
    assert "insecure: no [security]" in cluster.broker_output()
    c = Client(cluster.endpoint.replace("0.0.0.0", "127.0.0.1"), timeout=5)
    cluster.clients.append(c)
    assert c.stats() is not None


def test_loopback_without_security_starts_and_says_so(cluster: Cluster) -> None:
    assert "no [security]: loopback and ipc only" in cluster.broker_output()


def test_a_message_of_many_frames_is_refused_not_a_traceback(secured: Cluster, keys: Keys) -> None:
    sock = raw_dealer(secured, keys, "app")
    try:
        sock.send_multipart([b"x"] * 10_000)
        assert sock.poll(5000)
        command, body = P.decode(sock.recv_multipart())
        assert command == P.ERROR and body["code"] == P.E_PROTOCOL and "got 10000" in body["message"]
    finally:
        sock.close(0)
    assert connect(secured, keys, "app").stats() is not None
    assert "Traceback" not in secured.broker_output()


def test_with_the_authenticator_stopped_new_connections_get_nothing(tmp_path: Path, keys: Keys) -> None:
    """ZAP_ENFORCE_DOMAIN: no authenticator answering means no handshake completes (fails closed).
    The broker runs in this process here, so the test can stop its authenticator thread."""
    from shoal.broker.shell.server import BrokerServer
    from shoal.conf import load_settings

    config = tmp_path / "shoal.toml"
    config.write_text(keys.toml())
    settings = load_settings(str(config), env={}, flags={"bind": "tcp://127.0.0.1:*", "data": str(tmp_path / "d"),
                                                          "supervise": False})
    server = BrokerServer(settings)
    loop = threading.Thread(target=server.run, daemon=True)
    loop.start()
    before = Client(server.endpoint, timeout=5, key=keys.secret("app"), broker_key=keys.broker_public)
    after = Client(server.endpoint, timeout=1, key=keys.secret("app"), broker_key=keys.broker_public)
    try:
        assert before.stats() is not None
        assert server.curve is not None and server.curve.auth.is_alive()
        server.curve.auth.stop()
        with pytest.raises(BrokerUnreachable, match=server.endpoint):
            after.stats()
        assert before.stats() is not None  # a connection authenticated earlier keeps its session
    finally:
        before.close()
        after.close()
        server.stop()
        loop.join(10)
        server.close()


def shoal(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args, "--broker", cluster.endpoint],
                          capture_output=True, text=True, timeout=30, env=cluster.env, cwd=cluster.tmp)


def test_the_shoal_command_takes_its_key_from_flags_or_the_environment(secured: Cluster, keys: Keys) -> None:
    job_id = connect(secured, keys, "app").enqueue("echo", {"n": 1}, delay=60)
    assert shoal(secured, "status", "--key", keys.secret("app"), "--broker-key", keys.broker_public).returncode == 0
    refused = shoal(secured, "cancel", job_id, "--key", keys.secret("app"), "--broker-key", keys.broker_public)
    assert refused.returncode == 1 and "key 'app' (client) may not send CANCEL" in refused.stderr
    secured.env.update(SHOAL_KEY=keys.secret("ops"), SHOAL_BROKER_KEY=keys.broker_public)
    assert shoal(secured, "cancel", job_id).returncode == 0
    del secured.env["SHOAL_KEY"], secured.env["SHOAL_BROKER_KEY"]
    unanswered = shoal(secured, "status", "--timeout", "0.5")
    assert unanswered.returncode == 3 and "a key the broker does not allow" in unanswered.stderr
