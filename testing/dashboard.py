"""The dashboard under test: a fixture fleet in the real PostgreSQL, `custom-ingest serve` as a subprocess logged in as
a read-only role, and a headless Debian Chromium driven by Playwright.

The fleet is written through the ingest's own write path (Judge + Store), with window times relative to now so the
page's "last 24 h" panels and the silent flag see what a live fleet would show.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from custom.daemon.publish.event import EventContext

from .broker import free_port, port_open
from .ingest import WINDOW_S, build_event
from .postgres import PgCluster
from .process import LoggedProcess

CHROMIUM = Path(os.environ.get("CUSTOM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
CLASSES = ("Siren", "Dog", "Vehicle horn")
READER = "dashboard_test"  # a login role in custom_reader (migration 002): what `serve` connects as


@dataclass(frozen=True)
class FixtureSensor:
    sensor_id: str
    lat: float
    lon: float
    heard: str
    laeq: float
    silent_for_s: float  # how long before now its latest window ended


FLEET = (
    FixtureSensor("A", 40.4169, -3.7035, "Siren", 72.0, 0.0),
    FixtureSensor("B", 40.4200, -3.7050, "Dog", 58.0, 0.0),
    FixtureSensor("C", 40.4100, -3.6900, "Vehicle horn", 50.0, 900.0),  # silent for 15 minutes
)


def fixture_event(sensor: FixtureSensor, start: float, laeq: float, heard: str | None = None) -> bytes:
    context = EventContext(
        sensor.sensor_id, {"lat": sensor.lat, "lon": sensor.lon, "name": f"street {sensor.sensor_id}"},
        CLASSES, (0.5, 0.5, 0.5), "fixture-bundle", "0" * 64, "dB(A)",
    )  # fmt: skip
    name = heard or sensor.heard
    scores = [0.9 if c == name else 0.01 for c in CLASSES]
    clock = {"synced": True, "max_error_ms": 4.0}
    vetoed = np.array([c == "Vehicle horn" and name == "Dog" for c in CLASSES])  # a veto acting on the Dog windows
    return json.dumps(build_event(context, scores, start, laeq, clock=clock, vetoed=vetoed)).encode()


def write_fixture_fleet(dsn: str, now: float) -> dict[str, int]:
    """Per sensor: its last 30 minutes of windows (alternating its class and nothing much), and one window per hour
    over the 3 days before (so every Lden period has data). Returns the event count per sensor."""
    from custom.ingest.records import EventRow, Judge
    from custom.ingest.store import Store, connect

    judge = Judge()
    rows: list[EventRow] = []
    counts: dict[str, int] = {}
    for sensor in FLEET:
        end = now - sensor.silent_for_s
        end -= end % WINDOW_S
        starts = [end - WINDOW_S * (k + 1) for k in range(180)]
        starts += [end - 3600.0 * (h + 1) for h in range(72)]
        for k, start in enumerate(starts):
            heard = sensor.heard if k % 2 == 0 else "Dog"
            event = fixture_event(sensor, start, sensor.laeq + (k % 3), heard)
            row = judge.judge(f"custom/{sensor.sensor_id}/events", event)
            assert isinstance(row, EventRow), row
            rows.append(row)
        counts[sensor.sensor_id] = len(starts)
    with connect(dsn) as conn:
        Store(conn).write(rows, [], [])
    return counts


def write_crowd(dsn: str, count: int, now: float) -> list[FixtureSensor]:
    """`count` more sensors on a grid over central Madrid (about 9 x 10 km), one recent window each: a city-sized map
    where markers must cluster. Returns them."""
    from custom.ingest.records import EventRow, Judge
    from custom.ingest.store import Store, connect

    side = max(1, round(count**0.5))
    crowd = [
        FixtureSensor(f"grid-{k:04d}", 40.38 + 0.08 * (k // side) / side, -3.75 + 0.12 * (k % side) / side,
                      CLASSES[k % len(CLASSES)], 45.0 + (k * 7) % 35, 0.0)
        for k in range(count)
    ]  # fmt: skip
    start = now - now % WINDOW_S - WINDOW_S
    judge = Judge()
    rows = [judge.judge(f"custom/{s.sensor_id}/events", fixture_event(s, start, s.laeq)) for s in crowd]
    assert all(isinstance(row, EventRow) for row in rows), rows
    with connect(dsn) as conn:
        Store(conn).write([row for row in rows if isinstance(row, EventRow)], [], [])
    return crowd


def _png(rgb: tuple[int, int, int], size: int = 256) -> bytes:
    """A solid-colour RGB PNG (zlib and struct only: no imaging library needed to make test tiles)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = (b"\x00" + bytes(rgb) * size) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def tile_xy(lat: float, lon: float, zoom: int) -> tuple[int, int]:
    """The XYZ (slippy map) tile holding a point."""
    import math

    n = 1 << zoom
    y = (1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n
    return int((lon + 180.0) / 360.0 * n), int(y)


def make_mbtiles(
    path: Path, bounds: tuple[float, float, float, float], zooms: range
) -> dict[tuple[int, int, int], bytes]:
    """A small raster MBTiles 1.3 file covering `bounds` (west, south, east, north) at `zooms`, one colour per zoom
    level; returns its tiles by XYZ address (the file stores TMS rows, counted from the south)."""
    import sqlite3

    west, south, east, north = bounds
    made: dict[tuple[int, int, int], bytes] = {}
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE metadata (name text, value text)")
        db.execute("CREATE TABLE tiles (zoom_level integer, tile_column integer, tile_row integer, tile_data blob)")
        db.execute("CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row)")
        meta = {"name": "test city", "format": "png", "type": "baselayer", "version": "1",
                "bounds": f"{west},{south},{east},{north}", "attribution": "test tiles"}  # fmt: skip
        db.executemany("INSERT INTO metadata VALUES (?, ?)", list(meta.items()))
        for z in zooms:
            (x0, y0), (x1, y1) = tile_xy(north, west, z), tile_xy(south, east, z)
            tile = _png((200 - 8 * z, 220 - 4 * z, 200))
            for x in range(x0, x1 + 1):
                for y in range(y0, y1 + 1):
                    db.execute("INSERT INTO tiles VALUES (?, ?, ?, ?)", (z, x, (1 << z) - 1 - y, tile))
                    made[(z, x, y)] = tile
    return made


def reader_dsn(cluster: PgCluster, dsn: str) -> str:
    """`dsn` logged in as a role that is only in custom_reader (the role migration 002 grants SELECT to)."""
    import psycopg

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", (READER,)).fetchone()
        if exists != (True,):
            conn.execute(f"CREATE ROLE {READER} LOGIN IN ROLE custom_reader")
    return dsn.replace(f"user={cluster.user}", f"user={READER}")


USER, PASSWORD = "operator", "correct horse battery staple"  # the test user every dashboard here is started with


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer to look at (the door's 303 to /login), not to follow


def _opener(ca: Path | None) -> urllib.request.OpenerDirector:
    """No redirects followed; HTTPS checked against `ca` (certificate and host name) when given."""
    handlers: list[Any] = [_NoRedirect]
    if ca is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(ca))))
    return urllib.request.build_opener(*handlers)


class DashboardProcess(LoggedProcess):
    """`custom-ingest serve` on a free loopback port with a users file holding USER; `get` is logged in as USER
    (`anonymous=True`: without a session)."""

    name = "dashboard"

    def __init__(
        self, workdir: Path, dsn: str, config: Path | None = None, extra: Sequence[str] = (), ca: Path | None = None
    ) -> None:
        """`extra`: more `serve` options; `ca`: with `--cert/--key` in them, the CA that signed the certificate."""
        super().__init__(workdir / "serve.log")
        self.dsn, self.config, self.port = dsn, config, free_port()
        self.extra, self.ca = tuple(extra), ca
        self.scheme = "https" if ca else "http"
        self.users_file = workdir / "dashboard-users"
        self.cookie: str | None = None
        self.base = self.url  # where requests go: the server itself, or a proxy in front of it

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> DashboardProcess:
        from custom.ingest.users import add_user

        if not self.users_file.exists():
            add_user(self.users_file, USER, PASSWORD)
        command = [sys.executable, "-m", "custom.ingest.cli", "serve", "--dsn", self.dsn, "--port", str(self.port),
                   "--users-file", str(self.users_file), *self.extra]  # fmt: skip
        if self.config is not None:
            command += ["--config", str(self.config)]
        self._launch(command, dict(os.environ))
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            assert self.proc is not None and self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, f"dashboard did not listen:\n{self.log()}"
            time.sleep(0.1)
        self.cookie = self.log_in(USER, PASSWORD)
        assert self.cookie, f"the test user could not log in:\n{self.log()}"
        return self

    def request(
        self,
        method: str,
        path: str,
        cookie: str | None = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) of one request, redirects not followed; errors are answers
        too."""
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        headers = {**(headers or {}), **({"Cookie": cookie} if cookie else {})}
        if data is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with _opener(self.ca).open(request, timeout=30) as reply:
                return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def log_in(self, user: str, password: str) -> str | None:
        """The session cookie (`name=value`) a successful login sets, or None."""
        status, headers, _ = self.request("POST", "/login", form={"user": user, "password": password})
        cookie = headers.get("set-cookie", "")
        return cookie.split(";", 1)[0] if status == 303 and cookie else None

    def get(self, path: str, anonymous: bool = False) -> tuple[int, str, bytes]:
        """(status, content type, body) of GET path, logged in unless `anonymous`."""
        status, headers, body = self.request("GET", path, None if anonymous else self.cookie)
        return status, headers.get("content-type", ""), body


def log_in(page: Any, base: str, user: str = USER, password: str = PASSWORD) -> None:
    """Through the login form, as a person would; returns once the page after it has loaded."""
    page.goto(base + "/login")
    page.fill("#user", user)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("#login")


@pytest.fixture
def make_dashboard(tmp_path: Path) -> Iterator[Callable[..., DashboardProcess]]:
    made: list[DashboardProcess] = []

    def make(
        dsn: str, config: Path | None = None, extra: Sequence[str] = (), ca: Path | None = None
    ) -> DashboardProcess:
        server = DashboardProcess(tmp_path, dsn, config, extra, ca)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.reap()


@dataclass
class Browser:
    page: Any  # playwright.sync_api.Page
    console_errors: list[str]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A page in headless Debian Chromium (Playwright drives the system browser; nothing is downloaded), with a new
    empty profile; the page's console errors are collected (a page that works offline logs none)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found (apt-get install chromium)")
    from playwright.sync_api import ConsoleMessage, sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="custom-chromium-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000}, accept_downloads=True,
        )  # fmt: skip
        opened = Browser(context.new_page(), [])

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                opened.console_errors.append(message.text)

        opened.page.on("console", console)
        try:
            yield opened
        finally:
            context.close()
