"""``shoal dashboard``: a live web page over a running broker (``pip install 'shoal[dashboard]'``).

The stack, and why:

- **Starlette + uvicorn.** Small, typed, asyncio-native and well kept (the base of FastAPI), so
  the pages can await the broker through ``AsyncClient`` on the same event loop, with no
  framework beyond routing, forms and templates. uvicorn is the ASGI server Starlette is
  tested with.
- **Server-rendered Jinja2 pages.** Every page is plain HTML that works without JavaScript
  (links, forms and POST actions), escapes everything it shows by default, and reads well on
  a phone with one small stylesheet.
- **Live updates by small polling, no client framework.** Each page marks one live region; a
  ~60-line script (``static/dashboard.js``) re-fetches the same URL every two seconds with an
  ``X-Live`` header and swaps in the server-rendered fragment. The broker's ``stats()`` is
  counter-based and cheap to poll, so polling costs little; unlike a server-sent event stream,
  it holds no connection open per viewer, needs no reconnect logic when the dashboard or the
  broker restarts, and is paused while the tab is hidden. htmx would do the same swap but is a
  vendored 50 kB for one feature.
- **Times in the viewer's zone.** The server writes epoch milliseconds into ``<time>``
  elements; the script renders them in the browser's own time zone.

It talks to the broker only through the client API; actions are POSTs guarded by a CSRF
token and an Origin check (``security.py``), and it binds loopback by default.
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so `shoal dashboard` can say which extra is missing instead of failing on import.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
