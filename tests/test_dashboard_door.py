"""The dashboard's door (ingest/door.py, ingest/users.py) with real parts: `custom-ingest serve` on the fixture fleet in
the real PostgreSQL, headless Debian Chromium through the login form, the app's own route table walked anonymously,
`custom-ingest user`, HTTPS from `serve` itself and through the README's nginx recipe (Debian's nginx)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time

import pytest
from starlette.routing import Mount, Route

from custom.ingest.cli import main as ingest_cli
from custom.ingest.config import load_config
from custom.ingest.door import OPEN_PATHS
from custom.ingest.serve import create_app, open_pool
from custom.ingest.users import add_user
from testing.broker import free_port
from testing.dashboard import FLEET, PASSWORD, USER, log_in, reader_dsn, write_fixture_fleet
from testing.secure_broker import make_ca, make_server_cert


@pytest.fixture
def fleet_dsn(pg_cluster, ingest_db):
    write_fixture_fleet(ingest_db, time.time())
    return reader_dsn(pg_cluster, ingest_db)


def test_login_in_chromium(fleet_dsn, make_dashboard, browser, tmp_path):
    server = make_dashboard(fleet_dsn)
    page = browser.page
    page.goto(server.url + "/")
    assert page.url == server.url + "/login", "the map was reachable without logging in"
    assert page.locator("#map").count() == 0 and page.locator("#login-form").count() == 1
    page.screenshot(path=str(tmp_path / "door-1-login-required.png"))

    page.fill("#user", USER)
    page.fill("#password", "not the password")
    with page.expect_navigation():
        page.click("#login")
    assert page.url == server.url + "/login"
    assert "Wrong user name or password" in page.locator("#login-error").inner_text()
    page.screenshot(path=str(tmp_path / "door-2-wrong-password.png"))

    log_in(page, server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    assert page.locator("path.sensor-marker").count() == len(FLEET)
    (cookie,) = page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict"), cookie
    assert time.time() + 11 * 3600 < cookie["expires"] <= time.time() + 12 * 3600 + 60, "expires after 12 h"
    with page.expect_download() as download:
        page.locator("#dl-sensors-geojson").click()
    parsed = json.loads(download.value.path().read_text())
    assert sorted(f["properties"]["sensor_id"] for f in parsed["features"]) == ["A", "B", "C"]
    page.screenshot(path=str(tmp_path / "door-3-logged-in-map.png"))

    with page.expect_navigation():
        page.click("#logout")
    assert page.url == server.url + "/login"
    page.screenshot(path=str(tmp_path / "door-4-logged-out.png"))
    page.goto(server.url + "/")
    assert page.url == server.url + "/login", "logout did not close the door"
    status, _, _ = server.request("GET", "/api/sensors", cookie=f"custom_session={cookie['value']}")
    assert status == 401, "the logged-out session's cookie still opens the API"
    refused = "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    assert browser.console_errors == [refused], "only the wrong password's page (a 401) is an error"
    print(f"\nscreenshots in {tmp_path}: " + ", ".join(sorted(p.name for p in tmp_path.glob("door-*.png"))))


def _concrete(path: str) -> str:
    """A route's path with its parameters filled with the fixture sensor A."""
    return path.replace("{sensor_id:str}", "A").replace("{sensor_id}", "A")


def test_every_route_is_closed_to_an_anonymous_request(fleet_dsn, make_dashboard, tmp_path):
    """Walks the app's own route table: a route added later is checked without anyone listing it here."""
    server = make_dashboard(fleet_dsn)
    pool = open_pool(fleet_dsn, size=1)
    try:
        app = create_app(load_config(None, {"dashboard.users_file": str(server.users_file)}), pool)
    finally:
        pool.close()
    checked = {"api": 0, "page": 0, "static": 0}
    for route in app.routes:
        if isinstance(route, Mount):
            path = route.path + "/app.js"
            assert server.get(path, anonymous=True)[0] == 401, path
            assert server.get(path)[0] == 200, path
            checked["static"] += 1
            continue
        assert isinstance(route, Route), route
        path = _concrete(route.path)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            status, headers, body = server.request(method, path)
            if route.path in OPEN_PATHS:
                assert status in (200, 401), (method, path, status)  # /login answers a wrong login with 401 too
                assert b"sensor" not in body.replace(b"sensor_id", b""), (path, body[:200])
                continue
            if path.startswith("/api/"):
                assert status == 401 and json.loads(body) == {"error": "log in first (/login)"}, (path, status)
                assert server.request(method, path, cookie=server.cookie)[0] == 200, path
                checked["api"] += 1
            elif method == "GET":
                assert status == 303 and headers.get("location") == "/login", (path, status, headers)
                checked["page"] += 1
            else:
                assert status == 401, (method, path, status)
    assert checked["api"] >= 6 and checked["page"] >= 1 and checked["static"] == 1, checked
    assert server.get("/healthz", anonymous=True)[:2] == (200, "application/json")


def test_failed_logins_are_logged_and_limited_per_address(fleet_dsn, make_dashboard):
    server = make_dashboard(fleet_dsn)
    for _ in range(5):
        assert server.request("POST", "/login", form={"user": USER, "password": "guess"})[0] == 401
    status, headers, _ = server.request("POST", "/login", form={"user": USER, "password": PASSWORD})
    assert status == 429 and int(headers["retry-after"]) > 200, "the right password is not tried while locked"
    assert server.request("POST", "/login", form={"user": "nobody", "password": "x" * 5000})[0] == 429
    log = server.log()
    assert log.count(f"failed login for {USER!r} from 127.0.0.1") == 5, log
    assert "login from 127.0.0.1 refused: too many failures" in log
    assert server.get("/api/sensors")[0] == 200, "the session opened before is not affected"


def test_user_command_and_sessions_of_a_removed_user(fleet_dsn, make_dashboard, tmp_path, capsys, monkeypatch):
    users = tmp_path / "users"
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115 - closed by pytest with the patch
    assert ingest_cli(["user", "--users-file", str(users), "add", "bob", "--password-stdin"]) == 65
    assert "at least 12 characters" in capsys.readouterr().err
    for name in ("bob", "carol@city.es"):
        monkeypatch.setattr(sys, "stdin", _lines(f"{name} has a long password"))
        assert ingest_cli(["user", "--users-file", str(users), "add", name, "--password-stdin"]) == 0
    assert ingest_cli(["user", "--users-file", str(users), "add", "a/b", "--password-stdin"]) == 65
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert all(line.split(":", 1)[1].startswith("$argon2id$") for line in users.read_text().splitlines()[1:])
    capsys.readouterr()
    assert ingest_cli(["user", "--users-file", str(users), "list"]) == 0
    assert capsys.readouterr().out.split() == ["bob", "carol@city.es"]

    add_user(users, USER, PASSWORD)  # the user make_dashboard logs in as
    shutil.copyfile(users, tmp_path / "dashboard-users")  # what make_dashboard's server reads
    server = make_dashboard(fleet_dsn)
    cookie = server.log_in("bob", "bob has a long password")
    assert cookie and server.request("GET", "/api/sensors", cookie=cookie)[0] == 200
    assert ingest_cli(["user", "--users-file", str(server.users_file), "remove", "bob"]) == 0
    assert server.request("GET", "/api/sensors", cookie=cookie)[0] == 401, "a removed user's session goes on"
    assert ingest_cli(["user", "--users-file", str(server.users_file), "remove", "bob"]) == 65


def _lines(text: str):
    import io

    return io.StringIO(text + "\n")


def test_serve_refuses_the_network_without_a_user(tmp_path, capsys):
    empty = tmp_path / "none"
    code = ingest_cli(["serve", "--dsn", "dbname=x", "--host", "0.0.0.0", "--users-file", str(empty)])
    err = capsys.readouterr().err.strip()
    assert code == 78 and err.count("\n") == 0, err
    assert "no user in" in err and "not loopback" in err and "custom-ingest user add" in err
    assert ingest_cli(["serve", "--dsn", "dbname=x", "--cert", str(empty)]) == 78
    assert "ingest.dashboard.tls_key: give both" in capsys.readouterr().err
    args = ["serve", "--dsn", "dbname=x", "--users-file", str(empty), "--cert", str(empty), "--key", str(empty)]
    assert ingest_cli(args) == 78
    assert "dashboard.tls_cert / dashboard.tls_key: cannot use them" in capsys.readouterr().err


def _certificate(folder):
    ca_key, ca_cert = make_ca(folder, "ca")
    key, cert = make_server_cert(folder, ca_key, ca_cert)
    return ca_cert, cert, key


def _secure_cookie(server, expect_secure: bool) -> str:
    status, headers, _ = server.request("POST", "/login", form={"user": USER, "password": PASSWORD})
    cookie = headers.get("set-cookie", "")
    assert status == 303 and "HttpOnly" in cookie and "SameSite=strict" in cookie, (status, headers)
    assert ("; Secure" in cookie) == expect_secure, cookie
    return cookie.split(";", 1)[0]


def test_serve_over_https_with_cert_and_key(fleet_dsn, make_dashboard, tmp_path):
    ca, cert, key = _certificate(tmp_path)
    server = make_dashboard(fleet_dsn, extra=("--cert", str(cert), "--key", str(key)), ca=ca)
    assert server.url.startswith("https://")
    assert server.get("/api/sensors", anonymous=True)[0] == 401
    cookie = _secure_cookie(server, expect_secure=True)
    assert server.request("GET", "/api/sensors", cookie=cookie)[0] == 200


@pytest.mark.skipif(not shutil.which("nginx"), reason="needs nginx (apt-get install nginx)")
def test_the_readme_nginx_recipe_in_front_of_serve(fleet_dsn, make_dashboard, tmp_path):
    from testing.proxy import nginx

    ca, cert, key = _certificate(tmp_path)
    server = make_dashboard(fleet_dsn)
    plain_cookie = _secure_cookie(server, expect_secure=False)  # straight to serve: plain HTTP, no Secure flag
    port = free_port()
    with nginx(tmp_path / "nginx", port, server.port, cert, key):
        server.base, server.ca = f"https://127.0.0.1:{port}", ca
        assert server.get("/api/sensors", anonymous=True)[0] == 401
        cookie = _secure_cookie(server, expect_secure=True)  # X-Forwarded-Proto: https reached the app
        status, headers, body = server.request("GET", "/api/sensors?format=csv", cookie=cookie)
        assert status == 200 and body.decode().count("\n") == 1 + len(FLEET), body[:200]
        assert headers.get("strict-transport-security") == "max-age=31536000"
        spoofed = {"X-Forwarded-For": "203.0.113.9"}  # a client naming another address to dodge the login limit
        assert server.request("POST", "/login", form={"user": USER, "password": "guess"}, headers=spoofed)[0] == 401
    assert "failed login for 'operator' from 127.0.0.1" in server.log(), "nginx's address, not the client's claim"
    assert "203.0.113.9" not in server.log()
    server.base, server.ca = server.url, None
    assert server.request("GET", "/api/sensors", cookie=plain_cookie)[0] == 200


def test_chromium_cannot_read_the_session_cookie(fleet_dsn, make_dashboard, browser):
    """HttpOnly as a browser enforces it: the page's own scripts do not see the session."""
    server = make_dashboard(fleet_dsn)
    log_in(browser.page, server.url)
    browser.page.wait_for_selector("body[data-ready='1']", timeout=20000)
    assert "custom_session" not in browser.page.evaluate("document.cookie")
