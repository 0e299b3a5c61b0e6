"""`python -m bench.fleet`: a simulated city fleet through the real broker into the real ingest and PostgreSQL.

Every simulated sensor publishes schema-valid events built by the daemon's own event code (`EventContext.build`)
from real score vectors: the YAMNet bundle's outputs on real clips from ../shared, one row per 10 s window, drawn at
random per event. The bench starts its own mosquitto and PostgreSQL/PostGIS (the test fixtures' classes), one or two
`custom-ingest run` processes on one shared subscription, and measures:

- live: N sensors at one event per 10 s / speedup -> committed events/s, end-to-end latency p50/p95 (publish ->
  row inserted; `events.ingested_at` is `clock_timestamp()` at insert, a few ms before the commit);
- drain: a backlog queued at the broker while the ingests are away, then drained -> the ingest's top rate;
- database size per sensor-day (events partitions + indexes + rollup, per 8,640 windows).

The table goes to stdout and to bench/FLEET.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
WINDOW_S = 10.0
MADRID = (40.4168, -3.7038)
PUBLISH_INFLIGHT = 1000
CLOCK_SYNCED = {"synced": True, "max_error_ms": 8.0}  # what a live sensor with NTP attaches to every event


@dataclass(frozen=True)
class ScoreTable:
    """Real per-window outputs of one bundle: what a simulated sensor 'hears'."""

    class_names: tuple[str, ...]
    thresholds: tuple[float, ...]
    bundle_id: str
    bundle_sha256: str
    rows: tuple[tuple[tuple[float, ...], dict[str, Any]], ...]  # (scores, event `level`) per real window

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @staticmethod
    def from_json(text: str) -> ScoreTable:
        d = json.loads(text)
        rows = tuple((tuple(s), lv) for s, lv in d["rows"])
        return ScoreTable(tuple(d["class_names"]), tuple(d["thresholds"]), d["bundle_id"], d["bundle_sha256"], rows)


def score_table(bundle: Path, clips: list[Path]) -> ScoreTable:
    """Run `custom-sensord classify --json` (the daemon's own code, TFLite runtime) over real clips."""
    from custom.daemon.model.bundle import load_bundle

    loaded = load_bundle(bundle)
    command = [sys.executable, "-m", "custom.daemon.cli", "classify", "--json", "--bundle", str(bundle)]
    out = subprocess.run([*command, *map(str, clips)], capture_output=True, text=True, timeout=600)
    if out.returncode not in (0, 66):  # 66: a clip classify refuses (too short, silent) is skipped, not fatal
        raise RuntimeError(f"custom-sensord classify failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    rows = []
    for line in out.stdout.splitlines():
        event = json.loads(line)
        scores = tuple(float(event["scores"][name]) for name in loaded.class_names)
        rows.append((scores, event["level"]))  # the daemon's WindowLevels.to_event() for that window
    if not rows:
        raise RuntimeError(f"custom-sensord classify produced no windows: {out.stderr.strip()[-500:]}")
    return ScoreTable(loaded.class_names, loaded.thresholds, loaded.bundle_id, loaded.sha256, tuple(rows))


def sensor_location(index: int) -> dict[str, Any]:
    """A deterministic spot within ~5 km of Puerta del Sol."""
    rng = random.Random(index)
    return {
        "lat": round(MADRID[0] + rng.uniform(-0.045, 0.045), 6),
        "lon": round(MADRID[1] + rng.uniform(-0.06, 0.06), 6),
        "name": f"sim-{index:05d}",
    }


def sensor_id(index: int) -> str:
    return f"sim-{index:05d}"


def publish_fleet(
    host: str,
    port: int,
    table: ScoreTable,
    sensors: range,
    windows: int,
    window_period_s: float,
    start_epoch: float,
    prefix: str = "custom",
    seed: int = 0,
) -> dict[str, float]:
    """Publish `windows` events for every sensor in `sensors`, window k due at k * window_period_s (real seconds);
    returns {event_id: publish wall time}. One QoS 1 paho client, waits until the broker acknowledged everything."""
    import paho.mqtt.client as mqtt

    from custom.daemon.publish.event import EventContext

    rng = random.Random(seed)
    contexts = {
        i: EventContext(
            sensor_id=sensor_id(i),
            location=sensor_location(i),
            class_names=table.class_names,
            thresholds=table.thresholds,
            bundle_id=table.bundle_id,
            bundle_sha256=table.bundle_sha256,
            level_unit=table.rows[0][1]["unit"],
        )
        for i in sensors
    }
    acked = threading.Semaphore(0)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(PUBLISH_INFLIGHT)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *a: acked.release()
    client.connect(host, port, keepalive=60)
    client.loop_start()
    sent: dict[str, float] = {}
    t0 = time.monotonic()
    count = len(sensors)
    for k in range(windows):
        for j, i in enumerate(sensors):
            due = t0 + (k + j / count) * window_period_s
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            scores, level = table.rows[rng.randrange(len(table.rows))]
            start = start_epoch + k * WINDOW_S
            event = contexts[i].build(scores, start, start + WINDOW_S, level, 5.0, clock=CLOCK_SYNCED).to_json()
            sent[event["event_id"]] = time.time()
            client.publish(f"{prefix}/{sensor_id(i)}/events", json.dumps(event), qos=1)
    for _ in range(len(sent)):
        if not acked.acquire(timeout=120):
            raise RuntimeError("broker stopped acknowledging publishes")
    client.disconnect()
    client.loop_stop()
    return sent


def _publisher_worker(args: tuple) -> dict[str, float]:
    host, port, table_json, first, last, windows, period, start_epoch, seed = args
    table = ScoreTable.from_json(table_json)
    return publish_fleet(host, port, table, range(first, last), windows, period, start_epoch, seed=seed)


def publish_parallel(
    host: str, port: int, table: ScoreTable, sensors: int, windows: int, period: float, start_epoch: float, procs: int
) -> dict[str, float]:
    """Split the sensors over `procs` publisher processes (one Python publisher tops out well below 2,000/s here)."""
    bounds = [round(sensors * p / procs) for p in range(procs + 1)]
    jobs = [
        (host, port, table.to_json(), bounds[p], bounds[p + 1], windows, period, start_epoch, p) for p in range(procs)
    ]
    sent: dict[str, float] = {}
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        for part in pool.map(_publisher_worker, jobs):
            sent.update(part)
    return sent


# ------------------------------------------------------------------------------------------------ the bench


def _fetch(dsn: str, sql: str, args: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def _wait_count(dsn: str, want: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    have = 0
    while time.monotonic() < deadline:
        have = _fetch(dsn, "SELECT count(*) FROM events")[0][0]
        if have >= want:
            break
        time.sleep(0.5)
    return have


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else float("nan"))


def _database_bytes(dsn: str) -> int:
    sql = (
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n ON n.oid = "
        "c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND (c.relname LIKE 'events%%' "
        "OR c.relname LIKE 'hourly%%' OR c.relname = 'sensors')"
    )
    return int(_fetch(dsn, sql)[0][0])


def run_scenario(
    ingests: int, sensors: int, minutes: float, speedup: float, backlog: int, table: ScoreTable, publishers: int
) -> dict[str, Any]:
    from custom.ingest.migrate import migrate
    from custom.ingest.store import connect
    from testing.broker import Broker, free_port
    from testing.ingest import IngestProcess
    from testing.postgres import PgCluster, _unprivileged_user, create_database

    top = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    run_as = _unprivileged_user()
    if run_as:
        import shutil

        shutil.chown(top, run_as, run_as)
    pg = PgCluster(top / "pg", free_port(), run_as, durable=True)
    pg.init()
    pg.start()
    (top / "broker").mkdir()
    broker = Broker(top / "broker", free_port(), extra_config="max_queued_messages 1000000")
    broker.start()
    procs: list[IngestProcess] = []
    try:
        dsn = create_database(pg, "fleet")
        with connect(dsn) as conn:
            migrate(conn)
        procs = [IngestProcess(top, dsn, broker.port, f"ingest-{i}") for i in range(ingests)]
        for p in procs:
            p.start()
        time.sleep(2.0)  # let them subscribe (a bench, not a test: a missed subscription shows as lost events)
        windows = max(1, round(minutes * 60 / WINDOW_S))
        period = WINDOW_S / speedup
        t_live = time.monotonic()
        start_epoch = time.time() - 3600
        sent = publish_parallel("127.0.0.1", broker.port, table, sensors, windows, period, start_epoch, publishers)
        have = _wait_count(dsn, len(sent), timeout=300)
        live_s = time.monotonic() - t_live
        rows = _fetch(dsn, "SELECT event_id::text, extract(epoch FROM ingested_at) FROM events")
        latency = [float(t) - sent[eid] for eid, t in rows if eid in sent]
        first_last = _fetch(dsn, "SELECT extract(epoch FROM min(ingested_at)), extract(epoch FROM max(ingested_at)) "
                                 "FROM events")[0]  # fmt: skip
        live_rate = len(rows) / max(1e-9, float(first_last[1]) - float(first_last[0]))
        bytes_live = _database_bytes(dsn)
        sensor_days = len(rows) * WINDOW_S / 86400.0
        result: dict[str, Any] = {
            "ingests": ingests,
            "sensors": sensors,
            "offered_per_s": sensors * speedup / WINDOW_S,
            "live_events": len(sent),
            "live_stored": have,
            "live_committed_per_s": live_rate,
            "live_seconds": live_s,
            "p50_s": _percentile(latency, 50),
            "p95_s": _percentile(latency, 95),
            "bytes_per_sensor_day": bytes_live / sensor_days if sensor_days else float("nan"),
        }
        if backlog:
            for p in procs:
                assert p.stop() == 0, p.log()
            before = have
            sent_b = publish_parallel(
                "127.0.0.1", broker.port, table, sensors, max(1, backlog // sensors), 0.0, start_epoch + 86400,
                publishers,
            )  # fmt: skip
            t0 = time.monotonic()
            for p in procs:
                p.start()
            total = _wait_count(dsn, before + len(sent_b), timeout=600)
            drain_s = time.monotonic() - t0
            # the rate between the first and last backlog commit: process start-up is not ingest throughput
            span = _fetch(
                dsn,
                "SELECT extract(epoch FROM max(ingested_at) - min(ingested_at)) FROM events WHERE window_start >= "
                "to_timestamp(%s)",
                (start_epoch + 86400,),
            )[0][0]
            result.update(
                backlog=len(sent_b), drained=total - before, drain_s=drain_s, drain_per_s=(total - before) / float(span)
            )
        dup = _fetch(dsn, "SELECT count(*) - count(DISTINCT event_id) FROM events")[0][0]
        result["duplicates"] = dup
        result["lost"] = len(sent) + result.get("backlog", 0) - _fetch(dsn, "SELECT count(*) FROM events")[0][0] + dup
        return result
    finally:
        for p in procs:
            if p.proc is not None and p.proc.poll() is None:
                p.proc.kill()
        broker.stop()
        pg.stop("immediate")
        import shutil

        shutil.rmtree(top, ignore_errors=True)


def _loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def render(results: list[dict[str, Any]], args: argparse.Namespace, load_before: str, load_after: str) -> str:
    lines = [
        "# Fleet ingest bench",
        "",
        f"`python -m bench.fleet --sensors {args.sensors} --minutes {args.minutes} --speedup {args.speedup} "
        f"--backlog {args.backlog}` on {platform.node()} ({os.cpu_count()} CPUs, shared with other developers; "
        f"load average before {load_before}, after {load_after}), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "Broker (mosquitto), PostgreSQL 15 + PostGIS (default durable settings: fsync and synchronous commit on), "
        "publishers and ingests all on this one machine.",
        "",
        "| ingests | offered ev/s | live committed ev/s | p50 latency s | p95 latency s | drain ev/s (backlog) "
        "| lost | duplicated | DB MB per sensor-day |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        drain = f"{r['drain_per_s']:.0f} ({r['backlog']})" if "drain_per_s" in r else "-"
        lines.append(
            f"| {r['ingests']} | {r['offered_per_s']:.0f} | {r['live_committed_per_s']:.0f} | {r['p50_s']:.3f} "
            f"| {r['p95_s']:.3f} | {drain} | {r['lost']} | {r['duplicates']} | {r['bytes_per_sensor_day'] / 1e6:.1f} |"
        )
    lines += [
        "",
        f"Live: {args.sensors} sensors at one event per 10 s, sped up {args.speedup:g}x; latency is publish (simulator "
        "wall clock) to `events.ingested_at` (`clock_timestamp()` at insert, a few ms before commit).",
        f"Drain: {args.backlog} events queued at the broker (persistent sessions) while the ingests were stopped, then "
        "drained; rate between the first and last commit. DB size: `events` partitions with their indexes (primary "
        "key, sensor/time, GIN on labels), `hourly_*` and `sensors`, divided by the sensor-days stored (8,640 "
        "windows each).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated minutes of fleet time")
    parser.add_argument("--speedup", type=float, default=10.0, help="simulated time runs this many times faster")
    parser.add_argument("--backlog", type=int, default=30000, help="events queued while the ingests are away")
    parser.add_argument("--ingests", default="1,2", help="comma-separated ingest process counts to run")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--bundle", type=Path, help="bundle for the score vectors (default: built in bench/.work)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "FLEET.md")
    args = parser.parse_args(argv)

    from . import build
    from .common import WORK_DIR

    cache = WORK_DIR / "fleet-scores-v2.json"  # v2: a window's whole `level` object (event schema 2), not just LAeq
    if cache.is_file():
        table = ScoreTable.from_json(cache.read_text())
    else:
        bundle = args.bundle or build.yamnet_bundle(WORK_DIR)
        table = score_table(bundle, build.clip_files(per_class=3))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(table.to_json())
    load_before = _loadavg()
    results = []
    for n in (int(x) for x in args.ingests.split(",")):
        result = run_scenario(n, args.sensors, args.minutes, args.speedup, args.backlog, table, args.publishers)
        print(json.dumps(result), flush=True)
        results.append(result)
    text = render(results, args, load_before, _loadavg())
    print(text)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
