"""The app that examples/test_myapp.py tests with ``shoal.testing``: sign-up emails,
an onboarding workflow that waits a day, and a nightly report fired by cron."""
from __future__ import annotations

from typing import Any

from shoal import Permanent, workflow


class Mailer:
    """Sends mail (this one only keeps it); a test swaps in one that fails."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, to: str, subject: str) -> None:
        self.sent.append((to, subject))


mailer = Mailer()


@workflow("send-email", worker="email", retries=5)
def send_email(payload: dict[str, str]) -> dict[str, str]:
    """One email; an SMTP error is retried with backoff, a malformed address is not."""
    if "@" not in payload["to"]:
        raise Permanent(f"not an email address: {payload['to']!r}")
    mailer.send(payload["to"], payload["subject"])
    return {"sent": payload["to"]}


@workflow("onboard", worker="email")
def onboard(payload: dict[str, str], step: Any) -> str:
    """Welcome a new user now, and send a tip a day later (the slot is free meanwhile)."""
    welcome = step.enqueue("welcome", send_email, {"to": payload["email"], "subject": "Welcome"})
    step.wait("welcomed", welcome)
    step.sleep("a-day-later", 24 * 3600)
    step.run("tip", mailer.send, payload["email"], "A tip for your second day")
    return "onboarded"


@workflow("nightly-report")
def nightly_report(payload: dict[str, str]) -> None:
    """Fired by [cron.nightly-report] in myapp.toml."""
    mailer.send("ops@example.com", f"{payload['kind']} report")
