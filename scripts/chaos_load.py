"""The load side of ``scripts/chaos.py``: client threads that enqueue mixed jobs and remember
exactly which ones the broker acknowledged.

Four kinds of producer share the work: single ``enqueue``, ``enqueue_many`` batches, delayed
jobs, and jobs with dedup keys (each key asked for twice). A share of the jobs carries
``fail_once`` (the handler raises on the first attempt). An id counts as acknowledged only when
``enqueue`` returned it. On ``BrokerUnreachable`` the outcome is unknown: when the client takes
``id=`` (``ids=`` for ``enqueue_many``) the same ids are sent again until acknowledged;
otherwise the ids are learnt by wrapping the client's id maker and kept apart as
unknown-outcome ids, never as acknowledged.
"""
from __future__ import annotations

import inspect
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import shoal.client.client as client_module
from shoal import Client
from shoal.errors import BrokerUnreachable, ShoalError
from shoal.ids import id_to_str, new_job_id

WORKFLOW, GROUP = "chaos-job", "chaos"
KINDS = ("single", "many", "delayed", "keyed")
RETRIES_PER_UNKNOWN = 20  # re-sends of one unknown-outcome enqueue when ids can be reused


def client_takes_ids() -> tuple[bool, bool]:
    """Whether ``Client.enqueue`` takes ``id=`` and ``Client.enqueue_many`` takes ``ids=``."""
    single = "id" in inspect.signature(Client.enqueue).parameters
    many = "ids" in inspect.signature(Client.enqueue_many).parameters
    return single, many


class _IdRecorder:
    """Learns the ids the client makes in this thread (for enqueues whose outcome is unknown)."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.one: Callable[[], bytes] = client_module.new_job_id
        self.many: Callable[[int], list[bytes]] = client_module.new_job_ids

    def install(self) -> None:
        def one() -> bytes:
            raw = self.one()
            self.made().append(id_to_str(raw))
            return raw

        def many(count: int) -> list[bytes]:
            raws = self.many(count)
            self.made().extend(id_to_str(raw) for raw in raws)
            return raws
        client_module.new_job_id, client_module.new_job_ids = one, many

    def uninstall(self) -> None:
        client_module.new_job_id, client_module.new_job_ids = self.one, self.many

    def made(self) -> list[str]:
        if not hasattr(self.local, "ids"):
            self.local.ids = []
        ids: list[str] = self.local.ids
        return ids


@dataclass
class Ledger:
    """What the clients were told, shared by the load threads (under ``lock``)."""

    acked: dict[str, str] = field(default_factory=dict)        # id -> kind
    unknown: dict[str, str] = field(default_factory=dict)      # id -> kind (outcome unknown)
    retried_ok: int = 0                                        # unknown outcomes resolved by a same-id retry
    deduplicated: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    calls: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of every acked call
    fail_once: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Load:
    """Producer threads, one ``Client`` each, until ``stop()``."""

    def __init__(self, endpoint: str, seed: int, pause_s: float, fail_share: float, timeout_s: float) -> None:
        self.endpoint, self.seed, self.pause_s = endpoint, seed, pause_s
        self.fail_share, self.timeout_s = fail_share, timeout_s
        self.ledger = Ledger()
        self.takes_id, self.takes_ids = client_takes_ids()
        self.recorder = _IdRecorder()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start one producer thread per kind."""
        if not (self.takes_id and self.takes_ids):
            self.recorder.install()
        for n, kind in enumerate(KINDS):
            t = threading.Thread(target=self._produce, args=(kind, random.Random(self.seed * 100 + n)),
                                 name=f"chaos-{kind}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        """Stop producing and wait for every thread's last call to end."""
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s * (RETRIES_PER_UNKNOWN + 2))
        self.recorder.uninstall()

    def _produce(self, kind: str, rng: random.Random) -> None:
        client = Client(self.endpoint, timeout=self.timeout_s)
        n = 0
        try:
            while not self._stop.is_set():
                self._one_call(client, kind, rng, n)
                n += 1
                self._stop.wait(self.pause_s * (10 if kind == "many" else 1))
        finally:
            client.close()

    def _payload(self, rng: random.Random, n: int) -> dict[str, Any]:
        return {"n": n, "ms": rng.randint(0, 40), "fail_once": rng.random() < self.fail_share}

    def _one_call(self, client: Client, kind: str, rng: random.Random, n: int) -> None:
        count = rng.randint(3, 10) if kind == "many" else 1
        payloads = [self._payload(rng, n) for _ in range(count)]
        kwargs: dict[str, Any] = {"group": GROUP}
        if kind == "delayed":
            kwargs["delay"] = rng.uniform(0.2, 3.0)
        if kind == "keyed":
            kwargs.update(key=f"{self.seed}-k{n // 2}", key_ttl=600)  # each key asked for twice
        ids = [id_to_str(new_job_id()) for _ in payloads]
        if kind == "many" and self.takes_ids:
            kwargs["ids"] = ids
        elif kind != "many" and self.takes_id:
            kwargs["id"] = ids[0]
        self._call_until_known(client, kind, payloads, kwargs)

    def _call_until_known(self, client: Client, kind: str, payloads: list[dict[str, Any]],
                          kwargs: dict[str, Any]) -> None:
        reusable = "id" in kwargs or "ids" in kwargs
        for attempt in range(RETRIES_PER_UNKNOWN if reusable else 1):
            self.recorder.made().clear()
            started = time.monotonic()
            try:
                got = (client.enqueue_many(WORKFLOW, payloads, **kwargs) if kind == "many"
                       else [client.enqueue(WORKFLOW, payloads[0], **kwargs)])
            except BrokerUnreachable as exc:
                self._note_error(exc)
                continue
            except ShoalError as exc:  # refused; only an earlier, unanswered try may have been stored
                self._note_error(exc)
                if attempt == 0:
                    return
                break
            self._record_ack(kind, got, payloads, (started, time.monotonic()), attempt > 0)
            return
        sent = list(kwargs.get("ids") or [kwargs["id"]]) if reusable else list(self.recorder.made())
        with self.ledger.lock:
            for job_id in sent:
                self.ledger.unknown[job_id] = kind

    def _note_error(self, exc: Exception) -> None:
        with self.ledger.lock:
            self.ledger.errors[type(exc).__name__] += 1

    def _record_ack(self, kind: str, got: list[Any], payloads: list[dict[str, Any]],
                    call: tuple[float, float], after_retry: bool) -> None:
        with self.ledger.lock:
            self.ledger.calls.append(call)
            self.ledger.retried_ok += after_retry
            for job_id, payload in zip(got, payloads):
                if getattr(job_id, "deduplicated", False):  # the broker vouches for the key's holder
                    self.ledger.deduplicated += 1
                    self.ledger.acked.setdefault(str(job_id), kind)
                    continue
                self.ledger.acked[str(job_id)] = kind
                if payload["fail_once"]:
                    self.ledger.fail_once.add(str(job_id))
