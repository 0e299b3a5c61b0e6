"""`custom-ingest serve` against a fixture fleet in the real PostgreSQL, logged in as a read-only role: the API and its
downloads, bad parameters, and the page in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from urllib.parse import quote

import psycopg
import pytest

from custom.ingest.cli import main as ingest_cli
from testing.broker import free_port
from testing.dashboard import FLEET, log_in, reader_dsn, write_fixture_fleet
from testing.postgres import create_database


@pytest.fixture
def fleet(pg_cluster, ingest_db):
    """(reader DSN, events per sensor) of a fixture fleet: A loud (sirens), B moderate, C silent for 15 minutes."""
    counts = write_fixture_fleet(ingest_db, time.time())
    return reader_dsn(pg_cluster, ingest_db), counts


def _json(server, path):
    status, kind, body = server.get(path)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def _csv(server, path):
    status, kind, body = server.get(path)
    assert status == 200 and kind.startswith("text/csv"), (path, status, kind)
    return list(csv.DictReader(io.StringIO(body.decode())))


def test_api_and_downloads(fleet, make_dashboard):
    dsn, counts = fleet
    server = make_dashboard(dsn)
    geojson = _json(server, "/api/sensors?format=geojson")
    props = {f["properties"]["sensor_id"]: f["properties"] for f in geojson["features"]}
    assert sorted(props) == ["A", "B", "C"]
    assert {s: p["silent"] for s, p in props.items()} == {"A": False, "B": False, "C": True}
    coords = {f["properties"]["sensor_id"]: f["geometry"]["coordinates"] for f in geojson["features"]}
    assert coords["A"] == [-3.7035, 40.4169]  # GeoJSON order: lon, lat
    rows = _csv(server, "/api/sensors?format=csv")
    assert [r["sensor_id"] for r in rows] == ["A", "B", "C"] and rows[2]["silent"] == "True"

    series = _csv(server, "/api/sensors/A/series?format=csv")
    assert len(series) == 180 + 23  # the last 30 minutes of windows + one window per hour in the last 24 h
    assert {r["top_class"] for r in series} == {"Siren", "Dog"}
    assert {(r["top_class"], r["vetoed"]) for r in series} == {("Siren", ""), ("Dog", "Vehicle horn")}
    assert all(72.0 - 0.1 <= float(r["laeq"]) <= 74.1 for r in series)

    lden = _json(server, "/api/sensors/A/lden?since=" + quote(_ago(3 * 86400 - 3600)))
    whole = [d for d in lden if d["hours"] == 24]
    assert whole, lden
    for day in whole:  # Lden from its own Ld, Le, Ln: the documented formula
        expected = 10 * math.log10(
            (12 * 10 ** (day["ld"] / 10) + 4 * 10 ** ((day["le"] + 5) / 10) + 8 * 10 ** ((day["ln"] + 10) / 10)) / 24
        )
        assert abs(day["lden"] - expected) < 0.11, day
        assert day["ln"] + 10 > day["lden"] > day["ld"]  # steady level: the night penalty dominates
    heat = _json(server, "/api/sensors/B/heatmap")
    assert {r["class"] for r in heat} == {"Dog"} and sum(r["events"] for r in heat) == 180 + 23
    (health,) = _json(server, "/api/sensors/A/health")
    assert health["synced_share"] == 1.0 and health["windows"] == 180 + 23 and health["bundle_id"] == "fixture-bundle"
    assert _json(server, "/api/alerts") == []


def _ago(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ("/api/sensors/A/series?since=yesterday", "since"),
        ("/api/sensors/A/series?until=2026-13-45T99:00:00Z", "until"),
        ("/api/sensors/A/series?since=2026-11-25T10:00:00Z&until=2026-11-25T09:00:00Z", "before"),
        ("/api/sensors/A/series?since=2026-01-01T00:00:00Z&until=2026-11-25T00:00:00Z", "at most"),
        ("/api/sensors/A/series?until=0001-01-01T00:00:00Z", "until"),
        ("/api/sensors/A/lden?format=xlsx", "format"),
        ("/api/sensors/A/heatmap?sensor=A", "unknown parameter"),
        ("/api/sensors?format=kml", "format"),
        ("/api/alerts?limit=-1", "limit"),
        ("/api/alerts?limit=1e9", "limit"),
        ("/api/alerts?since=%00", "since"),
        ("/api/sensors/A/series?since=2026-11-25T13:00:00%2B99:00", "since"),
    ],
)
def test_bad_parameters_are_400_with_a_clear_message(fleet, make_dashboard, path, names):
    server = make_dashboard(fleet[0])
    status, kind, body = server.get(path)
    assert status == 400 and kind == "application/json", (status, body)
    assert names in json.loads(body)["error"], body


def test_unknown_sensor_is_404_and_the_role_cannot_write(fleet, make_dashboard):
    dsn, _ = fleet
    server = make_dashboard(dsn)
    status, _, body = server.get("/api/sensors/" + quote("x'; DROP TABLE events; --", safe="") + "/series")
    assert status == 404 and "no sensor" in json.loads(body)["error"]
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM events")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == sum(fleet[1].values())


def test_page_in_chromium(fleet, make_dashboard, browser, tmp_path):
    server = make_dashboard(fleet[0])
    page = browser.page
    log_in(page, server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    assert page.locator("path.sensor-marker").count() == len(FLEET)
    labels = page.locator(".sensor-label").all_inner_texts()
    assert sorted(label.split()[0] for label in labels) == ["A", "B", "C"]
    assert any("silent" in label for label in labels if label.startswith("C"))
    assert page.locator(".leaflet-control-scale-line").inner_text().strip()  # a scale without any basemap
    page.screenshot(path=str(tmp_path / "map.png"))

    page.locator("path.sensor-A").click()
    page.wait_for_selector("#sensor-panel[data-sensor='A']", timeout=20000)
    assert page.locator("#sensor-panel").get_attribute("data-windows") == str(180 + 23)
    assert page.locator("#chart-levels canvas").count() >= 1
    assert page.locator("#chart-classes").get_attribute("data-classes") == "Dog,Siren"
    assert page.locator("#heatmap tr").count() == 1 + 2  # header + Dog + Siren
    assert page.locator("#lden tr").count() >= 3
    page.screenshot(path=str(tmp_path / "sensor-A.png"), full_page=True)

    with page.expect_download() as download:
        page.locator("#dl-sensors-geojson").click()
    parsed = json.loads(download.value.path().read_text())
    assert sorted(f["properties"]["sensor_id"] for f in parsed["features"]) == ["A", "B", "C"]
    with page.expect_download() as download:
        page.locator("#dl-series").click()
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text())))
    assert len(rows) == 180 + 23
    assert browser.console_errors == []


def test_serve_names_the_setting_when_it_cannot_start(pg_cluster, capsys):
    assert ingest_cli(["serve", "--dsn", "host=127.0.0.1 port=1 dbname=x connect_timeout=2"]) == 69
    assert "dashboard.dsn: cannot connect" in capsys.readouterr().err
    bare = create_database(pg_cluster, "not_migrated")
    assert ingest_cli(["serve", "--dsn", bare]) == 78
    assert "run `custom-ingest migrate`" in capsys.readouterr().err
    assert ingest_cli(["serve", "--dsn", bare, "--port", "70000"]) == 78
    assert "ingest.dashboard.port" in capsys.readouterr().err


def test_page_draws_without_reachable_tiles(fleet, make_dashboard, browser, tmp_path):
    """A basemap URL that cannot answer (a closed loopback port, like any tile server seen from an offline site): the
    tiles fail, the points, labels and scale are drawn all the same."""
    config = tmp_path / "ingest.yaml"
    closed = free_port()
    config.write_text(
        f"dashboard: {{tile_url: 'http://127.0.0.1:{closed}/{{z}}/{{x}}/{{y}}.png', tile_attribution: x}}\n"
    )
    page = browser.page
    log_in(page, make_dashboard(fleet[0], config).url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    assert page.locator("img.leaflet-tile").count() > 0, "the tile layer was not configured"
    assert page.locator("path.sensor-marker").count() == len(FLEET)
    assert page.locator(".sensor-label").count() == len(FLEET)
    assert page.locator(".leaflet-control-scale-line").inner_text().strip()
    page.screenshot(path=str(tmp_path / "no-tiles.png"))


def test_dashboard_bench_runs_at_a_tiny_size(tmp_path):
    """`python -m bench.dashboard` end to end at 3 sensors x 2 days (the real size, 1,000 x 30: bench/DASHBOARD.md)."""
    from bench.dashboard import main as bench

    out = tmp_path / "DASHBOARD.md"
    assert bench(["--sensors", "3", "--days", "2", "--full-days", "1", "--rounds", "3", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "rounds" not in line]
    names = [row.split(" | ")[0] for row in rows]
    assert names[0].startswith("| first view (/ + /api/settings") and names[1] == "| /api/sensors", names
    assert any("Chromium" in row for row in rows) and any("example rules" in row for row in rows)
