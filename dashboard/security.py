"""CSRF protection for the dashboard's POST actions, and the Host check against DNS rebinding.

A per-process secret signs a random per-browser id kept in a ``SameSite=Strict`` cookie: the
form token is ``HMAC(secret, id)``. Another site can make a browser send the cookie (it cannot,
with ``Strict``, but older browsers might) yet cannot read a page to learn the token. On top,
a POST must carry an ``Origin`` (or, failing that, ``Referer``) of this very host. The Host
check refuses requests whose ``Host`` header is not loopback when the dashboard binds
loopback, so a rebinding DNS name cannot make a page of another site same-origin with it.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "shoal_dashboard"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Forbidden(Exception):
    """A POST that fails the CSRF or Origin check; the message says which."""


class Guard:
    """Issues and checks CSRF tokens for one dashboard process."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def browser_id(self, request: Request) -> str:
        """This browser's id from its cookie, or a new one (``remember`` sets the cookie)."""
        known = request.cookies.get(COOKIE, "")
        if len(known) == 32 and all(c in "0123456789abcdef" for c in known):
            return known
        fresh: str = getattr(request.state, "new_browser_id", "") or secrets.token_hex(16)
        request.state.new_browser_id = fresh
        return fresh

    def token(self, request: Request) -> str:
        """The token forms on this page must send back."""
        return self._sign(self.browser_id(request))

    def remember(self, request: Request, response: Response) -> None:
        """Set the cookie on the response when this request had none."""
        fresh = getattr(request.state, "new_browser_id", "")
        if fresh:
            response.set_cookie(COOKIE, fresh, httponly=True, samesite="strict", path="/")

    def check(self, request: Request, sent_token: str) -> None:
        """Raise ``Forbidden`` unless the POST comes from this dashboard's own page."""
        origin = request.headers.get("origin") or request.headers.get("referer")
        if not origin:
            raise Forbidden("the request has no Origin or Referer header")
        here = request.headers.get("host", "")
        if urlsplit(origin).netloc != here:
            raise Forbidden(f"the request comes from {origin!r}, not from this dashboard ({here})")
        known = request.cookies.get(COOKIE, "")
        if not known or not hmac.compare_digest(self._sign(known), sent_token):
            raise Forbidden("the form's CSRF token is missing or stale (reload the page and try again)")

    def _sign(self, browser_id: str) -> str:
        return hmac.new(self._secret, browser_id.encode(), hashlib.sha256).hexdigest()


def host_allowed(host_header: str, loopback_only: bool) -> bool:
    """Whether a request's ``Host`` header is acceptable (any host unless bound to loopback)."""
    if not loopback_only:
        return True
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    return host.strip("[]") in LOOPBACK_HOSTS
