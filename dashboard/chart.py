"""The overview's small rate chart, drawn on the server as inline SVG (no chart library)."""
from __future__ import annotations

from dataclasses import dataclass

from .sampler import KEEP_MS, Rate

WIDTH, HEIGHT = 300, 60
MIN_SPAN_MS = 2 * 60_000


@dataclass(frozen=True)
class Chart:
    """Polyline points for completed and failed per minute, plus the latest values and the scale."""

    completed_points: str
    failed_points: str
    completed_now: float
    failed_now: float
    top: float
    empty: bool
    span_min: int = 15


def chart(rates: list[Rate], now_ms: int) -> Chart:
    """Scale the rates into a ``WIDTH`` x ``HEIGHT`` box, time left to right, now at the right edge.

    The time axis covers the samples there are (at least two minutes, at most ``KEEP_MS``), so a
    dashboard started a minute ago draws across the whole box rather than in its last pixels.
    """
    shown = [r for r in rates if r.at_ms >= now_ms - KEEP_MS]
    if not shown:
        return Chart("", "", 0.0, 0.0, 0.0, True)
    span_ms = min(KEEP_MS, max(MIN_SPAN_MS, now_ms - shown[0].at_ms))
    top = max(1.0, max(max(r.completed, r.failed) for r in shown))

    def points(values: list[tuple[int, float]]) -> str:
        out = []
        for at_ms, value in values:
            x = WIDTH * (1 - (now_ms - at_ms) / span_ms)
            y = HEIGHT - 2 - (HEIGHT - 4) * value / top
            out.append(f"{x:.1f},{y:.1f}")
        return " ".join(out)

    return Chart(points([(r.at_ms, r.completed) for r in shown]), points([(r.at_ms, r.failed) for r in shown]),
                 shown[-1].completed, shown[-1].failed, top, False, max(1, round(span_ms / 60_000)))
