"""The Starlette application: routes, the broker connection's lifetime, rendering and error pages."""
from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Hashable

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from shoal import cli_format as fmt
from shoal.client import AsyncClient
from shoal.client.client import HistoryEntry
from shoal.errors import BrokerUnreachable, ShoalError
from shoal.errors import Forbidden as BrokerForbidden

from .sampler import Sampler
from .security import Forbidden, Guard, host_allowed

HERE = Path(__file__).parent
log = logging.getLogger("shoal.dashboard")


@dataclass
class Dashboard:
    """What every request needs: the broker client, the stats sampler, the CSRF guard, templates."""

    endpoint: str
    client: AsyncClient
    sampler: Sampler
    guard: Guard
    env: Environment
    live_ms: int
    histories: "HistoryCache" = field(default_factory=lambda: HistoryCache())


class HistoryCache:
    """The last history read per job, with the job's state it was read at (a few hundred jobs at most)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[Hashable, list[HistoryEntry]]] = OrderedDict()

    def get(self, job_id: str, seen: Hashable) -> list[HistoryEntry] | None:
        """The history read when the job looked like ``seen``, or None (read it again)."""
        entry = self._entries.get(job_id)
        if entry is None or entry[0] != seen or seen is None:
            return None
        self._entries.move_to_end(job_id)
        return entry[1]

    def put(self, job_id: str, seen: Hashable, history: list[HistoryEntry]) -> None:
        """Remember a history; the least recently shown job is forgotten past ``size``."""
        self._entries[job_id] = (seen, history)
        self._entries.move_to_end(job_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def create_app(endpoint: str, *, timeout_s: float = 3.0, sample_interval_s: float = 2.0,
               live_ms: int = 2000, loopback_only: bool = True, secret: bytes | None = None,
               key: str | None = None, broker_key: str | None = None, config: str | None = None) -> Starlette:
    """The dashboard for the broker at ``endpoint``; ``loopback_only`` refuses non-loopback Host headers.

    ``key``/``broker_key``/``config``: the CURVE keys to connect with, as for ``Client``.
    """
    from . import actions, pages
    from .access import initial

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = AsyncClient(endpoint, timeout=timeout_s, key=key, broker_key=broker_key, config=config)
        sampler = Sampler(client, sample_interval_s, initial((key or "configured") if client._r.curve else None))
        app.state.dash = Dashboard(endpoint, client, sampler, Guard(secret), _environment(), live_ms)
        sampler.start()
        try:
            yield
        finally:
            await sampler.stop()
            await client.close()

    routes = [
        Route("/", pages.overview), Route("/workers", pages.workers), Route("/jobs", pages.jobs),
        Route("/jobs/{job_id}", pages.job), Route("/dead", pages.dead), Route("/cron", pages.cron),
        Route("/dead/requeue", actions.requeue, methods=["POST"]),
        Route("/dead/requeue-all", actions.requeue_all, methods=["POST"]),
        Route("/jobs/{job_id}/cancel", actions.cancel, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    handlers: Any = {BrokerUnreachable: _unreachable, ShoalError: _refused, Forbidden: _forbidden,
                     actions.NotAllowed: _forbidden, BrokerForbidden: _forbidden,
                     HTTPException: _http_error, Exception: _crashed}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.add_middleware(HostCheck, loopback_only=loopback_only)
    return app


class HostCheck:
    """Refuse a ``Host`` header that is not loopback while bound to loopback (DNS rebinding)."""

    def __init__(self, app: ASGIApp, loopback_only: bool) -> None:
        self.app, self.loopback_only = app, loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.loopback_only):
                response = PlainTextResponse(f"host {host!r} is not served: the dashboard answers on loopback only",
                                             status_code=421)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- rendering -------------------------------------------------------------------------
def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(duration=fmt.duration, first_line=fmt.first_line, to_json=_pretty_json,
                       size=_size, time=_time)
    return env


def _pretty_json(value: Any) -> str:
    return fmt.to_json(value, indent=2)


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _time(ms: int | None, precise: bool = False) -> Markup:
    """A ``<time>`` the browser rewrites into the viewer's zone (UTC until it does); ``precise``: with ms."""
    if not ms:
        return Markup("—")
    extra = Markup(" data-precise") if precise else Markup("")
    return Markup('<time data-ms="{}"{}>{}</time>').format(int(ms), extra, fmt.timestamp(int(ms)))


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """Render a page, or only its live region (the banner and block ``live``) for the poller."""
    dash: Dashboard = request.app.state.dash
    ctx = {"request": request, "endpoint": dash.endpoint, "csrf": dash.guard.token(request),
           "live_ms": dash.live_ms, "now_ms": int(time.time() * 1000), "broker_error": dash.sampler.error,
           "down_since_ms": dash.sampler.down_since_ms, "path": request.url.path, "access": dash.sampler.access,
           **context}
    page = dash.env.get_template(template)
    if request.headers.get("x-live") == "1" and "live" in page.blocks:
        banner = dash.env.get_template("_banner.html").render(ctx)
        body = banner + "".join(page.blocks["live"](page.new_context(ctx)))
        response: Response = HTMLResponse(body, status, headers={"X-Live-Region": "1", "Cache-Control": "no-store"})
    else:
        response = HTMLResponse(page.render(ctx), status, headers={"Cache-Control": "no-store"})
    dash.guard.remember(request, response)
    return response


def message(request: Request, status: int, title: str, text: str) -> Response:
    """A page that says what went wrong (status ``status``), never a traceback."""
    return render(request, "message.html", status, title=title, text=text)


# --- error pages -------------------------------------------------------------------------
async def _unreachable(request: Request, exc: Exception) -> Response:
    dash: Dashboard = request.app.state.dash
    if dash.sampler.error is None:
        dash.sampler.error = str(exc)
        dash.sampler.down_since_ms = int(time.time() * 1000)
    return render(request, "message.html", 503, title="Broker unreachable", reload_on_ok=True,
                  text="This page fills in by itself once the broker answers again.")


async def _refused(request: Request, exc: Exception) -> Response:
    return message(request, 502, "The broker refused the request", str(exc))


async def _forbidden(request: Request, exc: Exception) -> Response:
    return message(request, 403, "Action refused", str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    if status == 404:
        return message(request, 404, "Not found", f"There is no page at {request.url.path}.")
    return message(request, status, "Request refused", str(getattr(exc, "detail", exc)))


async def _crashed(request: Request, exc: Exception) -> Response:
    log.exception("dashboard error on %s", request.url.path)
    return message(request, 500, "Dashboard error", f"{type(exc).__name__}: {exc} (the dashboard's log has more)")
