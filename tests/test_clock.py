"""The clock's NTP state, as events, summaries and health report it."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

from custom.daemon.clock import TIME_ERROR, ClockProbe


def test_kernel_state_matches_ntp_gettime() -> None:
    """adjtimex (the probe) and glibc's ntp_gettime (a different call) agree on whether the clock is synchronised."""
    state = ClockProbe().state()
    assert isinstance(state.synced, bool) and state.max_error_ms is not None and state.max_error_ms >= 0

    class NtpTimeval(ctypes.Structure):  # struct ntptimeval: time, maxerror, esterror, tai + reserved
        _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long), ("maxerror", ctypes.c_long),
                    ("esterror", ctypes.c_long), ("tai", ctypes.c_long), ("_reserved", ctypes.c_long * 4)]  # fmt: skip

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.ntp_gettime.argtypes = [ctypes.POINTER(NtpTimeval)]
    assert state.synced == (libc.ntp_gettime(ctypes.byref(NtpTimeval())) != TIME_ERROR)
    assert state.to_event()["synced"] == state.synced


def test_falls_back_on_timesyncd_when_the_unit_forbids_adjtimex(tmp_path: Path) -> None:
    """ProtectClock=yes makes adjtimex fail with EPERM; that seccomp refusal cannot be caused in a test process, so
    the call is replaced by one that fails the same way."""
    probe = ClockProbe(timesync_dir=tmp_path / "timesync")
    probe._adjtimex = lambda _timex: -1
    assert probe.state().synced is None  # no timesyncd: unknown, not a guess
    assert probe.source == "timesyncd"
    (tmp_path / "timesync").mkdir()
    assert probe.state().synced is False  # timesyncd runs, not synchronised yet
    (tmp_path / "timesync" / "synchronized").touch()
    assert probe.state().synced is True
