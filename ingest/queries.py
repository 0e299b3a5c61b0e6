"""The documented city-team queries (ingest/queries/*.sql, quoted in ingest/README.md), loadable by name."""

from __future__ import annotations

from importlib import resources


def query(name: str) -> str:
    """SQL text of ingest/queries/<name>.sql (psycopg %(name)s parameters)."""
    return resources.files("custom.ingest").joinpath("queries", f"{name}.sql").read_text()


NAMES = ("events_per_class_per_hour", "loudest_hours", "silent_sensors", "sensor_map", "summary_hours")
