"""Virtual time for a simulation: it moves only when the test moves it."""
from __future__ import annotations

from datetime import datetime, timezone

from shoal.worker.steps import StepClock

# 2025-01-01T00:00:00Z: a fixed start, so cron schedules and stored times are the same on every run.
DEFAULT_START_S = 1_735_689_600.0
MONO_START_S = 1_000.0  # the broker treats monotonic 0 as "never happened"


class VirtualClock(StepClock):
    """Wall time (what is stored, shown and used by cron) and monotonic time (deadlines),
    both moved only by ``advance``. The broker core and every simulated step read it."""

    def __init__(self, start: float | datetime | None = None) -> None:
        start_s = DEFAULT_START_S if start is None else (
            start.timestamp() if isinstance(start, datetime) else float(start))
        self._start_ms = int(round(start_s * 1000))
        self._mono_s = MONO_START_S

    def wall_ms(self) -> int:
        """Virtual Unix time in milliseconds (derived from the monotonic time: the two never drift)."""
        return self._start_ms + int(round((self._mono_s - MONO_START_S) * 1000))

    def mono(self) -> float:
        """Virtual monotonic seconds."""
        return self._mono_s

    def now_s(self) -> float:
        """Virtual Unix time in seconds."""
        return self.wall_ms() / 1000

    def datetime(self) -> datetime:
        """Virtual time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.now_s(), tz=timezone.utc)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward (never back)."""
        if seconds < 0:
            raise ValueError(f"time only moves forward; cannot advance by {seconds}")
        self._mono_s += seconds

    def advance_to(self, mono_s: float) -> None:
        """Move to the monotonic time ``mono_s`` exactly (a deadline is then due, not a hair short)."""
        self._mono_s = max(self._mono_s, mono_s)

    def pause(self, seconds: float) -> None:
        """The pause between in-step retries takes no virtual time (the run is one instant)."""

    async def apause(self, seconds: float) -> None:
        """As ``pause``, for async handlers."""
