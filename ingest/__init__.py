"""The fleet side: every sensor's MQTT events into PostgreSQL/PostGIS, exactly once (see ingest/README.md)."""
