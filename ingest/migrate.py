"""Schema migrations: plain SQL files in ingest/migrations, named NNN_what.sql, applied in order, once each.

Each file runs in its own transaction together with its row in `schema_migrations`, so a failed migration leaves
nothing half-applied; an advisory lock lets several ingests start at once without racing.
"""

from __future__ import annotations

import re
from importlib import resources

import psycopg

MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
MIGRATE_LOCK = 7_215_000


def available() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration shipped in the package, in order."""
    folder = resources.files("custom.ingest").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def applied(conn: psycopg.Connection) -> set[int]:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    exists = row is not None and row[0]
    if not exists:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply every migration not yet applied; returns the names applied now."""
    done = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        have = applied(conn)
        for version, name, sql in available():
            if version in have:
                continue
            with conn.transaction():
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            done.append(name)
    return done


def pending(conn: psycopg.Connection) -> list[str]:
    have = applied(conn)
    return [name for version, name, _ in available() if version not in have]
