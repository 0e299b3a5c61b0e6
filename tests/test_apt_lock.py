"""Every apt-get the project runs waits for the dpkg lock instead of failing at once.

On a fresh Raspberry Pi OS, unattended-upgrades often holds the lock at first boot, and `tests/run.sh` once failed
for the same reason when another apt process ran. The scan finds every apt-get command line in the repository's
scripts; the lock test holds the real dpkg frontend lock (as apt does, with fcntl) and shows that the option our
scripts pass makes apt wait for it, while apt without it gives up at once.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WAIT = "-o DPkg::Lock::Timeout="
# apt-get as a command: at a line start, after a pipe/&&/; or an env assignment; not inside a message string
COMMAND = re.compile(r"(^|[;&|]\s*|\w+=\S+\s+)apt-get\s+(?!.*[\"'].*apt-get)")
LOCK = Path("/var/lib/dpkg/lock-frontend")


def _apt_lines() -> list[tuple[str, int, str]]:
    files = subprocess.run(["git", "ls-files", "*.sh", ".ci/*"], cwd=ROOT, capture_output=True, text=True, check=True)
    found = []
    for name in files.stdout.split():
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if COMMAND.search(code.strip()):
                found.append((name, number, line.strip()))
    return found


def test_every_apt_get_in_the_scripts_waits_for_the_lock() -> None:
    lines = _apt_lines()
    assert {name for name, _, _ in lines} >= {"tests/run.sh", "deploy/install.sh", "deploy/quickstart.sh"}
    missing = [f"{name}:{number}: {line}" for name, number, line in lines if WAIT not in line]
    assert not missing, "apt-get without a lock timeout:\n" + "\n".join(missing)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("apt-get"), reason="needs root and apt-get")
def test_the_lock_option_makes_apt_wait_for_a_held_dpkg_lock() -> None:
    """apt-get check takes the dpkg frontend lock: held by us, apt without the option fails, with it apt waits."""
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # apt uses fcntl (POSIX) locks on this file
        quick = subprocess.run(["apt-get", "check"], capture_output=True, text=True, timeout=60)
        assert quick.returncode != 0 and "lock" in quick.stderr.lower(), quick.stderr
        release = threading.Timer(3.0, fcntl.lockf, (fd, fcntl.LOCK_UN))
        release.start()
        waited = subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=60", "check"], capture_output=True, text=True, timeout=90
        )
        release.join()
        assert waited.returncode == 0, waited.stderr
        assert "waiting for cache lock" in (waited.stderr + waited.stdout).lower()
    finally:
        os.close(fd)
