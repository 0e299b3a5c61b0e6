"""`custom-ingest serve`: the fleet dashboard, one page and a small read-only JSON/CSV/GeoJSON API (Starlette), all
behind a login (door.py; users in users.py).

The database is only read: connections run every transaction READ ONLY, and the DSN should name a login role in
`custom_reader` (created by migration 002; ingest/README.md). The page and its libraries (Leaflet, uPlot: vendored from
npm, ingest/static/vendor) are served from the package; nothing is loaded from elsewhere except the basemap tiles, and
only when `dashboard.tile_url` is set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from custom.wire.topics import SENSOR_ID

from . import dashboard as d
from .config import IngestConfig
from .door import Door, Sessions, Throttle, door_routes
from .users import UsersFile

log = logging.getLogger("custom.ingest.serve")

STATEMENT_TIMEOUT_MS = 15000
SPAN_KEYS = ("since", "until", "format")


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("SET default_transaction_read_only = on")
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(STATEMENT_TIMEOUT_MS),))


def open_pool(dsn: str, size: int = 4) -> ConnectionPool[psycopg.Connection[Any]]:
    """Connections in UTC, autocommit (each query its own read-only transaction), opened now so a bad DSN fails at
    start with the server's reason."""
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        dsn, min_size=1, max_size=size, configure=_configure, open=False,
        kwargs={"autocommit": True, "connect_timeout": 5, "application_name": "custom-ingest-serve"},
    )  # fmt: skip
    pool.open(wait=True, timeout=10)
    return pool


def _static_dir() -> Path:
    return Path(str(resources.files("custom.ingest").joinpath("static")))


def _reply(request: Request, rows: d.Rows, name: str) -> Response:
    if d.parse_format(request.query_params) == "csv":
        headers = {"Content-Disposition": f'attachment; filename="{name}.csv"'}
        return Response(d.to_csv(rows), media_type="text/csv; charset=utf-8", headers=headers)
    return Response(d.to_json(rows), media_type="application/json")


def _error(message: str, status: int) -> Response:
    return Response(d.to_json({"error": message}), status, media_type="application/json")


def create_app(config: IngestConfig, pool: ConnectionPool[psycopg.Connection[Any]]) -> Starlette:
    """The dashboard over `pool`; every handler is synchronous (Starlette runs it in its thread pool)."""
    settings = config.dashboard

    def sensor_route(
        name: str, known: tuple[str, ...], longest: Any, body: Callable[..., d.Rows]
    ) -> Callable[[Request], Response]:
        def handle(request: Request) -> Response:
            d.check_params(request.query_params, known)
            span = d.parse_span(request.query_params, longest)
            d.parse_format(request.query_params)
            sensor_id = request.path_params["sensor_id"]
            with pool.connection() as conn:
                if not SENSOR_ID.fullmatch(sensor_id) or not d.sensor_exists(conn, sensor_id):  # NUL: not to SQL
                    return Response(
                        d.to_json({"error": f"no sensor {sensor_id!r}"}), 404, media_type="application/json"
                    )
                rows = body(conn, sensor_id, span)
            return _reply(request, rows, f"{sensor_id}-{name}")

        return handle

    def index(request: Request) -> Response:
        return FileResponse(_static_dir() / "index.html", media_type="text/html")

    def settings_json(request: Request) -> Response:
        return Response(d.to_json({
            "tile_url": settings.tile_url, "tile_attribution": settings.tile_attribution,
            "timezone": config.timezone, "silent_after_s": d.SILENT_AFTER_S,
        }), media_type="application/json")  # fmt: skip

    def sensors(request: Request) -> Response:
        d.check_params(request.query_params, ("format",))
        fmt = d.parse_format(request.query_params, ("json", "geojson", "csv"))
        with pool.connection() as conn:
            rows = d.fetch(conn, "dashboard_sensors", now=datetime.now(UTC), silent_s=d.SILENT_AFTER_S)
        if fmt == "csv":
            return _reply(request, rows, "sensors")
        headers = {"Content-Disposition": 'attachment; filename="sensors.geojson"'} if fmt == "geojson" else {}
        return Response(d.to_json(d.to_geojson(rows)), media_type="application/geo+json", headers=headers)

    def alerts(request: Request) -> Response:
        d.check_params(request.query_params, ("sensor_id", *SPAN_KEYS, "limit"))
        span = d.parse_span(request.query_params, d.SPAN_MAX)
        limit = d.parse_limit(request.query_params)
        sensor_id = request.query_params.get("sensor_id")
        if sensor_id is not None and not SENSOR_ID.fullmatch(sensor_id):
            raise d.BadRequest(f"sensor_id: {sensor_id[:40]!r} is not a sensor id (1-64 of A-Z a-z 0-9 _ . -)")
        with pool.connection() as conn:
            rows = d.fetch(conn, "dashboard_alerts", sensor_id=sensor_id,
                           since=span.since, until=span.until, limit=limit)  # fmt: skip
        return _reply(request, rows, "alerts")

    def series(conn: psycopg.Connection[Any], sensor_id: str, span: d.Span) -> d.Rows:
        return d.fetch(conn, "dashboard_series", sensor_id=sensor_id, since=span.since, until=span.until)

    def per_hour(name: str) -> Callable[[psycopg.Connection[Any], str, d.Span], d.Rows]:
        def body(conn: psycopg.Connection[Any], sensor_id: str, span: d.Span) -> d.Rows:
            return d.fetch(conn, name, sensor_id=sensor_id, since=span.since, until=span.until, tz=config.timezone)

        return body

    def health(conn: psycopg.Connection[Any], sensor_id: str, span: d.Span) -> d.Rows:
        return d.fetch(conn, "dashboard_health", sensor_id=sensor_id, since=span.since, until=span.until)

    def bad_request(request: Request, exc: Exception) -> Response:
        return _error(str(exc), 400)

    def not_found(request: Request, exc: Exception) -> Response:
        return _error(f"no such page: {request.url.path[:80]!r}", 404)  # JSON like every other refusal of the API

    prefix = "/api/sensors/{sensor_id:str}"
    sessions = Sessions(settings.session_hours * 3600.0)
    users = UsersFile(Path(settings.users_file))
    routes = [
        *door_routes(sessions, users, Throttle()),
        Route("/", index),
        Route("/api/settings", settings_json),
        Route("/api/sensors", sensors),
        Route("/api/alerts", alerts),
        Route(f"{prefix}/series", sensor_route("series", SPAN_KEYS, d.SERIES_MAX, series)),
        Route(f"{prefix}/heatmap", sensor_route("heatmap", SPAN_KEYS, d.SPAN_MAX, per_hour("dashboard_heatmap"))),
        Route(f"{prefix}/lden", sensor_route("lden", SPAN_KEYS, d.SPAN_MAX, per_hour("dashboard_lden"))),
        Route(f"{prefix}/health", sensor_route("health", SPAN_KEYS, d.SPAN_MAX, health)),
        Mount("/static", StaticFiles(directory=_static_dir()), name="static"),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={d.BadRequest: bad_request, 404: not_found},
        middleware=[Middleware(Door, sessions=sessions, users=users)],  # around every route, present and future
    )


def serve(config: IngestConfig) -> int:
    """Run until SIGTERM/SIGINT (uvicorn handles both and finishes the requests in flight)."""
    import uvicorn

    settings = config.dashboard
    pool = open_pool(settings.dsn or config.database.dsn)
    try:
        scheme = "https" if settings.tls_cert else "http"
        log.info("dashboard on %s://%s:%d/", scheme, settings.host, settings.port)
        uvicorn.run(
            create_app(config, pool), host=settings.host, port=settings.port, log_level="warning",
            ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
        )  # fmt: skip
    finally:
        pool.close()
    return 0
