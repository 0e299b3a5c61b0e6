"""`custom-ingest serve`: the fleet dashboard, one page and a small read-only JSON/CSV/GeoJSON API (Starlette), all
behind a login (door.py; users in users.py).

The database is only read: connections run every transaction READ ONLY, and the DSN should name a login role in
`custom_reader` (created by migration 002; ingest/README.md). The page and its libraries (Leaflet, its markercluster,
uPlot: vendored from npm, ingest/static/vendor) are served from the package, the basemap from the operator's MBTiles
file (basemap.py); nothing is loaded from elsewhere unless `dashboard.tile_url` names a tile server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

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
from .basemap import MBTiles, read_outline
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


def _sensor_param(request: Request) -> str | None:
    sensor_id = request.query_params.get("sensor_id")
    if sensor_id is not None and not SENSOR_ID.fullmatch(sensor_id):
        raise d.BadRequest(f"sensor_id: {sensor_id[:40]!r} is not a sensor id (1-64 of A-Z a-z 0-9 _ . -)")
    return sensor_id


def _between(start: time | None, end: time | None) -> str | None:
    return None if start is None or end is None else f"{start:%H:%M}-{end:%H:%M}"


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

    key = "ingest.dashboard"
    tiles = MBTiles(Path(settings.basemap_mbtiles), f"{key}.basemap_mbtiles") if settings.basemap_mbtiles else None
    outline = None
    if settings.outline_geojson:
        outline = read_outline(Path(settings.outline_geojson), f"{key}.outline_geojson")
    tile_layer: dict[str, Any] = {"url": settings.tile_url, "attribution": settings.tile_attribution}
    if tiles is not None:
        spec = tiles.spec
        tile_layer = {"url": "/api/tiles/{z}/{x}/{y}", "attribution": spec.attribution, "minZoom": spec.minzoom,
                      "maxNativeZoom": spec.maxzoom, "bounds": spec.bounds}  # fmt: skip

    zone = ZoneInfo(config.timezone)
    level_rules = {rule.name: rule for rule in config.alerts.of_kind("level")}

    def settings_json(request: Request) -> Response:
        rules = [{"name": r.name, "laeq_above": r.threshold, "between": _between(r.start, r.end)}
                 for r in level_rules.values()]  # fmt: skip
        return Response(d.to_json({
            "tile_url": tile_layer["url"], "tile_attribution": tile_layer["attribution"], "tile_layer": tile_layer,
            "outline": outline is not None, "timezone": config.timezone, "silent_after_s": d.SILENT_AFTER_S,
            "level_rules": rules,
        }), media_type="application/json")  # fmt: skip

    def day_levels(request: Request) -> Response:
        """Every sensor's Ld/Le/Ln/Lden of one local day (default yesterday): what the map colours by on request."""
        d.check_params(request.query_params, ("day", "format"))
        day = d.parse_day(request.query_params, datetime.now(zone).date() - timedelta(days=1))
        d.parse_format(request.query_params)
        with pool.connection() as conn:
            rows = d.fetch(conn, "dashboard_day_levels", day=day, tz=config.timezone)
        return _reply(request, rows, f"levels-{day.isoformat()}")

    def over_limit(request: Request) -> Response:
        """Hours over a level rule's threshold (in its daily period) per sensor over the span."""
        d.check_params(request.query_params, ("rule", "sensor_id", *SPAN_KEYS))
        span = d.parse_span(request.query_params, d.SPAN_MAX)
        d.parse_format(request.query_params)
        sensor_id = _sensor_param(request)
        if not level_rules and "rule" not in request.query_params:
            return _reply(request, [], "over-limit")  # no level rule configured: nothing is over a limit
        first = next(iter(level_rules), "")
        rule = level_rules[d.parse_choice({"rule": first, **request.query_params}, "rule", tuple(level_rules))]
        with pool.connection() as conn:
            rows = d.fetch(conn, "dashboard_over_limit", sensor_id=sensor_id, since=span.since, until=span.until,
                           threshold=rule.threshold, tz=config.timezone, start=rule.start, stop=rule.end)  # fmt: skip
        return _reply(request, rows, f"over-{rule.name}")

    def tile(request: Request) -> Response:
        assert tiles is not None
        found = tiles.tile(*(request.path_params[k] for k in ("z", "x", "y")))
        if found is None:
            return _error("no tile here", 404)
        return Response(found, media_type=tiles.spec.media_type, headers={"Cache-Control": "private, max-age=86400"})

    def outline_json(request: Request) -> Response:
        return Response(outline, media_type="application/geo+json")

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
        sensor_id = _sensor_param(request)
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
        Route("/api/levels", day_levels),
        Route("/api/over-limit", over_limit),
        Route(f"{prefix}/series", sensor_route("series", SPAN_KEYS, d.SERIES_MAX, series)),
        Route(f"{prefix}/heatmap", sensor_route("heatmap", SPAN_KEYS, d.SPAN_MAX, per_hour("dashboard_heatmap"))),
        Route(f"{prefix}/lden", sensor_route("lden", SPAN_KEYS, d.SPAN_MAX, per_hour("dashboard_lden"))),
        Route(f"{prefix}/health", sensor_route("health", SPAN_KEYS, d.SPAN_MAX, health)),
        Mount("/static", StaticFiles(directory=_static_dir()), name="static"),
    ]
    if tiles is not None:
        routes.append(Route("/api/tiles/{z:str}/{x:str}/{y:str}", tile))
    if outline is not None:
        routes.append(Route("/api/outline", outline_json))
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
