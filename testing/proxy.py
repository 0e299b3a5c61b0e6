"""The reverse-proxy recipe of ingest/README.md (the ```nginx block) run by Debian's nginx on loopback, for tests: the
recipe's text with only its listen address, certificate paths and upstream port swapped, inside a minimal main
config that keeps every file in the test's folder."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .broker import port_open
from .shared import ROOT

README = ROOT / "ingest" / "README.md"


def recipe() -> str:
    """The one ```nginx block of ingest/README.md."""
    (block,) = re.findall(r"```nginx\n(.*?)```", README.read_text(), re.S)
    return block


def site_config(port: int, upstream_port: int, cert: Path, key: Path) -> str:
    """The recipe with each swapped line checked to be there exactly once (a recipe that drifts fails here)."""
    text = recipe()
    swaps = {
        r"listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        r"ssl_certificate .*;": f"ssl_certificate {cert};",
        r"ssl_certificate_key .*;": f"ssl_certificate_key {key};",
        r"proxy_pass http://127\.0\.0\.1:8080;": f"proxy_pass http://127.0.0.1:{upstream_port};",
    }
    for pattern, line in swaps.items():
        text, n = re.subn(rf"(?m)^(\s*){pattern}$", lambda m, line=line: m.group(1) + line, text)
        assert n == 1, f"the recipe must have exactly one line matching {pattern!r}"
    # the plain-HTTP redirect server: not opened in tests (port 80 is not ours)
    text, n = re.subn(r"(?s)\nserver \{\s*listen 80;.*?\n\}\n?", "\n", text)
    assert n == 1, "the recipe should redirect plain HTTP to HTTPS"
    return text


@contextmanager
def nginx(folder: Path, port: int, upstream_port: int, cert: Path, key: Path) -> Iterator[subprocess.Popen[bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.conf").write_text(site_config(port, upstream_port, cert, key))
    temp = " ".join(
        f"{kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (folder / "nginx.conf").write_text(
        f"daemon off; user root; worker_processes 1; pid {folder / 'nginx.pid'}; error_log {folder / 'error.log'};\n"
        f"events {{}}\nhttp {{ access_log {folder / 'access.log'}; {temp} include {folder / 'site.conf'}; }}\n"
    )
    process = subprocess.Popen(["nginx", "-c", str(folder / "nginx.conf")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait(10)
                raise RuntimeError(f"nginx did not start: {process.stderr.read().decode() if process.stderr else ''}")
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(10)
