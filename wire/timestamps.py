"""How a moment is written on the wire: ISO-8601 UTC with milliseconds and a `Z`, the one spelling in events,
summaries, health messages and the fleet's own records, so a string compare orders them and no reader guesses a zone.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(timestamp: float) -> str:
    """Unix seconds -> ISO-8601 UTC with milliseconds, e.g. 2026-11-25T13:00:00.000Z."""
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
