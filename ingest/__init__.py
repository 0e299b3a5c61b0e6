"""The fleet side: every sensor's MQTT events into PostgreSQL/PostGIS, exactly once (see ingest/README.md)."""

from custom.wire.entry import guarded


def entry() -> int:
    """The `custom-ingest` console script. Its command module imports psycopg at the top, so it is imported here,
    lazily, where a sensor-only install can be told in one line that it needs the fleet extra."""

    def main() -> int:
        from .cli import main

        return main()

    return guarded("custom-ingest", "fleet", main)
