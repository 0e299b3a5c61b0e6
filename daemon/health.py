"""The sensor's health: the retained-free JSON message on `<prefix>/<id>/health` and systemd's one-line STATUS.

Built from what the running parts already count (windows, audio source, spool, MQTT) plus inference latency kept
here, so the service loop only says "a window took this long" and "report now".
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from custom.wire.timestamps import iso_utc

from .version import package_version

LATENCY_SAMPLES = 100  # inference times kept for p50/p95
CPU_TEMP_PATH = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temperature_c(path: Path = CPU_TEMP_PATH) -> float | None:
    """The SoC temperature (a Pi throttles at 80-85 C), None where the kernel does not expose one."""
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


class Health:
    """Window count and inference latency of this process; `report` assembles the health message."""

    def __init__(self) -> None:
        self.started_mono = time.monotonic()
        self.windows_done = 0
        self.bundle_windows = 0  # since the running bundle was loaded: a canary check counts these, not older ones
        self.last_progress_mono = self.started_mono
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def window_done(self, processing_ms: float) -> None:
        self.latencies_ms.append(processing_ms)
        self.windows_done += 1
        self.bundle_windows += 1
        self.last_progress_mono = time.monotonic()

    def bundle_swapped(self) -> None:
        """A reload brought another bundle: its window count starts again."""
        self.bundle_windows = 0

    def report(
        self,
        sensor_id: str,
        bundle: dict[str, str],
        windows: dict[str, int],
        audio: dict[str, Any] | None,
        clock: dict[str, Any],
        spool: dict[str, Any] | None,
        mqtt: dict[str, Any] | None,
    ) -> dict[str, Any]:
        latencies = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        health: dict[str, Any] = {
            "sensor_id": sensor_id,
            "version": package_version(),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "bundle": {**bundle, "windows": self.bundle_windows},
            "windows": {**windows, "done": self.windows_done},
            "inference_ms": {
                "p50": round(float(np.percentile(latencies, 50)), 1),
                "p95": round(float(np.percentile(latencies, 95)), 1),
            },
            "audio": audio,
            "clock": clock,
            "spool": spool,
            "mqtt": mqtt,
        }
        temperature = cpu_temperature_c()
        if temperature is not None:
            health["cpu_temp_c"] = temperature
        return health


def status_line(health: dict[str, Any]) -> str:
    """systemd's STATUS= (shown by `systemctl status`): the few numbers an operator checks first."""
    audio = health.get("audio") or {}
    mqtt = health.get("mqtt") or {}
    spool = health.get("spool") or {}
    return (
        f"{describe_mic(audio)}, {health['windows']['done']} windows, "
        f"mqtt {'up' if mqtt.get('connected') else 'down'}, spool {spool.get('depth', 0)} queued, "
        f"p95 {health['inference_ms']['p95']} ms"
    )


# A street sensor whose microphone died keeps running (it reopens the device with backoff, and the watchdog is still
# fed, since a restart would not bring the mic back), so without these the outage would only show as missing events:
# the STATUS line leads with it and the health message carries when it began.


def mic_down_since(state: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The audio health snapshot plus `down_since` (ISO UTC of the outage start, null while the mic works)."""
    down_for = state.get("down_for_s")
    return {**state, "down_since": None if down_for is None else iso_utc(now - float(down_for))}


def mic_state(state: Mapping[str, Any] | None) -> str:
    return "unknown" if not state else str(state.get("mic"))


def describe_mic(state: Mapping[str, Any] | None) -> str:
    """The STATUS fragment: loud and first-read when the mic is down, short otherwise."""
    if mic_state(state) != "down" or not state:
        return f"mic {mic_state(state)}"
    since = state.get("down_since")
    reason = state.get("last_error")
    return f"MICROPHONE DOWN since {since or '?'}" + (f" ({reason})" if reason else "")
