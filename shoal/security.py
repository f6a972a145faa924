"""CURVE keys for transport security: making them (``shoal keygen``), reading them, and the
client side of a connection (``Client``, ``AsyncClient``, ``shoal``, workers).

Keys are pyzmq ``zmq.auth`` certificates: ``NAME.key`` holds the public key, ``NAME.key_secret``
(mode 0600) both. A client or worker needs its own secret certificate (``[security] key``,
``SHOAL_KEY``, ``--key``) and the broker's public one (``broker_public_key``,
``SHOAL_BROKER_KEY``, ``--broker-key``), flag first, then the environment, then the config, as
for the endpoint. Neither set: a plain connection (a broker with CURVE on drops it). The broker's
side (authenticator, allow-lists, roles) is ``shoal.broker.shell.security``.
"""
from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from shoal.errors import ConfigError

# The supervisor hands the workers it starts their group's key through this variable (never argv,
# which every user of the host can read); the worker takes it out of its environment at once.
SUPERVISED_ENV = "SHOAL_SUPERVISED_CURVE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class CurveKeys:
    """What a connecting socket needs: its own key pair and the broker's public key (all Z85)."""

    public: bytes
    secret: bytes
    server_public: bytes

    def encode(self) -> str:
        """One line for ``SUPERVISED_ENV`` (a comma is the one separator Z85 never uses)."""
        return b",".join((self.public, self.secret, self.server_public)).decode()

    @classmethod
    def decode(cls, text: str) -> "CurveKeys":
        public, secret, server = text.encode().split(b",")
        return cls(public, secret, server)


def keygen(name: str, directory: str | os.PathLike[str] = ".") -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (0600) into ``directory``; never over existing files."""
    if not _NAME.match(name):
        raise ConfigError(f"invalid key name {name!r}: use letters, digits, '.', '_' and '-'")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} already exists: pick another name, or remove it first")
    # Made in a private (0700) directory first, so the secret is never readable by others,
    # then linked into place: os.link refuses to replace a file that appeared meanwhile.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".keygen-") as scratch:
        made_public, made_secret = zmq.auth.create_certificates(scratch, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        try:
            os.link(made_secret, secret)
            os.link(made_public, public)
        except FileExistsError as exc:
            raise ConfigError(f"{exc.filename} already exists: pick another name, or remove it first") from None
    return public, secret


def read_certificate(path: str, what: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    """The (public, secret) keys in the certificate at ``path``; ``what`` names the setting in errors."""
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise ConfigError(f"{what} = {path!r}: cannot read the key: {exc.strerror}") from None
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{what} = {path!r}: not a CURVE certificate (made by `shoal keygen`): {exc}") from None
    if secret and not secret_key:
        raise ConfigError(f"{what} = {path!r} holds only a public key; give the NAME.key_secret file")
    return public, secret_key


def client_keys(key: str, broker_key: str, sources: Mapping[str, str] | None = None) -> CurveKeys | None:
    """Load a client's or worker's keys; None when neither is set. Half a pair is a config error."""
    if not key and not broker_key:
        return None
    where = sources or {}
    if not broker_key:
        raise ConfigError(f"key is set ({where.get('key', 'given')}) but broker_public_key is not: "
                          "give the broker's public key too (--broker-key, SHOAL_BROKER_KEY)")
    if not key:
        raise ConfigError(f"broker_public_key is set ({where.get('broker_public_key', 'given')}) but key is not: "
                          "give this program's secret key too (--key, SHOAL_KEY)")
    public, secret = read_certificate(key, "key", secret=True)
    server, _ = read_certificate(broker_key, "broker_public_key", secret=False)
    assert secret is not None
    return CurveKeys(public, secret, server)


def key_paths(key: str | None = None, broker_key: str | None = None, config: str | None = None,
              env: Mapping[str, str] | None = None) -> tuple[str, str, dict[str, str]]:
    """(key, broker_public_key, where each came from): arguments/flags, else SHOAL_KEY /
    SHOAL_BROKER_KEY, else ``[security]`` of the config; "" for one set nowhere."""
    from shoal.conf import load_settings

    environ = os.environ if env is None else env
    key = key or environ.get("SHOAL_KEY") or None
    broker_key = broker_key or environ.get("SHOAL_BROKER_KEY") or None
    if key and broker_key and config is None:
        return key, broker_key, {}  # decided without reading the config file
    settings = load_settings(config, env=environ, flags={"key": key, "broker_public_key": broker_key})
    return settings.security.key, settings.security.broker_public_key, settings.security_sources


def resolve_keys(key: str | None = None, broker_key: str | None = None, config: str | None = None,
                 env: Mapping[str, str] | None = None) -> CurveKeys | None:
    """The keys to connect with (see ``key_paths``), loaded; None for a plain connection."""
    return client_keys(*key_paths(key, broker_key, config, env))


def supervised_keys(env: MutableMapping[str, str]) -> CurveKeys | None:
    """The key the supervisor gave this worker, taken out of ``env`` (handlers' children never see it)."""
    text = env.pop(SUPERVISED_ENV, "")
    return CurveKeys.decode(text) if text else None


def apply_client_curve(sock: zmq.Socket, keys: CurveKeys | None) -> None:  # type: ignore[type-arg]
    """Make ``sock`` a CURVE client of the broker (before ``connect``); nothing when ``keys`` is None."""
    if keys is None:
        return
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server_public


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 maybe in brackets) names this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
