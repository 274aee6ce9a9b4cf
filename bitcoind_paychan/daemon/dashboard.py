"""The live dashboard, served on the control listener behind the control cookie.

    GET  /                 the dashboard (a login form, 401, without a session)
    GET  /login?token=T    the link `paychan dashboard` prints: opens a session, then /
    POST /login            the form: `cookie` holds the control cookie (or its password)
    GET  /state            what the dashboard shows, as JSON
    GET  /events           the same, pushed as server-sent events every UPDATE_INTERVAL s
    GET  /static/NAME      the page's own CSS and JavaScript (no CDN, nothing external)

A session is an HttpOnly, SameSite=Strict cookie derived from the control cookie, so it ends
when the daemon stops (a new control cookie). The dashboard only reads: every call that moves
money still needs the control cookie as HTTP Basic credentials, which a browser never sends on
its own, so a page elsewhere cannot make the browser spend.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from html import escape
from importlib import resources
from typing import Any, NoReturn
from urllib.parse import parse_qs

from aiohttp import web

from bitcoind_paychan.daemon.cookie import ControlCookie
from bitcoind_paychan.daemon.web import read_body

log = logging.getLogger(__name__)

SESSION = "paychan_session"
SESSION_PURPOSE = "dashboard-session"
LINK_PURPOSE = "dashboard-link"
UPDATE_INTERVAL = 1.0  # seconds between two server-sent events
ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
Snapshot = Callable[[], Awaitable[dict[str, Any]]]


def login_link(base_url: str, cookie: ControlCookie) -> str:
    """The link that opens a dashboard session (what `paychan dashboard` prints)."""
    return f"{base_url.rstrip('/')}/login?token={cookie.derive(LINK_PURPOSE)}"


def _asset(name: str) -> str:
    return resources.files("bitcoind_paychan.daemon").joinpath("static", name).read_text()


class Dashboard:
    """Adds the dashboard's routes to `app`; `snapshot()` is what it shows, `cookie()` the
    control cookie in force (None while the server is not running)."""

    def __init__(self, app: web.Application, snapshot: Snapshot,
                 cookie: Callable[[], ControlCookie | None]) -> None:
        self.snapshot = snapshot
        self.cookie = cookie
        self._stopping = asyncio.Event()
        app.router.add_get("/", self.page)
        app.router.add_get("/login", self.login_by_link)
        app.router.add_post("/login", self.login_by_form)
        app.router.add_get("/state", self.state)
        app.router.add_get("/events", self.events)
        app.router.add_get("/static/{name}", self.asset)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        self._stopping.set()

    def has_session(self, request: web.Request) -> bool:
        """A session cookie, or the control cookie as Basic credentials."""
        cookie = self.cookie()
        if cookie is None:
            return False
        session = request.cookies.get(SESSION, "")
        return (hmac.compare_digest(session.encode(), cookie.derive(SESSION_PURPOSE).encode())
                or cookie.accepts(request.headers.get("Authorization")))

    def _open_session(self, cookie: ControlCookie) -> NoReturn:
        """Redirect to the dashboard with a session cookie."""
        redirect = web.HTTPSeeOther("/")
        redirect.set_cookie(SESSION, cookie.derive(SESSION_PURPOSE), httponly=True,
                            samesite="Strict", path="/")
        raise redirect

    async def page(self, request: web.Request) -> web.Response:
        if not self.has_session(request):
            return self._login_page()
        state = json.dumps(await self.snapshot()).replace("</", "<\\/")
        return web.Response(text=_asset("dashboard.html").replace("{{STATE}}", state),
                            content_type="text/html", headers=_NO_CACHE)

    def _login_page(self, message: str = "") -> web.Response:
        note = f'<p class="error">{escape(message)}</p>' if message else ""
        return web.Response(status=401, text=_asset("login.html").replace("{{NOTE}}", note),
                            content_type="text/html", headers=_NO_CACHE)

    async def login_by_link(self, request: web.Request) -> web.Response:
        cookie = self.cookie()
        token = request.query.get("token", "")
        if cookie is None or not hmac.compare_digest(token.encode(),
                                                     cookie.derive(LINK_PURPOSE).encode()):
            log.warning("dashboard: refused a login link that is not this daemon's")
            return self._login_page("That link is not valid (the daemon restarted since?). "
                                    "Run `paychan dashboard` for a new one.")
        self._open_session(cookie)

    async def login_by_form(self, request: web.Request) -> web.Response:
        cookie = self.cookie()
        form = parse_qs((await read_body(request, limit=4096)).decode("ascii", "replace"))
        password = (form.get("cookie") or [""])[0].strip().rpartition(":")[2]
        if cookie is None or not hmac.compare_digest(password.encode(),
                                                     cookie.password.encode()):
            log.warning("dashboard: refused a login with a wrong cookie")
            return self._login_page("That is not the control cookie.")
        self._open_session(cookie)

    async def state(self, request: web.Request) -> web.Response:
        if not self.has_session(request):
            raise web.HTTPUnauthorized(text="log in first: run `paychan dashboard`\n")
        return web.json_response(await self.snapshot(), headers=_NO_CACHE)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the snapshot now, then every UPDATE_INTERVAL seconds."""
        if not self.has_session(request):
            raise web.HTTPUnauthorized(text="log in first: run `paychan dashboard`\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               **_NO_CACHE})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while not self._stopping.is_set() and self.has_session(request):
                data = json.dumps(await self.snapshot())
                await response.write(f"event: state\ndata: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), UPDATE_INTERVAL)
        return response

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound(text=f"no asset {name!r}\n")
        return web.Response(text=_asset(name), content_type=ASSETS[name])


_NO_CACHE = {"Cache-Control": "no-store"}
