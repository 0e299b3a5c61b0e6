"""The real `custom-ingest run` as a subprocess (so tests can kill -9 it), and a database reader for assertions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


class IngestProcess:
    """One ingest with a fixed client id: restarting it resumes the same persistent MQTT session."""

    def __init__(self, workdir: Path, dsn: str, broker_port: int, client_id: str, group: str = "ingest") -> None:
        self.workdir, self.dsn, self.broker_port = workdir, dsn, broker_port
        self.client_id, self.group = client_id, group
        self.log_path = workdir / f"{client_id}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, *extra: str, env: dict[str, str] | None = None) -> IngestProcess:
        command = [
            sys.executable, "-m", "custom.ingest.cli", "run", "--dsn", self.dsn, "--mqtt-host", "127.0.0.1",
            "--mqtt-port", str(self.broker_port), "--client-id", self.client_id, "--group", self.group, *extra,
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye, no last commit, no last acknowledgement."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"ingest did not stop within {timeout} s; log:\n{self.log()}") from None
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_rows(dsn: str, sql: str, predicate: Callable[[int], bool], timeout: float) -> int:
    """Poll `sql` (one integer) until predicate(value) holds or timeout; returns the last value seen."""
    import psycopg

    deadline = time.monotonic() + timeout
    value = -1
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                value = conn.execute(sql).fetchone()[0]
        except psycopg.OperationalError:
            pass
        if predicate(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture
def make_ingest(tmp_path: Path) -> Iterator[Callable[..., IngestProcess]]:
    made: list[IngestProcess] = []

    def make(dsn: str, broker_port: int, client_id: str = "ingest-a", group: str = "ingest") -> IngestProcess:
        ingest = IngestProcess(tmp_path, dsn, broker_port, client_id, group)
        made.append(ingest)
        return ingest

    yield make
    for ingest in made:
        if ingest.proc is not None and ingest.proc.poll() is None:
            ingest.proc.kill()
            ingest.proc.wait(5)
