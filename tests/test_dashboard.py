"""`custom-ingest serve` against a fixture fleet in the real PostgreSQL, logged in as a read-only role: the API and its
downloads, bad parameters, and the page in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import calendar
import csv
import io
import json
import math
import time
from urllib.parse import parse_qs, quote, urlsplit

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


MALFORMED = (
    "/api/sensors/ab%00cd/health", "/api/sensors/%ff%fe/series", "/api/sensors/A%0A/lden", "/api/sensors/" + "A" * 70
    + "/heatmap", "/api/sensors/A/series?since=2026-02-30", "/api/sensors/A/series?since=2026-11-25T10:00:00%2B24:00",
    "/api/sensors/A/series?%00=1", "/api/sensors/A/series?format=%00", "/api/alerts?sensor_id=%00",
    "/api/alerts?limit=" + "9" * 5000, "/api/sensors/A/series?since=0001-01-01T00:30:00%2B01:00",
    "/static/%00", "/static/app.js%00", "/static/" + "a" * 5000, "/static/..%2f..%2fetc/passwd", "/" + "x" * 8000,
    "/api/sensors/A/lden?until=" + "2" * 5000,
)  # fmt: skip


def test_malformed_paths_and_values_are_4xx_never_5xx(fleet, make_dashboard):
    """The issue's NUL in a sensor id (psycopg refuses it: it must never reach SQL), control characters, overlong and
    impossible values, in the path and in the query, on the API and the static files."""
    server = make_dashboard(fleet[0])
    for path in MALFORMED:
        status, kind, body = server.get(path)
        assert 400 <= status < 500, (path[:80], status, body[:200])
        if path.startswith("/api/"):
            assert kind == "application/json" and "\n" not in json.loads(body)["error"], (path[:80], body[:200])


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


# Every marker and cluster drawn, with those whose box is not inside the map's, and how many sensors they stand for.
IN_VIEW_JS = """() => {
  const box = document.getElementById("map").getBoundingClientRect();
  const inside = (r) => r.left >= box.left - 1 && r.right <= box.right + 1 && r.top >= box.top - 1
                        && r.bottom <= box.bottom + 1;
  const drawn = [...document.querySelectorAll("path.sensor-marker, .sensor-cluster, .sensor-label")];
  const out = drawn.filter((el) => !inside(el.getBoundingClientRect()))
                   .map((el) => el.getAttribute("class") + " " + el.textContent);
  const clustered = [...document.querySelectorAll(".sensor-cluster")].reduce((n, el) => n + Number(el.textContent), 0);
  return { out, counted: clustered + document.querySelectorAll("path.sensor-marker").length };
}"""
SETTLED_JS = "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"


def _all_in_view(page, sensors, when):
    page.evaluate(SETTLED_JS)
    seen = page.evaluate(IN_VIEW_JS)
    assert seen["out"] == [] and seen["counted"] == sensors, (when, seen)


def _open_panel(page, sensor_id):
    page.evaluate("(id) => openSensor(id)", sensor_id)  # as a click on its marker (or its cluster, zoomed in) does
    page.wait_for_selector(f"#sensor-panel[data-sensor='{sensor_id}']", timeout=20000)
    return page.locator("#map").bounding_box()["width"]


def test_every_sensor_stays_in_view_when_panels_open_close_and_the_window_resizes(fleet, make_dashboard, browser):
    """The issue's vanishing sensor: opening a panel halves the map. After every panel opens, after it closes and
    after the window narrows, each sensor's point and its label lie inside the map's visible box."""
    server = make_dashboard(fleet[0])
    page = browser.page
    log_in(page, server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    _all_in_view(page, len(FLEET), "first view")
    for sensor in FLEET:
        page.locator(f"path.sensor-{sensor.sensor_id}").click()  # a real click: it must be visible to be clicked
        page.wait_for_selector(f"#sensor-panel[data-sensor='{sensor.sensor_id}']", timeout=20000)
        _all_in_view(page, len(FLEET), f"panel {sensor.sensor_id} open")
    page.locator("#close-panel").click()
    _all_in_view(page, len(FLEET), "panel closed")
    for width in (1024, 1920, 1366):
        page.set_viewport_size({"width": width, "height": 900})
        _open_panel(page, "C")
        _all_in_view(page, len(FLEET), f"{width} px, panel open")
    assert browser.console_errors == []


def test_a_city_of_sensors_clusters_and_stays_in_view(pg_cluster, ingest_db, make_dashboard, browser):
    """150 sensors over the city: markers cluster (the vendored Leaflet.markercluster), labels only on hover, and
    after each panel opens every sensor is drawn inside the map, alone or counted in a cluster."""
    from testing.dashboard import write_crowd

    now = time.time()
    write_fixture_fleet(ingest_db, now)
    crowd = write_crowd(ingest_db, 150, now)
    total = len(FLEET) + len(crowd)
    server = make_dashboard(reader_dsn(pg_cluster, ingest_db))
    page = browser.page
    log_in(page, server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    assert page.locator(".sensor-cluster").count() > 0
    assert page.locator(".sensor-label").count() == 0  # no permanent labels at this size
    _all_in_view(page, total, "first view")
    wide = page.locator("#map").bounding_box()["width"]
    for sensor_id in ("A", crowd[0].sensor_id, crowd[-1].sensor_id):
        assert _open_panel(page, sensor_id) < 0.7 * wide  # side by side at 1280 px: the map shrank
        _all_in_view(page, total, f"panel {sensor_id} open")
    assert browser.console_errors == []


# Madrid's clocks went forward at 2026-03-29 01:00 UTC: a window an hour before is 01:00 CET, one at it 03:00 CEST.
DST_WINDOWS = (
    ("2026-03-29T00:00:00Z", "2026-03-29 01:00", "CET"),
    ("2026-03-29T01:00:00Z", "2026-03-29 03:00", "CEST"),
)


def test_one_clock_on_the_page_across_a_dst_change(pg_cluster, ingest_db, make_dashboard, browser):
    """Two fixture windows either side of the spring DST change, and an alert opened at each: the chart's tooltip, the
    class timeline, the heatmap and the alert table all show the same Europe/Madrid 24-hour time, zone named."""
    from datetime import datetime

    from custom.ingest.records import Judge
    from custom.ingest.store import Store, connect
    from testing.dashboard import FixtureSensor, fixture_event

    sensor = FixtureSensor("D", 40.4150, -3.7000, "Dog", 61.0, 0.0)
    judge = Judge()
    starts = [datetime.fromisoformat(utc).timestamp() for utc, _, _ in DST_WINDOWS]
    rows = [judge.judge("custom/D/events", fixture_event(sensor, start, 61.0)) for start in starts]
    with connect(ingest_db) as conn:
        Store(conn).write(rows, [], [])
        for utc, _, _ in DST_WINDOWS:
            conn.execute(
                "INSERT INTO alerts (rule, kind, sensor_id, opened_at, closed_at, value, detail) "
                "VALUES ('night-noise', 'level', 'D', %s, %s::timestamptz + interval '10 minutes', 61, 'fixture')",
                (utc, utc),
            )
        conn.commit()
    server = make_dashboard(reader_dsn(pg_cluster, ingest_db))
    page = browser.page
    log_in(page, server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    assert "Europe/Madrid (CET), 24-hour" in page.locator("#clock").inner_text()  # December here: CET
    page.locator("#range").select_option("dates")
    page.fill("#range-from", "2026-03-28")
    page.fill("#range-to", "2026-03-29")
    page.locator("#range-form button[type=submit]").click()
    page.wait_for_selector("#range[data-applied^='dates:']")
    page.evaluate("() => openSensor('D')")
    page.wait_for_selector("#sensor-panel[data-sensor='D'][data-windows='2']", timeout=20000)
    page.wait_for_function("() => document.getElementById('alerts').dataset.count === '2'")

    alert_rows = page.locator("#alerts tr").all_inner_texts()
    heat = {
        cell.get_attribute("data-hour"): int(cell.get_attribute("data-events"))
        for cell in page.locator("#heatmap tr:has(th:text-is('Dog')) td").all()
    }
    assert {hour for hour, n in heat.items() if n} == {"01", "03"}, heat
    for (utc, local, zone), start in zip(DST_WINDOWS, starts, strict=True):
        shown = f"{local}:00 {zone}"
        tooltip = page.evaluate(
            """(t) => { const u = window.dashboard.plot; u.setCursor({ left: u.valToPos(t, "x"), top: 10 });
                        return document.querySelector(".u-legend .u-series:first-child .u-value").textContent; }""",
            start,
        )
        assert tooltip == shown, (utc, tooltip)
        timeline = page.evaluate(
            """(ms) => { const c = document.getElementById("chart-classes"), box = c.getBoundingClientRect();
                         const s = window.dashboard.timeline;
                         const px = 110 + ((ms - s.t0) / (s.t1 - s.t0)) * (c.width - 120) + 1;
                         c.dispatchEvent(new MouseEvent("mousemove", { clientX: box.left + px * box.width / c.width,
                                                                       clientY: box.top + 5 }));
                         return document.getElementById("timeline-at").textContent; }""",
            start * 1000,
        )
        assert timeline.startswith(shown), (utc, timeline)
        assert any(f"{local} {zone}" in row for row in alert_rows), (utc, alert_rows)
    assert browser.console_errors == []


FITS_JS = """() => {
  const heads = [...document.querySelectorAll("#heatmap tr:first-child th")].slice(1);
  const boxes = heads.map((th) => th.getBoundingClientRect());
  return {
    page: document.documentElement.scrollWidth, window: window.innerWidth,
    header: heads.map((th) => th.textContent).join(" "),
    clipped: heads.filter((th) => th.scrollWidth > th.clientWidth).map((th) => th.textContent),
    touching: boxes.slice(1).filter((b, i) => b.left < boxes[i].right - 0.5).length,
    narrowest: Math.min(...boxes.map((b) => b.width)),
  };
}"""


@pytest.mark.parametrize("width", [1024, 1366, 1920])
def test_the_page_fits_the_window_with_a_panel_open(fleet, make_dashboard, browser, width, tmp_path):
    """No horizontal scrollbar at common screen widths with a sensor's panel open (the issue's page was 1415 px in a
    1400 px window), and a heatmap header whose 24 hours each fit their own cell."""
    import os
    import shutil

    page = browser.page
    page.set_viewport_size({"width": width, "height": 1000})
    log_in(page, make_dashboard(fleet[0]).url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    page.locator("path.sensor-A").click()
    page.wait_for_selector("#sensor-panel[data-sensor='A']", timeout=20000)
    page.evaluate(SETTLED_JS)
    fits = page.evaluate(FITS_JS)
    assert fits["page"] <= fits["window"] == width, fits
    assert fits["header"] == " ".join(f"{h:02d}" for h in range(24)), fits
    assert fits["clipped"] == [] and fits["touching"] == 0 and fits["narrowest"] >= 16, fits
    shot = tmp_path / f"dashboard-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("CUSTOM_SCREENSHOTS"):  # regenerate the README's pictures: ingest/screenshots
        shutil.copy(shot, os.environ["CUSTOM_SCREENSHOTS"])
    assert browser.console_errors == []


MADRID = (-3.75, 40.38, -3.65, 40.45)  # west, south, east, north: around the fixture fleet


def test_basemap_from_an_mbtiles_file_without_the_internet(fleet, make_dashboard, browser, tmp_path):
    """The operator's MBTiles file (made here, a few hundred solid tiles over central Madrid): the page draws its
    tiles, served by the dashboard behind the login, and asks nothing of any other address."""
    from testing.dashboard import make_mbtiles

    tiles = make_mbtiles(tmp_path / "madrid.mbtiles", MADRID, range(10, 17))
    server = make_dashboard(fleet[0], extra=["--basemap", str(tmp_path / "madrid.mbtiles")])
    (z, x, y), png = next(iter(sorted(tiles.items())))
    assert server.get(f"/api/tiles/{z}/{x}/{y}") == (200, "image/png", png)
    assert server.get(f"/api/tiles/{z}/{x}/{y}", anonymous=True)[0] == 401
    for bad in ("9/0/0", "99/1/1", "10/-1/3", "10/%00/1", f"{z}/{x}/{1 << z}", "1/2/" + "9" * 5000):
        status, kind, _ = server.get(f"/api/tiles/{bad}")
        assert status == 404 and kind == "application/json", (bad, status)
    requests: list[str] = []
    page = browser.page
    page.on("request", lambda request: requests.append(request.url))
    log_in(page, server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    page.wait_for_function("() => document.querySelectorAll('img.leaflet-tile-loaded').length > 0", timeout=10000)
    shown = page.evaluate("() => [...document.querySelectorAll('img.leaflet-tile-loaded')].map((i) => i.src)")
    assert all("/api/tiles/" in src for src in shown), shown
    assert "test tiles" in page.locator(".leaflet-control-attribution").inner_text()
    assert [url for url in requests if not url.startswith(server.url)] == []
    assert page.locator("path.sensor-marker").count() == len(FLEET)
    assert browser.console_errors == []


def test_no_basemap_draws_the_outline_and_a_scale(fleet, make_dashboard, browser, tmp_path):
    """Neither tiles nor a tile server: the operator's GeoJSON outline (here a district and a street) and the scale."""
    outline = tmp_path / "districts.geojson"
    ring = [[-3.72, 40.40], [-3.68, 40.40], [-3.68, 40.43], [-3.72, 40.43], [-3.72, 40.40]]
    street = [[-3.71, 40.415], [-3.69, 40.418]]
    outline.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "Centro"}, "geometry": {"type": "Polygon", "coordinates": [ring]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "LineString", "coordinates": street}},
    ]}))  # fmt: skip
    server = make_dashboard(fleet[0], extra=["--outline", str(outline)])
    page = browser.page
    log_in(page, server.url)
    page.wait_for_selector("#map[data-outline='1']", timeout=20000)
    assert page.locator("path.basemap-outline").count() == 2
    assert page.locator("img.leaflet-tile").count() == 0
    assert page.locator(".leaflet-control-scale-line").inner_text().strip()
    assert server.get("/api/outline", anonymous=True)[0] == 401
    assert browser.console_errors == []


def test_serve_refuses_a_basemap_it_cannot_use(fleet, tmp_path, capsys):
    not_tiles = tmp_path / "city.mbtiles"
    not_tiles.write_text("not sqlite")
    outline = tmp_path / "districts.geojson"
    outline.write_text("[1, 2]")
    users = tmp_path / "users"
    from custom.ingest.users import add_user

    add_user(users, "operator", "correct horse battery staple")
    common = ["serve", "--dsn", fleet[0], "--port", str(free_port()), "--users-file", str(users)]
    for extra, key in (
        (["--basemap", str(not_tiles)], "ingest.dashboard.basemap_mbtiles"),
        (["--outline", str(outline)], "ingest.dashboard.outline_geojson"),
        (["--basemap", str(tmp_path / "absent.mbtiles")], "ingest.dashboard.basemap_mbtiles"),
        (["--basemap", str(not_tiles), "--tile-url", "http://127.0.0.1:1/{z}/{x}/{y}.png"], "not both"),
    ):
        assert ingest_cli(common + extra) == 78, extra
        err = capsys.readouterr().err.strip()
        assert key in err and err.count("\n") == 0, err


def test_what_the_officer_came_for_range_indicators_and_hours_over(fleet, make_dashboard, browser, tmp_path):
    """A range choice the panels and downloads follow, the map coloured by yesterday's Lden or Ln (EU END
    indicators), and per sensor the hours over a level rule in the range: A (72-74 dB) is over 60 dB every hour it
    was measured, B (58-60) and C (50-52) never."""
    config = tmp_path / "ingest.yaml"
    config.write_text("alerts: {rules: [{name: over-60, laeq_above: 60, minutes: 5}]}\n")
    server = make_dashboard(fleet[0], config)
    over = {r["sensor_id"]: r for r in _json(server, "/api/over-limit?rule=over-60")}
    assert over["A"]["hours_over"] == over["A"]["hours_measured"] >= 24, over
    assert over["B"]["hours_over"] == over["C"]["hours_over"] == 0 and over["B"]["hours_measured"] >= 24, over
    (row,) = _csv(server, "/api/over-limit?format=csv&sensor_id=A")
    assert row == {k: str(v) for k, v in over["A"].items()}, row
    levels = {r["sensor_id"]: r for r in _json(server, "/api/levels")}
    assert levels["A"]["lden"] > levels["B"]["lden"] > levels["C"]["lden"], levels
    assert levels["A"]["ln"] + 10 > levels["A"]["lden"] > levels["A"]["ln"], levels  # a steady level: Lden ~ Ln + 6
    for bad, names in (("/api/over-limit?rule=nope", "rule"), ("/api/levels?day=2026-02-30", "day")):
        status, _, body = server.get(bad)
        assert status == 400 and names in json.loads(body)["error"], (bad, body)

    page = browser.page
    log_in(page, server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    page.wait_for_selector("#map-controls[data-shown^='laeq:over-60']", timeout=20000)
    label_a = page.locator(".sensor-label", has_text="A LAeq").inner_text()
    assert f"{over['A']['hours_over']} h over over-60" in label_a, label_a
    page.locator("#colour-by").select_option("lden_yesterday")
    page.wait_for_selector("#map-controls[data-shown^='lden_yesterday:']", timeout=20000)
    assert "Lden >= 75 dB(A)" in page.locator("#legend").inner_text()
    fills = {s.sensor_id: page.locator(f"path.sensor-{s.sensor_id}").get_attribute("fill") for s in FLEET}
    bands = {75: "#d7191c", 65: "#fd8d3c", 55: "#fecc5c", -1: "#1a9641"}
    for sensor_id, fill in fills.items():
        expected = bands[max(low for low in bands if levels[sensor_id]["lden"] >= low)]
        assert fill == expected, (sensor_id, fill, levels[sensor_id])
    assert f"Lden {levels['C']['lden']:.1f} dB" in page.locator(".sensor-label", has_text="C Lden").inner_text()

    page.locator("path.sensor-A").click()
    page.wait_for_selector("#sensor-panel[data-sensor='A']", timeout=20000)
    assert (
        f"{over['A']['hours_over']} of {over['A']['hours_measured']} measured" in page.locator("#health").inner_text()
    )
    page.locator("#range").select_option("7d")
    page.wait_for_selector("#map-controls[data-shown$=':7d::']", timeout=20000)
    page.wait_for_function("() => document.getElementById('sensor-panel').dataset.windows === String(180 + 72)")
    href = page.locator("#dl-series").get_attribute("href")  # the download is what the panel shows: 7 days
    since = parse_qs(urlsplit(href).query)["since"][0]
    assert abs(time.time() - 7 * 86400 - calendar.timegm(time.strptime(since, "%Y-%m-%dT%H:%M:%SZ"))) < 120, href
    assert browser.console_errors == []
