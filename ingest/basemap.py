"""The dashboard's own basemap: raster tiles read from an operator's MBTiles file, and an optional GeoJSON outline.

An offline site has no tile server, and a city should not send every officer's map view to a third party: the
dashboard serves the tiles itself, behind its login, from one SQLite file (the MBTiles 1.3 format, read with the
standard library's sqlite3, read-only). Only raster tiles (PNG, JPEG, WebP): vector tiles would need a renderer the
page does not ship. The files are checked once at start so a wrong path or file ends `serve` with one line (exit 78).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custom.wire.settings import ConfigError

MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
OUTLINE_MAX_BYTES = 20 * 2**20
_COORD = re.compile(r"\d{1,10}")


@dataclass(frozen=True)
class TileSpec:
    """What the page's tile layer needs: zoom range and bounds (so it asks only for tiles the file can have)."""

    media_type: str
    minzoom: int
    maxzoom: int
    bounds: tuple[float, float, float, float] | None  # west, south, east, north
    attribution: str


class MBTiles:
    """One read-only connection, shared by the server's threads under a lock (a tile is one indexed lookup)."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            meta = dict(self._db.execute("SELECT name, value FROM metadata").fetchall())
            zooms = self._db.execute("SELECT min(zoom_level), max(zoom_level) FROM tiles").fetchone()
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise ConfigError(key, f"{path}: not a readable MBTiles file ({exc})") from None
        fmt = str(meta.get("format", "png")).lower()
        if fmt not in MEDIA_TYPES:
            raise ConfigError(key, f"{path}: tiles are {fmt!r}; the dashboard draws raster tiles only (png, jpg, webp)")
        if zooms is None or zooms[0] is None:
            raise ConfigError(key, f"{path}: holds no tiles")
        self.spec = TileSpec(MEDIA_TYPES[fmt], int(zooms[0]), int(zooms[1]), _bounds(meta.get("bounds")),
                             str(meta.get("attribution", "")))  # fmt: skip
        self._lock = threading.Lock()

    def tile(self, z: str, x: str, y: str) -> bytes | None:
        """The tile at z/x/y in the XYZ scheme Leaflet asks in (MBTiles rows count from the south: TMS), or None when
        the file has none there or the address is not one."""
        if not (_COORD.fullmatch(z) and _COORD.fullmatch(x) and _COORD.fullmatch(y)) or int(z) > 30:
            return None
        zoom, column, row = int(z), int(x), int(y)
        if column >= 1 << zoom or row >= 1 << zoom:
            return None
        with self._lock:
            found = self._db.execute(
                "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND tile_row = ?",
                (zoom, column, (1 << zoom) - 1 - row),
            ).fetchone()
        return bytes(found[0]) if found else None

    def close(self) -> None:
        self._db.close()


def _bounds(text: Any) -> tuple[float, float, float, float] | None:
    try:
        west, south, east, north = (float(v) for v in str(text).split(","))
    except ValueError:
        return None
    return (west, south, east, north)


def read_outline(path: Path, key: str) -> bytes:
    """The outline file as served (checked once: a GeoJSON object of a known type, not too big for a page)."""
    try:
        data = path.read_bytes()
        if len(data) > OUTLINE_MAX_BYTES:
            raise ConfigError(key, f"{path}: {len(data)} bytes; at most {OUTLINE_MAX_BYTES} (simplify it)")
        kind = json.loads(data).get("type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(key, f"{path}: not a readable GeoJSON file ({exc})") from None
    if kind not in ("FeatureCollection", "Feature", "Polygon", "MultiPolygon", "LineString", "MultiLineString"):
        raise ConfigError(key, f"{path}: GeoJSON type {kind!r}; give a FeatureCollection, Feature or geometry")
    return data
