"""A real PostgreSQL 15 + PostGIS for tests: a throwaway cluster in a temp dir on a free loopback port.

`pg_cluster` is session-scoped (initdb takes seconds); `pg_cluster.stop()` / `.start()` restart the SAME cluster on
the SAME port, which is what a database outage looks like to the ingest. `ingest_db` is function-scoped: a fresh
database per test with the ingest's migrations applied, so tests never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing.broker import free_port, port_open

PG_BIN = Path(os.environ.get("CUSTOM_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT_S = 30.0
_counter = itertools.count()


@dataclass
class PgCluster:
    datadir: Path
    port: int
    run_as: str | None  # initdb and postgres refuse root: run them as this system user
    host: str = "127.0.0.1"
    user: str = "postgres"
    durable: bool = False  # tests trade crash safety for speed (fsync off); the fleet bench measures a durable server

    def _cmd(self, *args: str) -> list[str]:
        command = [str(PG_BIN / args[0]), *args[1:]]
        return ["runuser", "-u", self.run_as, "--", *command] if self.run_as else command

    def init(self) -> None:
        subprocess.run(
            self._cmd("initdb", "-D", str(self.datadir), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync"),
            check=True,
            capture_output=True,
        )
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.datadir}'\n"
                "max_connections = 50\nshared_buffers = 128MB\nlog_min_messages = warning\n"
            )
            if not self.durable:
                conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def start(self) -> None:
        subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.datadir), "-l", str(self.datadir / "server.log"), "-w", "start"),
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.host, self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not listen on {self.port}:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop"), capture_output=True, timeout=60
        )

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.datadir / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root needs the 'postgres' system user (apt-get install postgresql)")
    return "postgres"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL not found in {PG_BIN} (apt-get install postgresql postgresql-15-postgis-3)")
    run_as = _unprivileged_user()
    top = Path(tempfile.mkdtemp(prefix="custom-pg-"))
    datadir = top / "data"
    if run_as:
        shutil.chown(top, run_as, run_as)
    cluster = PgCluster(datadir=datadir, port=free_port(), run_as=run_as)
    cluster.init()
    cluster.start()
    yield cluster
    cluster.stop("immediate")
    shutil.rmtree(top, ignore_errors=True)


def create_database(cluster: PgCluster, name: str) -> str:
    import psycopg

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.dsn(name)


@pytest.fixture
def ingest_db(pg_cluster: PgCluster) -> str:
    """DSN of a fresh database with the ingest's schema migrated."""
    from custom.ingest.migrate import migrate
    from custom.ingest.store import connect

    dsn = create_database(pg_cluster, f"ingest_{os.getpid()}_{next(_counter)}")
    with connect(dsn) as conn:
        migrate(conn)
    return dsn
