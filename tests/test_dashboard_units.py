"""The dashboard's pure pieces: rates from stats samples, the chart's scale, --bind and Host checks."""
from __future__ import annotations

import pytest

pytest.importorskip("starlette")

from shoal.dashboard.chart import HEIGHT, WIDTH, chart  # noqa: E402
from shoal.dashboard.cli import is_loopback, parse_bind  # noqa: E402
from shoal.dashboard.sampler import KEEP_MS, Sampler  # noqa: E402
from shoal.dashboard.security import host_allowed  # noqa: E402


def sampler_with(*samples: tuple[int, int, int]) -> Sampler:
    sampler = Sampler(client=None, interval_s=2.0)  # type: ignore[arg-type]  # record() never calls it
    for at_ms, completed, failed in samples:
        sampler.record(at_ms, {"email": {"completed": completed, "failed": failed}})
    return sampler


def test_rates_count_the_last_minute_of_samples() -> None:
    sampler = sampler_with((0, 0, 0), (30_000, 10, 1), (60_000, 30, 2), (90_000, 30, 2))
    rates = sampler.rates("email")
    assert [(r.at_ms, r.completed, r.failed) for r in rates] == [
        (30_000, 10.0, 1.0), (60_000, 30.0, 2.0), (90_000, 20.0, 1.0)]


def test_a_counter_that_goes_back_starts_the_series_afresh() -> None:
    sampler = sampler_with((0, 100, 5), (10_000, 110, 5), (20_000, 3, 0), (30_000, 4, 0))
    assert [(r.at_ms, r.completed) for r in sampler.rates("email")] == [(30_000, 1.0)]


def test_samples_older_than_the_chart_are_forgotten() -> None:
    times = range(0, 2 * KEEP_MS, 60_000)
    sampler = sampler_with(*((t, t // 1000, 0) for t in times))
    kept = [s.at_ms for s in sampler.samples["email"]]
    assert kept == [t for t in times if t >= times[-1] - KEEP_MS - 60_000]  # the chart plus one rate window


def test_chart_puts_now_at_the_right_edge_and_the_peak_at_the_top() -> None:
    sampler = sampler_with((0, 0, 0), (60_000, 60, 0), (120_000, 90, 30))
    drawn = chart(sampler.rates("email"), now_ms=120_000)
    last_x, last_y = drawn.completed_points.split()[-1].split(",")
    assert float(last_x) == WIDTH
    assert min(float(p.split(",")[1]) for p in drawn.completed_points.split()) == 2.0  # the top, 60/min
    assert drawn.top == 60.0 and drawn.completed_now == 30.0 and drawn.failed_now == 30.0
    assert float(last_y) == pytest.approx(HEIGHT - 2 - (HEIGHT - 4) / 2)


def test_an_empty_chart_says_so() -> None:
    assert chart([], now_ms=0).empty


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8008", ("127.0.0.1", 8008)), ("[::1]:0", ("::1", 0)), ("0.0.0.0:80", ("0.0.0.0", 80)),
])
def test_parse_bind(text: str, expected: tuple[str, int]) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["8008", "localhost", ":8008", "host:port", "127.0.0.1:70000"])
def test_parse_bind_refuses_what_is_not_host_port(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_bind(text)


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")


@pytest.mark.parametrize("host, ok", [("127.0.0.1:8008", True), ("localhost:8008", True), ("[::1]:8008", True),
                                      ("evil.example:8008", False), ("127.0.0.1.evil.example", False), ("", False)])
def test_host_header_check_on_loopback(host: str, ok: bool) -> None:
    assert host_allowed(host, loopback_only=True) is ok
    assert host_allowed(host, loopback_only=False)
