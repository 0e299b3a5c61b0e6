"""The documented queries (ingest/queries/*.sql, all quoted in ingest/README.md), loadable by name: the city team's,
the dashboard panels' and the alert rules'."""

from __future__ import annotations

from importlib import resources


def query(name: str) -> str:
    """SQL text of ingest/queries/<name>.sql (psycopg %(name)s parameters)."""
    return resources.files("custom.ingest").joinpath("queries", f"{name}.sql").read_text()


NAMES = ("events_per_class_per_hour", "loudest_hours", "silent_sensors", "sensor_map", "summary_hours")
DASHBOARD = ("dashboard_sensors", "dashboard_alerts", "dashboard_series", "dashboard_heatmap", "dashboard_lden",
             "dashboard_health", "dashboard_day_levels", "dashboard_over_limit")  # fmt: skip
ALERTS = ("alert_level", "alert_class", "alert_silent")
