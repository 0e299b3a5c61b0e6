"""The daemon itself: start -> READY, and CPU % / real-time factor / RSS on a live (virtual) microphone.

Runs the real `custom-sensord run` against a private PulseAudio null-sink microphone with a clip looping into it and
a mosquitto on a free loopback port, reusing the test suite's fixtures (the testing package) rather than copies.
start -> READY is the wall time from spawning the process to its READY=1 on the sd_notify socket, which the daemon
sends once the bundle is loaded and the audio stream is open. CPU % is utime+stime from /proc/PID/stat over the
live run divided by its wall time (100 % = one core). The per-window processing time comes from the daemon's own
DEBUG line per window (resample + model + level, as it measures for health's inference_ms); real-time factor is
that time over the 10 s window. RSS is sampled every few seconds; the slope over this short run is only a
sanity check: the 30-minute flatness figure is bench/soak.py's (issue 9).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import WINDOW_S, cpu_seconds, proc_status_kib

WINDOW_LINE = re.compile(r"window \S+: top .*, ([0-9.]+) ms\s*$")
READY_TIMEOUT_S = 60.0
RSS_SAMPLE_S = 5.0


@dataclass
class LiveResult:
    """One live run of the daemon."""

    duration_s: float
    cpu_percent: float
    window_ms: list[float] = field(default_factory=list)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)  # (seconds since READY, VmRSS)
    peak_rss_kib: int = 0

    @property
    def rtf_p50(self) -> float:
        return float(np.percentile(self.window_ms, 50)) / (WINDOW_S * 1e3) if self.window_ms else float("nan")

    @property
    def rtf_p95(self) -> float:
        return float(np.percentile(self.window_ms, 95)) / (WINDOW_S * 1e3) if self.window_ms else float("nan")

    @property
    def rss_slope_kib_per_min(self) -> float:
        """Least-squares RSS slope from the end of the first window on (before it, the model's buffers are still
        being touched for the first time: growth that is warm-up, not a leak)."""
        after = [(t, rss) for t, rss in self.rss_kib if t >= WINDOW_S + RSS_SAMPLE_S]
        if len(after) < 3:
            return float("nan")
        t, rss = np.array(after, dtype=np.float64).T
        return float(np.polyfit(t / 60.0, rss, 1)[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "cpu_percent": self.cpu_percent,
            "windows": len(self.window_ms),
            "window_ms": self.window_ms,
            "rtf_p50": self.rtf_p50,
            "rtf_p95": self.rtf_p95,
            "rss_slope_kib_per_min": self.rss_slope_kib_per_min,
            "steady_rss_kib": self.rss_kib[-1][1] if self.rss_kib else 0,
            "peak_rss_kib": self.peak_rss_kib,
        }


class LiveRig:
    """A virtual mic with audio playing into it and a loopback broker: what a sensor's daemon lives next to."""

    def __init__(self, audio_file: Path) -> None:
        from testing.audio import VirtualMic
        from testing.broker import Broker, free_port

        self._stack = ExitStack()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-live-"))  # short: unix socket paths are limited to 108 bytes
        self._stack.callback(shutil.rmtree, self.dir, True)
        self.broker = Broker(self.dir / "broker", free_port())
        self.broker.workdir.mkdir()
        self.broker.start()
        self._stack.callback(self.broker.stop)
        self.mic = VirtualMic(self.dir / "mic")
        self.mic.start()
        self._stack.callback(self.mic.close)
        self.mic.play(audio_file, loop=True)
        self._runs = 0

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> LiveRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _daemon(self, bundle: Path, threads: int) -> tuple[Any, Any]:
        from testing.daemon import Daemon, NotifyListener, daemon_config

        self._runs += 1
        workdir = self.dir / f"daemon{self._runs}"
        workdir.mkdir()
        config = daemon_config(
            bundle, self.broker.port, workdir / "spool", log_level="DEBUG", health_interval_s=10.0,
            model={"threads": threads},
        )  # fmt: skip
        listener = NotifyListener()
        env = {**os.environ, **self.mic.env, "NOTIFY_SOCKET": str(listener.path)}
        env.pop("WATCHDOG_USEC", None)
        return Daemon(workdir, config, [], env), listener

    def start_to_ready(self, bundle: Path, threads: int = 2) -> float:
        """Seconds from spawning `custom-sensord run` to its READY=1."""
        daemon, listener = self._daemon(bundle, threads)
        try:
            t0 = time.monotonic()
            daemon.start()
            if not listener.wait_for("READY=1", timeout=READY_TIMEOUT_S):
                raise RuntimeError(f"daemon sent no READY=1 within {READY_TIMEOUT_S} s; log:\n{daemon.log()[-3000:]}")
            return listener.times("READY=1")[0] - t0
        finally:
            daemon.stop()
            listener.close()

    def run(self, bundle: Path, duration_s: float, threads: int = 2) -> LiveResult:
        """Run the daemon on the live mic for `duration_s` after READY and measure it."""
        daemon, listener = self._daemon(bundle, threads)
        try:
            daemon.start()
            if not listener.wait_for("READY=1", timeout=READY_TIMEOUT_S):
                raise RuntimeError(f"daemon sent no READY=1 within {READY_TIMEOUT_S} s; log:\n{daemon.log()[-3000:]}")
            pid = daemon.proc.pid
            t0, cpu0 = time.monotonic(), cpu_seconds(pid)
            samples: list[tuple[float, int]] = []
            while (elapsed := time.monotonic() - t0) < duration_s:
                if daemon.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {daemon.proc.returncode}; log:\n{daemon.log()[-3000:]}")
                samples.append((elapsed, proc_status_kib("VmRSS", pid)))
                time.sleep(min(RSS_SAMPLE_S, max(0.0, duration_s - elapsed)))
            wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
            samples.append((wall, proc_status_kib("VmRSS", pid)))
            peak = proc_status_kib("VmHWM", pid)
        finally:
            daemon.stop()
            listener.close()
        window_ms = [float(m.group(1)) for m in map(WINDOW_LINE.search, daemon.log().splitlines()) if m]
        return LiveResult(wall, 100.0 * cpu / wall, window_ms, samples, peak)
