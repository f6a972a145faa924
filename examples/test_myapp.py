"""Testing myapp with shoal.testing: the real broker rules, in process, in virtual time.

Run it with ``.venv/bin/python -m pytest examples/test_myapp.py``. Nothing is started: no
broker, no worker processes, no sockets, and a day of virtual time takes milliseconds.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import myapp
from shoal.testing import Simulation

CONFIG = Path(__file__).with_name("myapp.toml")


class FlakyMailer(myapp.Mailer):
    """An SMTP server that is down for the first ``failures`` sends."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures

    def send(self, to: str, subject: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("smtp: connection refused")
        super().send(to, subject)


@pytest.fixture
def mailer(monkeypatch: pytest.MonkeyPatch) -> FlakyMailer:
    fake = FlakyMailer()
    monkeypatch.setattr(myapp, "mailer", fake)
    return fake


@pytest.fixture
def sim() -> Iterator[Simulation]:
    with Simulation(myapp, config=CONFIG) as simulation:
        yield simulation


def test_an_email_is_retried_until_smtp_answers(sim: Simulation, mailer: FlakyMailer) -> None:
    mailer.failures = 2
    job_id = sim.client.enqueue("send-email", {"to": "a@b.c", "subject": "Reset your password"})
    sim.run_until_idle()                       # the first attempt fails; the retry waits for its backoff
    assert mailer.sent == []
    result = sim.client.wait(job_id, timeout=600)  # virtual seconds: returns at once
    assert result.status == "completed" and result.attempts == 3
    assert mailer.sent == [("a@b.c", "Reset your password")]


def test_a_malformed_address_goes_to_the_dead_letters_at_once(sim: Simulation, mailer: FlakyMailer) -> None:
    job_id = sim.client.enqueue("send-email", {"to": "nobody", "subject": "Hi"})
    assert sim.client.wait(job_id).status == "dead"
    [dead] = sim.client.dead_letters(group="email")
    assert dead.attempts == 1 and "not an email address" in (dead.error or "")


def test_onboarding_sends_the_tip_a_day_after_the_welcome(sim: Simulation, mailer: FlakyMailer) -> None:
    job_id = sim.client.enqueue("onboard", {"email": "new@user.io"})
    sim.run_until_idle()
    assert mailer.sent == [("new@user.io", "Welcome")]
    sim.advance(24 * 3600 - 60)
    to_user = [subject for to, subject in mailer.sent if to == "new@user.io"]
    assert to_user == ["Welcome"]              # (the nightly report went out meanwhile, to ops)
    sim.advance(60)
    assert ("new@user.io", "A tip for your second day") in mailer.sent
    assert sim.client.get(job_id).status == "completed"  # type: ignore[union-attr]


def test_the_nightly_report_goes_out_at_three(sim: Simulation, mailer: FlakyMailer) -> None:
    sim.advance(3 * 3600)                      # the simulation starts at midnight UTC
    assert mailer.sent == [("ops@example.com", "daily report")]


def test_a_worker_crash_does_not_lose_the_email(sim: Simulation, mailer: FlakyMailer) -> None:
    sim.kill_worker("email")                   # the worker dies as it starts the next job
    job_id = sim.client.enqueue("send-email", {"to": "a@b.c", "subject": "Receipt"})
    result = sim.client.wait(job_id, timeout=60)
    assert result.status == "completed" and result.attempts == 2  # the crash cost one attempt
    assert [e["event"] for e in sim.events if e["id"] == job_id] == ["queued", "started", "started", "completed"]
