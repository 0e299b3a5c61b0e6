"""systemd integration: sd_notify messages and logging to journald, both harmless when not under systemd.

systemd-python (the `systemd` extra) is used when installed; without it a tiny datagram send to $NOTIFY_SOCKET
does the same, so a developer's venv and the tests behave like the Pi. systemd-python has no watchdog_enabled(),
so WATCHDOG_USEC/WATCHDOG_PID are read here.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable

log = logging.getLogger("custom.daemon.notify")


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd when $NOTIFY_SOCKET is set; otherwise does nothing."""

    def __init__(self) -> None:
        self.socket_path = os.environ.get("NOTIFY_SOCKET")
        self.watchdog_interval_s = _watchdog_interval_s()
        self._send = self._pick_sender() if self.socket_path else None

    def _pick_sender(self) -> Callable[[str], bool]:
        try:
            from systemd import daemon as sd_daemon

            return lambda text: sd_daemon.notify(text)
        except ImportError:
            return self._send_datagram

    def _send_datagram(self, text: str) -> bool:
        assert self.socket_path is not None
        address = self.socket_path
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(text.encode())
        return True

    def notify(self, text: str) -> None:
        if self._send is None:
            return
        try:
            self._send(text)
        except OSError as exc:  # systemd gone or socket removed: never worth crashing the sensor for
            log.debug("sd_notify(%s) failed: %s", text, exc)

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        self.notify("RELOADING=1")


def _watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd set for this process (None if no watchdog), as sd_watchdog_enabled does."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(0.1, int(usec) / 2e6)
    except ValueError:
        return None


def setup_logging(level: str) -> None:
    """journald when systemd runs us (structured fields, priorities), stderr otherwise.

    Under systemd without systemd-python, stderr goes to the journal anyway; timestamps are left to journald then.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler | None = None
    if os.environ.get("JOURNAL_STREAM"):
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="custom-sensord")
            handler.setFormatter(logging.Formatter("%(message)s"))
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
