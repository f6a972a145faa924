"""The overview's small rate chart, drawn on the server as inline SVG (no chart library)."""
from __future__ import annotations

from dataclasses import dataclass

from .sampler import KEEP_MS, Rate

WIDTH, HEIGHT = 300, 60


@dataclass(frozen=True)
class Chart:
    """Polyline points for completed and failed per minute, plus the latest values and the scale."""

    completed_points: str
    failed_points: str
    completed_now: float
    failed_now: float
    top: float
    empty: bool


def chart(rates: list[Rate], now_ms: int) -> Chart:
    """Scale the last ``KEEP_MS`` of rates into a ``WIDTH`` x ``HEIGHT`` box (time left to right)."""
    shown = [r for r in rates if r.at_ms >= now_ms - KEEP_MS]
    if not shown:
        return Chart("", "", 0.0, 0.0, 0.0, True)
    top = max(1.0, max(max(r.completed, r.failed) for r in shown))

    def points(values: list[tuple[int, float]]) -> str:
        out = []
        for at_ms, value in values:
            x = WIDTH * (1 - (now_ms - at_ms) / KEEP_MS)
            y = HEIGHT - 2 - (HEIGHT - 4) * value / top
            out.append(f"{x:.1f},{y:.1f}")
        return " ".join(out)

    return Chart(points([(r.at_ms, r.completed) for r in shown]), points([(r.at_ms, r.failed) for r in shown]),
                 shown[-1].completed, shown[-1].failed, top, False)
