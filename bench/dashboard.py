"""`python -m bench.dashboard`: how fast `custom-ingest serve` answers its first view with a city-sized database.

It starts its own PostgreSQL/PostGIS (the test fixtures' class), bulk-loads N sensors x D days of 10 s window events
straight into the partitioned `events` table in SQL (generate_series: the ingest path would take days at this size;
bench/FLEET.md measures that path), builds the hourly rollup from them as the ingest would have, adds alert episodes,
and runs `custom-ingest serve` as a role in `custom_reader`. Then, over --rounds rounds of fresh HTTP connections:

- first view: GET /, /api/settings, /api/sensors and /api/alerts one after the other (everything the page asks for
  before it can draw; the static files are a few 10s of KB from the package), timed as one;
- each endpoint alone, and the panels a click opens (24 h series, 30-day heatmap and Lden, health) of a random sensor.

The table goes to stdout and to bench/DASHBOARD.md (or --out). Small runs: --sensors 20 --days 2 --rounds 10.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CLASSES = ("Siren", "Dog bark", "Car horn", "Engine idling", "Jackhammer", "Drilling", "Street music",
           "Children playing", "Gun shot", "Air conditioner")  # fmt: skip
FIRST_VIEW = ("/", "/api/settings", "/api/sensors", "/api/alerts")

# One day of windows for every sensor into its day partition: levels follow the time of day (quiet nights), 40 % of
# windows hear a class (its labels and a realistic 10-class scores object), the rest nothing.
_LOAD_DAY = """
INSERT INTO events (event_id, window_start, window_end, sensor_id, schema_version, top_class, top_score, labels,
                    scores, laeq, lafmax, lafmin, la10, la50, la90, level_unit, clock_synced, clock_max_error_ms,
                    bundle_id, processing_ms)
SELECT gen_random_uuid(), t, t + interval '10 s', s.id, 1, c.top, CASE WHEN c.top IS NULL THEN NULL ELSE 0.8 END,
       CASE WHEN c.top IS NULL THEN '{}'::text[] ELSE ARRAY[c.top] END, (%(scores)s::jsonb[])[c.pick],
       lv.laeq, lv.laeq + 6, lv.laeq - 9, lv.laeq + 3, lv.laeq - 1, lv.laeq - 6, 'dB(A)', true, 8.0, 'bench', 3.0
  FROM sensors AS s
 CROSS JOIN generate_series(%(day)s::timestamptz, %(day)s::timestamptz + interval '1 day' - interval '10 s',
                            make_interval(secs => %(step_s)s)) AS t
 CROSS JOIN LATERAL (SELECT (52 + 8 * sin(extract(epoch FROM t) / 86400 * 2 * pi() - 2) + 6 * random()
                             + (hashtext(s.id) %% 7))::real AS laeq) AS lv
 -- pick 1..10: that class on top; 11: nothing heard (classes[11] is NULL). `t` is referenced so random() is drawn
 -- per row, not once for the whole statement.
 CROSS JOIN LATERAL (SELECT pick, (%(classes)s::text[])[pick] AS top
                       FROM (SELECT CASE WHEN random() < 0.4 + 0 * extract(epoch FROM t)
                                         THEN 1 + floor(random() * 10)::int ELSE 11 END AS pick) AS r) AS c
 WHERE t <= %(until)s
"""

_ROLLUP_DAY = """
WITH day AS (SELECT sensor_id, date_trunc('hour', window_start) AS hour_start, top_class, labels, laeq
               FROM events WHERE window_start >= %(day)s AND window_start < %(day)s::timestamptz + interval '1 day'),
per_sensor AS (
    INSERT INTO hourly_sensor (sensor_id, hour_start, events, laeq_n, laeq_energy)
    SELECT sensor_id, hour_start, count(*) * %(scale)s, count(laeq) * %(scale)s,
           sum(power(10.0, laeq / 10.0)) * %(scale)s
      FROM day GROUP BY 1, 2)
INSERT INTO hourly_class (sensor_id, hour_start, class, events, top_events)
SELECT sensor_id, hour_start, top_class, count(*) * %(scale)s, count(*) * %(scale)s
  FROM day WHERE top_class IS NOT NULL GROUP BY 1, 2, 3
"""


def load(dsn: str, sensors: int, days: int, full_days: int, sparse_step_s: int, now: datetime) -> dict[str, float]:
    """Sensors, D day partitions of events (every 10 s window for the last `full_days`, one window per
    `sparse_step_s` before), the hourly rollup of all D days at full size (sparse days' counts and energy scaled up:
    the rollup is what the 30-day panels read), some alert episodes; returns timings and sizes."""
    import psycopg

    from bench.fleet import sensor_id, sensor_location
    from custom.ingest.store import Store, connect

    scores = [json.dumps({c: 0.8 if c == top else 0.02 for c in CLASSES}) for top in (*CLASSES, None)]
    started = time.monotonic()
    first = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    with connect(dsn) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sensors (id, location, name, first_seen, last_seen, bundle_id) "
                "VALUES (%s, ST_SetSRID(ST_MakePoint(%s, %s), 4326), %s, %s, %s, 'bench')",
                [
                    (sensor_id(i), loc["lon"], loc["lat"], loc["name"], first, now)
                    for i in range(sensors)
                    for loc in [sensor_location(i)]
                ],
            )
        conn.commit()
        store = Store(conn)
        day = first
        while day <= now:
            store.ensure_partitions([day.date().isoformat()])
            step = 10 if day + timedelta(days=1) > now - timedelta(days=full_days) else sparse_step_s
            conn.execute(_LOAD_DAY, {"day": day, "until": now - timedelta(seconds=10), "classes": list(CLASSES),
                                     "scores": scores, "step_s": step})  # fmt: skip
            conn.execute(_ROLLUP_DAY, {"day": day, "scale": step // 10})
            conn.commit()
            print(f"  loaded {day:%Y-%m-%d}, a window every {step} s ({time.monotonic() - started:.0f} s)", flush=True)
            day += timedelta(days=1)
        rng = random.Random(0)
        conn.execute(
            "INSERT INTO alerts (rule, kind, sensor_id, opened_at, closed_at, value, detail) "
            "SELECT 'night-noise', 'level', s, %s - make_interval(mins => m), "
            "       CASE WHEN m %% 3 = 0 THEN NULL ELSE %s - make_interval(mins => m - 20) END, 66, 'bench' "
            "  FROM unnest(%s::text[], %s::int[]) AS u(s, m) ON CONFLICT DO NOTHING",
            (now, now, [sensor_id(rng.randrange(sensors)) for _ in range(300)], list(range(30, 330))),
        )
        conn.commit()
    loaded_s = time.monotonic() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"load_s": loaded_s, "events": rows, "bytes": size}


def _get(url: str, cookie: str) -> int:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Cookie": cookie}), timeout=60) as reply:
        reply.read()
        return int(reply.status)


def _timed(urls: list[str], cookie: str) -> float:
    """Milliseconds for `urls` in turn, logged in with the session `cookie` (the door lets nothing through without)."""
    t = time.perf_counter()
    for url in urls:
        status = _get(url, cookie)
        if status != 200:
            raise RuntimeError(f"{url}: HTTP {status}")
    return (time.perf_counter() - t) * 1000.0


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(base: str, cookie: str, sensors: int, rounds: int, now: datetime) -> list[dict[str, Any]]:
    from bench.fleet import sensor_id

    rng = random.Random(1)
    iso = "%Y-%m-%dT%H:%M:%SZ"
    day = f"since={(now - timedelta(days=1)).strftime(iso)}&until={now.strftime(iso)}"
    month = f"since={(now - timedelta(days=30)).strftime(iso)}&until={now.strftime(iso)}"
    cases: dict[str, Any] = {"first view (" + " + ".join(FIRST_VIEW) + ")": lambda: [base + p for p in FIRST_VIEW]}
    for path in FIRST_VIEW[2:]:
        cases[path] = lambda path=path: [base + path]
    cases["/api/levels (yesterday's Lden/Ln of every sensor: colour by)"] = lambda: [base + "/api/levels"]
    cases["/api/over-limit (hours over a rule, every sensor, 30 days)"] = lambda: [f"{base}/api/over-limit?{month}"]
    for panel, span in (("series", day), ("heatmap", month), ("lden", month), ("health", day)):
        cases[f"/api/sensors/<random>/{panel}"] = lambda panel=panel, span=span: [
            f"{base}/api/sensors/{sensor_id(rng.randrange(sensors))}/{panel}?{span}"
        ]
    for urls in cases.values():  # warm-up: the first request of each kind opens pool connections, plans
        _timed(urls(), cookie)
    results = []
    for name, urls in cases.items():
        times = [_timed(urls(), cookie) for _ in range(rounds)]
        results.append({
            "what": name, "n": rounds, "p50": statistics.median(times), "p95": _p(times, 0.95), "max": max(times),
        })  # fmt: skip
    return results


def measure_alerts(dsn: str, sensors: int, rounds: int) -> dict[str, Any]:
    """The ingest's cost of alert rules per batch: the example config's level and class rules evaluated (and
    rolled back, so every round sees the same state) for a batch that touched every sensor."""
    from bench.fleet import sensor_id
    from custom.ingest.alerts import Alerts
    from custom.ingest.config import load_config
    from custom.ingest.records import EventRow
    from custom.ingest.store import connect

    config = load_config(Path(__file__).resolve().parents[1] / "ingest/ingest.example.yaml")
    alerts = Alerts(config.alerts, config.timezone, "custom")
    rng = random.Random(2)  # two windows per sensor, 40 % of them hearing one of the classes, as loaded
    batch = [
        EventRow("", "", sensor_id(i), "", (rng.choice(CLASSES),) if rng.random() < 0.4 else ())
        for i in range(sensors)
        for _ in range(2)
    ]
    times = []
    with connect(dsn) as conn:
        for _ in range(rounds + 1):
            t = time.perf_counter()
            with conn.transaction(force_rollback=True):
                alerts.on_commit(conn, batch)
            times.append((time.perf_counter() - t) * 1000.0)
    times = times[1:]
    what = f"ingest: {len(config.alerts.rules)} example rules, a batch of 2 windows from each of {sensors} sensors"
    return {"what": what, "n": rounds, "p50": statistics.median(times), "p95": _p(times, 0.95), "max": max(times)}


def measure_browser(base: str, rounds: int) -> dict[str, Any] | None:
    """Chromium (Debian's, headless) from navigation to the map drawn with every sensor (body[data-ready])."""
    from testing.dashboard import CHROMIUM, CHROMIUM_ARGS, log_in

    if not CHROMIUM.exists():
        return None
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        login = context.new_page()
        log_in(login, base)  # the session cookie is the context's: every page below opens logged in
        login.close()
        for _ in range(rounds + 1):
            page = context.new_page()
            t = time.perf_counter()
            page.goto(base + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=60000)
            times.append((time.perf_counter() - t) * 1000.0)
            page.close()
        browser.close()
    times = times[1:]
    return {"what": "Chromium: page opened to map drawn (every marker placed)", "n": rounds,
            "p50": statistics.median(times), "p95": _p(times, 0.95), "max": max(times)}  # fmt: skip


def render(results: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Dashboard first view (`python -m bench.dashboard`)",
        "",
        f"{args.sensors:,} sensors x {args.days} days in the hourly rollup (what the 30-day panels read) and in "
        f"{args.days + 1} day partitions of `events`: every 10 s window of the last {args.full_days} days (what the "
        f"map and the 24 h panels read), one window per {args.sparse_step_s} s before (a full month of windows is "
        f"~260 M rows, ~150 GB: more than this machine's disk). {info['events']:,} events bulk-loaded in "
        f"{info['load_s']:.0f} s, database {info['bytes'] / 2**30:.1f} GiB. `custom-ingest serve` as a "
        f"`custom_reader` role; {args.rounds} rounds per row, each request on a new HTTP connection, after one "
        "warm-up round.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average before/after "
        f"{info['load_before']} / {_loadavg()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "| what | rounds | p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['what']} | {r['n']} | {r['p50']:.0f} | {r['p95']:.0f} | {r['max']:.0f} |")
    lines += [
        "",
        "The page clusters markers above 60 sensors (Leaflet.markercluster): the Chromium row includes it. Colour by "
        "Lden/Ln and hours over a rule are asked for after the first view, so they are rows of their own.",
        "",
        "Target: first view p95 <= 300 ms with 1,000 sensors x 30 days.",
    ]
    return "\n".join(lines) + "\n"


def _loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--full-days", type=int, default=2, help="days (the latest) with every 10 s window stored")
    parser.add_argument("--sparse-step-s", type=int, default=600, help="one window per this many s on older days")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "DASHBOARD.md", help="'-' for stdout only")
    args = parser.parse_args(argv)

    from custom.ingest.migrate import migrate
    from custom.ingest.store import connect
    from testing.broker import free_port
    from testing.dashboard import DashboardProcess, reader_dsn
    from testing.postgres import PgCluster, _unprivileged_user, create_database

    top = Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    run_as = _unprivileged_user()
    if run_as:
        import shutil

        shutil.chown(top, run_as, run_as)
    pg = PgCluster(top / "pg", free_port(), run_as)
    pg.init()
    pg.start()
    server = None
    try:
        dsn = create_database(pg, "city")
        with connect(dsn) as conn:
            migrate(conn)
        load_before = _loadavg()
        now = datetime.now(UTC).replace(microsecond=0)
        now -= timedelta(seconds=now.second % 10)
        print(f"loading {args.sensors} sensors x {args.days} days ...", flush=True)
        loaded = load(dsn, args.sensors, args.days, args.full_days, args.sparse_step_s, now)
        info: dict[str, Any] = {**loaded, "load_before": load_before}
        example = Path(__file__).resolve().parents[1] / "ingest/ingest.example.yaml"  # its level rule: over-limit
        server = DashboardProcess(top, reader_dsn(pg, dsn), config=example).start()
        assert server.cookie is not None  # start() logged in as the test user
        results = measure(server.url, server.cookie, args.sensors, args.rounds, now)
        in_browser = measure_browser(server.url, max(5, args.rounds // 5))
        results += [in_browser] if in_browser else []
        results.append(measure_alerts(dsn, args.sensors, max(5, args.rounds // 5)))
    finally:
        if server is not None:
            server.stop()
        pg.stop("immediate")
        import shutil

        shutil.rmtree(top, ignore_errors=True)
    text = render(results, info, args)
    print(text)
    if str(args.out) != "-":
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
