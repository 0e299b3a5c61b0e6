"""What the dashboard shows, as data: query parameters checked into a `Span`, the panel queries run, rows rendered as
JSON, CSV or GeoJSON. No web framework here, so the checks and formats are testable without a server.

Every query is a file in ingest/queries (dashboard_*.sql) run with named parameters: nothing from a request is ever
put into SQL text. A bad parameter raises `BadRequest` with a message that names it; the server answers 400.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from .named_queries import query

SILENT_AFTER_S = 30  # three 10 s windows without an event: shown as silent
SERIES_MAX = timedelta(days=7)  # per-window rows: a week is 60,480 rows, enough for one chart
SPAN_MAX = timedelta(days=62)  # hourly rollup panels (heatmap, Lden) and the alert list
FORMATS = ("json", "csv")


class BadRequest(ValueError):
    """A query parameter the dashboard cannot use; the message names it and says what would do."""


@dataclass(frozen=True)
class Span:
    since: datetime
    until: datetime


def _timestamp(params: Mapping[str, str], key: str, default: datetime) -> datetime:
    text = params.get(key)
    if text is None or text == "":
        return default
    try:
        value = datetime.fromisoformat(text.replace(" ", "+") if "T" in text else text)  # URL '+' arrives as ' '
    except ValueError:
        raise BadRequest(f"{key}: {text[:40]!r} is not an ISO 8601 date or time (e.g. 2026-11-25T13:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_span(params: Mapping[str, str], longest: timedelta, now: datetime | None = None) -> Span:
    """`since`/`until` (ISO 8601; no zone = UTC); defaults: the last 24 hours."""
    until = _timestamp(params, "until", now or datetime.now(UTC))
    try:
        since = _timestamp(params, "since", until - timedelta(days=1))
    except OverflowError:
        raise BadRequest(f"until: {until.isoformat()} is too early") from None
    if since >= until:
        raise BadRequest(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    if until - since > longest:
        raise BadRequest(f"since..until spans {until - since}; at most {longest} here")
    return Span(since, until)


def check_params(params: Mapping[str, str], known: Sequence[str]) -> None:
    for key in params:
        if key not in known:
            raise BadRequest(f"{key[:40]!r}: unknown parameter (known: {', '.join(known)})")  # repr: one line


def parse_format(params: Mapping[str, str], allowed: Sequence[str] = FORMATS) -> str:
    value = params.get("format", allowed[0])
    if value not in allowed:
        raise BadRequest(f"format: {value[:20]!r} is not one of {', '.join(allowed)}")
    return value


def parse_limit(params: Mapping[str, str], default: int = 200, most: int = 5000) -> int:
    text = params.get("limit", str(default))
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or not 1 <= int(text) <= most:  # int(): <= 4300 digits
        raise BadRequest(f"limit: {text[:20]!r} is not a whole number from 1 to {most}")
    return int(text)


def parse_day(params: Mapping[str, str], default: date) -> date:
    """`day` (YYYY-MM-DD, a local day); default: `default`."""
    text = params.get("day", "")
    if text == "":
        return default
    try:
        if len(text) != 10:  # fromisoformat also takes 20261125; the page and the docs write 2026-11-25
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"day: {text[:40]!r} is not a date (YYYY-MM-DD, e.g. 2026-11-25)") from None


def parse_choice(params: Mapping[str, str], key: str, allowed: Sequence[str]) -> str:
    """A required value out of a known set (a rule's name)."""
    value = params.get(key, "")
    if value not in allowed:
        known = ", ".join(allowed) or "none configured"
        raise BadRequest(f"{key}: {value[:40]!r} is not one of {known}")
    return value


Rows = list[dict[str, Any]]


def fetch(conn: psycopg.Connection[Any], name: str, **params: Any) -> Rows:
    cur = conn.execute(query(name), params)
    columns = [c.name for c in cur.description or ()]
    return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def sensor_exists(conn: psycopg.Connection[Any], sensor_id: str) -> bool:
    return conn.execute("SELECT EXISTS (SELECT FROM sensors WHERE id = %s)", (sensor_id,)).fetchone() == (True,)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def to_json(data: Any) -> str:
    return json.dumps(data, default=_plain, separators=(",", ":"))


def to_csv(rows: Rows) -> str:
    """One header line, then rows; lists (labels) joined with ';', timestamps in UTC ISO 8601, NULL as empty."""
    out = io.StringIO()
    if not rows:
        return ""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0].keys())
    for row in rows:
        writer.writerow(
            ";".join(map(str, v)) if isinstance(v, list) else "" if v is None else _plain(v) for v in row.values()
        )
    return out.getvalue()


def to_geojson(sensors: Rows) -> dict[str, Any]:
    """The map's sensors as a FeatureCollection (RFC 7946: coordinates are lon, lat)."""
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [row["lon"], row["lat"]]},
                "properties": {k: _plain(v) for k, v in row.items() if k not in ("lat", "lon")},
            }
            for row in sensors
        ],
    }
