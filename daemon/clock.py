"""Is the system clock synchronised? Every window's timestamp comes from it, so every event and summary says.

Asked of the kernel directly: `adjtimex(2)` (through ctypes, no dependency) with modes 0 only reads the NTP state.
The kernel clears STA_UNSYNC once an NTP client (systemd-timesyncd, chrony, ntpd) disciplines the clock, and
`adjtimex` returns TIME_ERROR while the clock is unsynchronised. A Pi has no RTC: until the first sync its clock
restarts from the last shutdown (fake-hwclock) or 1970, so a window stamped then is still published, but flagged.

Under the shipped unit, `ProtectClock=yes` makes the kernel refuse `adjtimex` altogether (seccomp cannot tell a
read from a write), so the probe then falls back on systemd-timesyncd's own flag: it creates
/run/systemd/timesync/synchronized on each successful sync (cleared at boot, as /run is). No flag and no timesyncd
(e.g. chrony under the unit): `synced: null`, unknown, rather than a guess.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STA_UNSYNC = 0x0040
TIME_ERROR = 5
TIMESYNC_DIR = Path("/run/systemd/timesync")


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex from <sys/timex.h> (Linux): the fields we read, then padding for the kernel's reserved tail."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockState:
    """What events and health say about the clock. `synced` None: the kernel could not be asked."""

    synced: bool | None
    max_error_ms: float | None  # the kernel's bound on the clock's error (grows while unsynchronised)

    def to_event(self) -> dict[str, object]:
        return {"synced": self.synced, "max_error_ms": self.max_error_ms}


class ClockProbe:
    """Reads the kernel's NTP state; cheap (one syscall) so it is asked at every window."""

    def __init__(self, timesync_dir: Path = TIMESYNC_DIR) -> None:
        self.timesync_dir = timesync_dir
        self.source = "adjtimex"
        self._adjtimex = None
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6", use_errno=True)
            self._adjtimex = libc.adjtimex
            self._adjtimex.argtypes = [ctypes.POINTER(_Timex)]
            self._adjtimex.restype = ctypes.c_int
        except (OSError, AttributeError) as exc:
            log.info("cannot call adjtimex (%s): asking systemd-timesyncd instead", exc)

    def state(self) -> ClockState:
        if self._adjtimex is not None:
            timex = _Timex()  # modes 0: read only, needs no privilege
            result = self._adjtimex(ctypes.byref(timex))
            if result >= 0:
                synced = result != TIME_ERROR and not timex.status & STA_UNSYNC
                return ClockState(synced, round(timex.maxerror / 1000.0, 1))
            self._adjtimex = None  # EPERM under ProtectClock=yes: it will not start working later
            self.source = "timesyncd"
            log.info("adjtimex refused (errno %d, e.g. ProtectClock=yes): clock state from %s", ctypes.get_errno(),
                     self.timesync_dir)  # fmt: skip
        if (self.timesync_dir / "synchronized").exists():
            return ClockState(True, None)
        if self.timesync_dir.is_dir():
            return ClockState(False, None)  # timesyncd runs but has not synchronised yet
        return ClockState(None, None)
