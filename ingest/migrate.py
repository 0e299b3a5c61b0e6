"""Schema migrations: plain SQL files in ingest/migrations, named NNN_what.sql, applied in order, once each.

Each file runs in its own transaction together with its row in `schema_migrations`, so a failed migration leaves
nothing half-applied; an advisory lock lets several ingests start at once without racing.
"""

from __future__ import annotations

import re
from importlib import resources

import psycopg
from psycopg import errors

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


_EXTENSION = re.compile(r'permission denied to create extension "([^"]+)"')
_ROLE = re.compile(r"permission denied to create role")


class MissingRight(Exception):
    """The login role of the DSN may not do what a migration needs (PostGIS and roles are a superuser's to create);
    the message is one line: what was refused and the statement a superuser runs once so the next migrate passes."""


def _missing_right(conn: psycopg.Connection, name: str, exc: errors.InsufficientPrivilege) -> MissingRight:
    refused = str(exc).splitlines()[0]
    user, database = conn.info.user, conn.info.dbname
    extension = _EXTENSION.search(refused)
    if extension:
        statement = f'psql -d "{database}" -c "CREATE EXTENSION IF NOT EXISTS {extension.group(1)}"'
    elif _ROLE.search(refused):
        statement = 'psql -c "CREATE ROLE custom_reader NOLOGIN"'
    else:
        statement = f'psql -d "{database}" -c "GRANT CREATE ON SCHEMA public TO {user}"'
    return MissingRight(
        f"{name}: role {user!r} lacks a right ({refused}); as a superuser run once: {statement}; then migrate again"
    )


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply every migration not yet applied; returns the names applied now. Raises `MissingRight` (nothing applied
    by that migration) when the role may not do what it needs."""
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
            try:
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            except errors.InsufficientPrivilege as exc:
                raise _missing_right(conn, name, exc) from None
            done.append(name)
    return done


def pending(conn: psycopg.Connection) -> list[str]:
    have = applied(conn)
    return [name for version, name, _ in available() if version not in have]
