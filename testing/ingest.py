"""The real `custom-ingest run` as a subprocess (so tests can kill -9 it), a database reader for assertions, and
events and hourly summaries built the way the daemon builds them (its own `EventContext`, `LevelMeter`,
`HourlySummary`), so the ingest is tested against what sensors really send."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from custom.daemon.noise.levels import LevelMeter, WindowLevels
from custom.daemon.noise.summary import HourlySummary
from custom.daemon.publish.event import EventContext

from .process import LoggedProcess

TONE_RATE_HZ = 16000
TONE_HZ = 1000.0  # A-weighting is 0 dB at 1 kHz: the tone's LAeq is the level it was made at
CALIBRATION_DB = 100.0  # so levels read as dB(A) SPL, like a calibrated sensor's
WINDOW_S = 10.0


@lru_cache(maxsize=64)
def tone_levels(laeq_db: float, seconds: float = WINDOW_S) -> WindowLevels:
    """The daemon's LevelMeter on a steady 1 kHz sine made to read `laeq_db` dB(A) (AES17: a full-scale sine is
    0 dBFS); checked, so a test's expected figures are the ones the event carries."""
    t = np.arange(int(seconds * TONE_RATE_HZ)) / TONE_RATE_HZ
    amplitude = 10.0 ** ((laeq_db - CALIBRATION_DB) / 20.0)
    levels = LevelMeter(calibration_db=CALIBRATION_DB)(amplitude * np.sin(2 * np.pi * TONE_HZ * t), TONE_RATE_HZ)
    assert abs(levels.laeq - laeq_db) < 0.05, f"tone made for {laeq_db} dB(A) measures {levels.laeq}"
    return levels


def build_event(
    context: EventContext,
    scores: Sequence[float],
    start: float,
    laeq_db: float,
    clock: Mapping[str, Any] | None = None,
    processing_ms: float = 3.0,
    vetoed: np.ndarray | None = None,
) -> dict[str, Any]:
    """One window's event as the daemon publishes it: real scores, the LevelMeter's levels of a tone."""
    levels = tone_levels(laeq_db).to_event()
    return context.build(scores, start, start + WINDOW_S, levels, processing_ms, clock=clock, vetoed=vetoed).to_json()


def hour_in_parts(
    context: EventContext, restart_at: float, end_at: float, laeq_db: float, labels: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two summaries of an hour cut by a restart, from the daemon's HourlySummary: windows from the hour's start
    to `restart_at` then the partial one sent on shutdown; a new HourlySummary (a new process) counting windows from
    `restart_at` to `end_at`, then the rest of the hour once it is due. Both carry the hour boundary as period start."""
    hour = restart_at - restart_at % 3600
    parts = []
    for first, last in ((hour, restart_at), (restart_at, end_at)):
        summary = HourlySummary(context.sensor_id, context.location, context.class_names)
        start = first
        while start + WINDOW_S <= last:
            summary.add(start, start + WINDOW_S, tone_levels(laeq_db), labels, True)
            start += WINDOW_S
        if last < hour + 3600:
            parts.append(summary.close(last))
        else:
            (done,) = summary.due(hour + 3600 + summary.grace_s)
            parts.append(done)
    return parts[0], parts[1]


class IngestProcess(LoggedProcess):
    """One ingest with a fixed client id: restarting it resumes the same persistent MQTT session."""

    name = "ingest"

    def __init__(self, workdir: Path, dsn: str, broker_port: int, client_id: str, group: str = "ingest") -> None:
        super().__init__(workdir / f"{client_id}.log")
        self.workdir, self.dsn, self.broker_port = workdir, dsn, broker_port
        self.client_id, self.group = client_id, group

    def start(self, *extra: str, exit_after_commit: int | None = None) -> IngestProcess:
        """`exit_after_commit`: die right after that many commits, before their acks (testing.faults)."""
        entry = (
            ["custom.ingest.cli"]
            if exit_after_commit is None
            else ["testing.faults", "ingest", "--exit-after-commit", str(exit_after_commit)]
        )
        command = [
            sys.executable, "-m", *entry, "run", "--dsn", self.dsn, "--mqtt-host", "127.0.0.1",
            "--mqtt-port", str(self.broker_port), "--client-id", self.client_id, "--group", self.group, *extra,
        ]  # fmt: skip
        self._launch(command, dict(os.environ))
        return self

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        """Until this run's subscription is acknowledged by the broker (its SUBACK): a message published before that
        has no queue to wait in. Not the CONNACK: the SUBSCRIBE may still be unsent then (CI lost a fleet's first
        three events that way). The log spans every start, each of which says "consuming" once."""
        deadline = time.monotonic() + timeout
        while (text := self.log()).count("MQTT subscribed to") < max(1, text.count("consuming")):
            assert self.proc is not None and self.proc.poll() is None, text
            assert time.monotonic() < deadline, text
            time.sleep(0.05)


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
        ingest.reap()
