"""Who may talk to the server: Host and Origin checks, JSON content types, an optional token.

The app runs on a desktop and binds to 127.0.0.1, but any web page the user visits can send requests to
127.0.0.1, and a DNS name rebound to 127.0.0.1 makes them same-origin for the browser. So every request
passes :class:`RequestGuard` (a plain ASGI middleware, so uploads still stream):

* ``Host`` must name this server: ``127.0.0.1``, ``localhost``, ``::1`` (any port) or a host in
  ``Settings.allowed_hosts`` (``--allowed-host``, ``GT_WEBAPP_ALLOWED_HOSTS``) — a rebound DNS name is
  refused (400);
* an ``Origin`` header on an ``/api/`` request must be this server's own origin (403): browsers send it with
  every cross-origin request and every POST, so another site's page cannot drive the API;
* ``POST`` bodies of the JSON endpoints must be ``application/json`` (415), and no ``/api/`` request may use
  the content types a cross-site HTML form can send without asking first (``text/plain``,
  ``application/x-www-form-urlencoded``, ``multipart/form-data``; 415);
* with a token configured (``GT_WEBAPP_TOKEN``), every request needs it (401): as
  ``Authorization: Bearer <token>``, an ``X-GT-Token`` header, or the ``gt_token`` cookie that opening any
  page with ``?token=<token>`` sets (HttpOnly, SameSite=Strict) before redirecting to the page without it.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Iterable, Optional, Tuple
from urllib.parse import parse_qsl, urlencode

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
COOKIE = "gt_token"
TOKEN_HEADER = "x-gt-token"
#: Content types a cross-site ``<form>`` (or a "simple" fetch) may send without a CORS preflight.
FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
#: Endpoints whose POST body is JSON.
JSON_ENDPOINTS = ("/api/train", "/api/generate", "/api/chat", "/api/live/offer")


def split_host(value: str) -> str:
    """The host name of a ``Host`` header value or URL netloc (port and IPv6 brackets removed), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def is_loopback(host: str) -> bool:
    h = split_host(host)
    return h in LOOPBACK_HOSTS or h.startswith("127.")


class RequestGuard:
    """ASGI middleware that refuses requests failing the checks of this module with ``{"error": ...}``."""

    def __init__(self, app, allowed_hosts: Iterable[str] = (), token: Optional[str] = None) -> None:
        self.app = app
        self.hosts = {split_host(h) for h in (*LOOPBACK_HOSTS, *allowed_hosts) if h}
        self.token = token or None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # the app has no websockets; lifespan events pass
            await self.app(scope, receive, send)
            return
        headers = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        refused = self.check(scope.get("method", "GET"), scope.get("path", "/"), headers)
        if refused is None and self.token is not None:
            refused = self._check_token(scope, headers)
            if refused == "redirect":
                await self._set_cookie_and_redirect(scope, send)
                return
        if refused is not None:
            status, message = refused
            await _send_json(send, status, {"error": message})
            return
        await self.app(scope, receive, send)

    def check(self, method: str, path: str, headers: dict) -> Optional[Tuple[int, str]]:
        """``(status, message)`` when the request is refused (Host, Origin, content type), else None."""
        host = headers.get("host", "")
        if split_host(host) not in self.hosts:
            return 400, (f"host {host[:80]!r} is not this server's name (allowed: {', '.join(sorted(self.hosts))}; "
                         f"add others with --allowed-host)")
        api = path.startswith("/api/") or path == "/api"
        origin = headers.get("origin")
        if api and origin is not None:
            own = {f"http://{host.lower()}", f"https://{host.lower()}"}
            if origin.lower() not in own:
                return 403, f"cross-origin request from {origin[:80]!r} refused"
        if api and method not in ("GET", "HEAD", "OPTIONS"):
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype in FORM_TYPES:
                return 415, f"content type {ctype!r} is not accepted here (send application/json or the file's bytes)"
            if path in JSON_ENDPOINTS and ctype != "application/json":
                return 415, f"{path} takes application/json, not {ctype or 'a body without a content type'!r}"
        return None

    def _check_token(self, scope, headers: dict):
        given = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        if TOKEN_HEADER in headers:
            given.append(headers[TOKEN_HEADER].strip())
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                given.append(value)
        if any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given):
            return None
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if scope.get("method") == "GET" and "token" in query and not scope["path"].startswith("/api/"):
            if hmac.compare_digest(query["token"].encode(), self.token.encode()):
                return "redirect"
        return 401, "this server needs its token (GT_WEBAPP_TOKEN): open a page with ?token=..., or send " \
                    "'Authorization: Bearer <token>'"

    async def _set_cookie_and_redirect(self, scope, send) -> None:
        query = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if k != "token"]
        path = "/" + scope["path"].lstrip("/")  # "//host" would be a redirect to another site
        location = path + (f"?{urlencode(query)}" if query else "")
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1")),
                                (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


__all__ = ["COOKIE", "FORM_TYPES", "LOOPBACK_HOSTS", "RequestGuard", "is_loopback", "split_host"]
