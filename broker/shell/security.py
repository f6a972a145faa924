"""The broker's side of transport security: CURVE on its sockets, the ZAP authenticator, and
which key is whose (``Principal``), failing closed.

With ``[security] broker_secret_key`` set, every socket the broker binds for peers (the ROUTER,
the events XPUB) is a CURVE server with ``zap_domain`` set and ``ZAP_ENFORCE_DOMAIN`` on: each
handshake asks pyzmq's ZAP authenticator (a thread), and with the authenticator dead or missing
libzmq refuses the handshake instead of letting it through. The authenticator admits only keys
found in the allow-list directories (``clients``, ``admins``, ``[security.workers]``) or made by
this broker for the workers it starts; it never allows any key. The key's name (its file name)
travels with every message as the ZAP User-Id, and ``KeyRing.principal_of`` turns it into the
``Principal`` the core checks each command against (``broker/roles.py``).

Without ``[security]`` the broker binds only loopback or ipc unless told ``--insecure``.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from shoal.conf.settings import Settings
from shoal.errors import ConfigError
from shoal.security import CurveKeys, is_loopback_host, read_certificate

from ..core.quiet import QuietLog
from ..core.commands import ADMIN, CLIENT, WORKER, Principal

log = logging.getLogger("shoal.broker.security")

ZAP_DOMAIN = "shoal"
HANDSHAKE_IVL_MS = 5_000  # a peer that has not finished its handshake by then is dropped (zmq's default: 30 s)
EVENTS_MAX_MESSAGE_BYTES = 64 * 1024  # what a subscriber sends is a topic: group\0workflow\0
NOBODY = Principal("unknown key")  # no roles: a message without a known User-Id may do nothing


class KeyRing:
    """Allowed public keys (Z85 text, the ZAP User-Id) and the principal each one is."""

    def __init__(self) -> None:
        self._principals: dict[str, Principal] = {}
        self._supervised: dict[str, Principal] = {}  # made by this broker: kept across reloads
        self._quiet = QuietLog(log)
        self._lock = threading.Lock()  # the ZAP thread reads while a supervised key may be added

    @classmethod
    def load(cls, settings: Settings) -> "KeyRing":
        """Read the allow-list directories of ``[security]``; a missing or empty directory named
        in the config is an error (a typo must not quietly lock everyone out, or in)."""
        security = settings.security
        ring = cls()
        lists: list[tuple[str, str, str, str | None]] = [("clients", security.clients, CLIENT, None),
                                                        ("admins", security.admins, ADMIN, None)]
        lists += [(f"workers.{group}", folder, WORKER, group) for group, folder in security.workers.items()]
        for setting, folder, role, group in lists:
            if folder:
                for name, public in _public_keys(setting, folder):
                    ring.allow(public, name, role, group)
        return ring

    def allow(self, public: bytes, name: str, role: str, group: str | None = None) -> None:
        """Admit ``public`` (Z85) as ``name`` with ``role`` (and ``group`` for a worker); roles add up."""
        user_id = public.decode()
        with self._lock:
            known = self._principals.get(user_id)
            roles = {role} | (set(known.roles) if known else set())
            groups = ({group} if group else set()) | (set(known.groups) if known else set())
            shown = name if known is None or known.name == name else f"{known.name}/{name}"
            self._principals[user_id] = Principal(shown, frozenset(roles), frozenset(groups))

    def allow_supervised(self, public: bytes, group: str) -> None:
        """Admit a key this broker made for the workers it starts of ``group``."""
        self.allow(public, f"supervised-{group}", WORKER, group)
        self._supervised[public.decode()] = self._principals[public.decode()]

    def replace_with(self, fresh: "KeyRing") -> tuple[int, int]:
        """Take ``fresh``'s allow-lists (a reload), keeping the supervised keys; returns (added, removed)."""
        principals = {**fresh._principals, **self._supervised}
        added = len(principals.keys() - self._principals.keys())
        removed = len(self._principals.keys() - principals.keys())
        self._principals = principals  # one reference swap: the ZAP thread sees the old or the new table
        return added, removed

    def __len__(self) -> int:
        return len(self._principals)

    def principal_of(self, user_id: str | None) -> Principal:
        """The principal behind a message's ZAP User-Id (no roles for one we do not know)."""
        found = self._principals.get(user_id or "")
        return NOBODY if found is None else found

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook (ZAP thread): admit a known key, log a refused one."""
        if domain == ZAP_DOMAIN and key.decode() in self._principals:
            return True
        self._quiet.warning("refused keys", "refused a connection: key %s is in no allow-list (unknown or "
                            "revoked)", key.decode())
        return False


class Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, naming each admitted connection by its Z85 public key (the User-Id)."""

    def curve_user_id(self, client_public_key: bytes) -> str:
        return z85.encode(client_public_key).decode()


def _public_keys(setting: str, folder: str) -> list[tuple[str, bytes]]:
    """(name, Z85 public key) for each ``*.key`` in ``folder``; the name is the file name without ``.key``."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"[security] {setting} = {folder!r}: not a directory of public keys")
    found = [(file.stem, read_certificate(str(file), f"[security] {setting}", secret=False)[0])
             for file in sorted(path.glob("*.key"))]
    if not found:
        raise ConfigError(f"[security] {setting} = {folder!r}: holds no public key (*.key, made by `shoal keygen`)")
    return found


class HandshakeWatch:
    """Logs the handshakes a CURVE socket refuses before the ZAP handler sees a key (a peer with no
    key at all, or one holding the wrong broker key), rate-limited; a thread of its own reads the
    socket's monitor, so the broker loop pays nothing for it."""

    EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL

    def __init__(self, sock: zmq.Socket[Any], what: str, quiet: QuietLog) -> None:
        self.sock, self.what, self.quiet = sock, what, quiet
        self.monitor = sock.get_monitor_socket(self.EVENTS)
        self.thread = threading.Thread(target=self._run, name=f"shoal-handshakes-{what}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self.monitor)
            except zmq.ZMQError:  # the context is going away
                break
            if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                break
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:  # the value is an errno
                why = f"the handshake broke off ({os.strerror(event['value'])})"
            elif event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                why = "the peer has no CURVE key"
            else:
                why = f"protocol error {event['value']:#x}: no CURVE key, or the wrong broker key"
            self.quiet.warning(f"handshakes {self.what} {event['value']}", "refused a connection to the %s "
                               "socket: %s", self.what, why)
        self.monitor.close(0)

    def close(self) -> None:
        """Stop watching (before the socket is closed)."""
        self.sock.disable_monitor()
        self.thread.join(2.0)


class ServerCurve:
    """The broker's key pair and its running authenticator; ``apply`` makes a socket a CURVE server."""

    def __init__(self, ctx: zmq.Context[Any], settings: Settings) -> None:
        path = settings.security.broker_secret_key
        public, secret = read_certificate(path, "[security] broker_secret_key", secret=True)
        assert secret is not None
        self.public, self.secret = public, secret
        self.ring = KeyRing.load(settings)
        self.auth = Authenticator(ctx, log=logging.getLogger("shoal.broker.zap"))
        self.auth.start()  # before any bind: there is no moment a handshake could go unchecked
        self.auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self.ring)
        self.watches: list[HandshakeWatch] = []
        self._quiet = QuietLog(log)

    def apply(self, sock: zmq.Socket[Any], what: str) -> None:
        """CURVE server with our domain enforced (before ``bind``); its refused handshakes are logged."""
        self.watches.append(HandshakeWatch(sock, what, self._quiet))
        sock.curve_server = True
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)

    def supervised_keys(self, groups: list[str]) -> dict[str, CurveKeys]:
        """A fresh key pair per group the supervisor starts, admitted for that group only, in memory."""
        keys = {}
        for group in groups:
            public, secret = zmq.curve_keypair()
            self.ring.allow_supervised(public, group)
            keys[group] = CurveKeys(public, secret, self.public)
        return keys

    def reload(self, settings: Settings) -> None:
        """Read the allow-list directories again (SIGHUP): new keys get in, removed ones are refused
        from now on, on new connections and on open ones (their messages map to no principal). A
        list that cannot be read leaves the old lists in force."""
        try:
            fresh = KeyRing.load(settings)
        except ConfigError as exc:
            log.error("allow-lists not reloaded, the old ones stay in force: %s", exc)
            return
        added, removed = self.ring.replace_with(fresh)
        log.info("allow-lists reloaded: %d keys allowed (%d added, %d removed)", len(self.ring), added, removed)

    def unwatch(self) -> None:
        """Stop the handshake monitors (before the sockets close)."""
        for watch in self.watches:
            watch.close()
        self.watches = []

    def close(self) -> None:
        """Stop the authenticator (after the sockets closed)."""
        self.auth.stop()


def security_note(curve: ServerCurve | None, settings: Settings) -> str:
    """How the broker's start line says who may connect (and a warning for allow-lists without a key)."""
    security = settings.security
    if curve is None and (security.clients or security.admins or security.workers):
        log.warning("[security] names allow-lists but no broker_secret_key: CURVE is off and they are not used")
    if curve is not None:
        return f"CURVE on, {len(curve.ring)} keys allowed"
    if settings.broker.insecure:
        return "insecure: no [security], anyone who reaches these endpoints owns the queue"
    return "no [security]: loopback and ipc only"


def exposed_endpoints(settings: Settings, endpoints: list[str]) -> list[str]:
    """Which of ``endpoints`` (and the metrics listener) reach beyond this host."""
    exposed = [e for e in endpoints if e and not is_local(e)]
    metrics = settings.broker.metrics
    if metrics and not is_loopback_host(metrics.rsplit(":", 1)[0]):
        exposed.append(f"metrics {metrics}")
    return exposed


def refuse_exposure(settings: Settings, endpoints: list[str]) -> None:
    """Without [security], a bind beyond loopback or ipc needs ``--insecure`` (fails closed)."""
    if settings.security.on or settings.broker.insecure:
        return
    exposed = exposed_endpoints(settings, endpoints)
    if exposed:
        raise ConfigError(f"refusing to listen on {', '.join(exposed)} without transport security: anyone who "
                          "reaches it could enqueue, take jobs and read payloads. Set [security] "
                          "broker_secret_key (see docs/security.md), bind loopback or ipc, or pass --insecure "
                          "(SHOAL_INSECURE=1, [broker] insecure = true) on a network you trust")


def is_local(endpoint: str) -> bool:
    """True for ipc/inproc and tcp on a loopback address; a wildcard or a host name is not."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    return is_loopback_host(endpoint[len("tcp://"):].rsplit(":", 1)[0])
