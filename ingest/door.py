"""The dashboard's door: nothing it serves is readable without a login, except `/healthz` (no data) and the login form.

- Every request passes `Door` (an ASGI middleware around the whole app, so a route added later is behind it without
  anyone remembering to): no valid session -> 401 for `/api/...` and `/static/...`, a redirect to `/login` for pages.
- Sessions live in this process (`Sessions`): the cookie carries a random session id signed with a per-process key
  (itsdangerous, timestamped), HttpOnly, SameSite=Strict, Secure over HTTPS, expiring after `dashboard.session_hours`.
  Logout forgets the id, so a copied cookie dies with it; a restart logs everyone out.
- Failed logins are logged with the client address and limited per address (`Throttle`): after FAILS_ALLOWED
  failures in FAIL_WINDOW_S seconds, 429 until the oldest ages out. Behind the recommended reverse proxy on loopback,
  uvicorn takes the address from X-Forwarded-For (it trusts that header from 127.0.0.1 only).
"""

from __future__ import annotations

import html
import ipaddress
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import parse_qs

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .users import UsersFile, verify

log = logging.getLogger("custom.ingest.serve")

COOKIE = "custom_session"
OPEN_PATHS = frozenset({"/healthz", "/login"})  # the only routes served without a session
FAILS_ALLOWED = 5
FAIL_WINDOW_S = 300.0
LOGIN_BODY_MAX = 4096


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, 0.0.0.0 or "" reach the network


class Sessions:
    """Session id -> (user, expiry), the ids signed into the cookie; thread-safe (handlers run in a thread pool)."""

    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.time) -> None:
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._signer = URLSafeTimedSerializer(secrets.token_bytes(32), salt="custom-ingest-session")
        self._open: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def open(self, user: str) -> str:
        sid = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._open = {k: v for k, v in self._open.items() if v[1] > now}  # forget the expired ones
            self._open[sid] = (user, now + self.lifetime_s)
        return self._signer.dumps(sid)

    def _sid(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            sid = self._signer.loads(cookie, max_age=int(self.lifetime_s) + 1)
        except BadSignature:  # also SignatureExpired
            return None
        return sid if isinstance(sid, str) else None

    def user(self, cookie: str | None) -> str | None:
        sid = self._sid(cookie)
        with self._lock:
            found = self._open.get(sid) if sid else None
        return found[0] if found and found[1] > self._clock() else None

    def close(self, cookie: str | None) -> None:
        sid = self._sid(cookie)
        if sid:
            with self._lock:
                self._open.pop(sid, None)


class Throttle:
    """Failed logins per client address in a sliding window."""

    def __init__(self, allowed: int = FAILS_ALLOWED, window_s: float = FAIL_WINDOW_S) -> None:
        self.allowed, self.window_s = allowed, window_s
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        fails = self._fails.setdefault(address, deque())
        while fails and fails[0] <= now - self.window_s:
            fails.popleft()
        return fails

    def retry_after(self, address: str) -> float:
        """0 when `address` may try; else seconds until it may."""
        now = time.monotonic()
        with self._lock:
            fails = self._recent(address, now)
            return fails[0] + self.window_s - now if len(fails) >= self.allowed else 0.0

    def failed(self, address: str) -> int:
        now = time.monotonic()
        with self._lock:
            fails = self._recent(address, now)
            fails.append(now)
            return len(fails)


class Door:
    """ASGI middleware: a request without a valid session never reaches the app, whatever its route."""

    def __init__(self, app: ASGIApp, sessions: Sessions, users: UsersFile) -> None:
        self.app, self.sessions, self.users = app, sessions, users

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        user = self.sessions.user(HTTPConnection(scope).cookies.get(COOKIE))
        if user is not None and user in self.users.current():
            scope["user"] = user

            async def send_unstored(message: Message) -> None:
                if message["type"] == "http.response.start":  # nothing behind the door stays in a browser's cache:
                    MutableHeaders(scope=message)["Cache-Control"] = "no-store"  # each view passes the door again
                await send(message)

            await self.app(scope, receive, send_unstored)
            return
        path: str = scope["path"]
        if path.startswith(("/api/", "/static/")) or path == "/api" or scope["method"] not in ("GET", "HEAD"):
            reply: Response = JSONResponse({"error": "log in first (/login)"}, 401)
        else:
            reply = RedirectResponse("/login", 303)
        await reply(scope, receive, send)


def _login_page(message: str = "", status: int = 200) -> HTMLResponse:
    note = f'<p id="login-error" role="alert">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>C.U.S.T.O.M. fleet: log in</title><link rel="icon" href="data:,">
<style>body{{font:16px system-ui,sans-serif;margin:4em auto;max-width:22em}}label,input,button{{display:block;
margin:.4em 0;width:100%}}#login-error{{color:#b00}}</style></head>
<body><h1>C.U.S.T.O.M. fleet</h1>{note}
<form id="login-form" method="post" action="/login">
<label>User <input id="user" name="user" autocomplete="username" required></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password" required></label>
<button id="login" type="submit">Log in</button></form></body></html>""",
        status,
    )


def door_routes(sessions: Sessions, users: UsersFile, throttle: Throttle) -> list[Route]:
    """/login (form and check), /logout, /healthz."""

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return _login_page()
        address = request.client.host if request.client else "unknown"
        wait = throttle.retry_after(address)
        if wait > 0:
            log.warning("dashboard: login from %s refused: too many failures (retry in %.0f s)", address, wait)
            page = _login_page(f"Too many failed logins from your address: try again in {wait:.0f} s.", 429)
            page.headers["Retry-After"] = str(int(wait) + 1)
            return page
        body = await request.body()
        form = parse_qs(body[:LOGIN_BODY_MAX].decode("utf-8", errors="replace"), max_num_fields=4)
        name, password = (form.get(key, [""])[0] for key in ("user", "password"))
        if not await run_in_threadpool(verify, users.current(), name, password):
            fails = throttle.failed(address)
            log.warning("dashboard: failed login for %r from %s (%d in %.0f s)", name[:64], address, fails,
                        throttle.window_s)  # fmt: skip
            return _login_page("Wrong user name or password.", 401)
        log.info("dashboard: %r logged in from %s", name, address)
        reply = RedirectResponse("/", 303)
        reply.set_cookie(
            COOKIE, sessions.open(name), max_age=int(sessions.lifetime_s), path="/", httponly=True,
            samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip
        return reply

    async def logout(request: Request) -> Response:
        sessions.close(request.cookies.get(COOKIE))
        reply = RedirectResponse("/login", 303)
        reply.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return reply

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
    ]
