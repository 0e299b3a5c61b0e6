"""How a dead microphone shows to an operator: in the sd_notify STATUS (`systemctl status`) and the health message.

A street sensor whose microphone died keeps running (it reopens the device with backoff, and the watchdog is still
fed, since a restart would not bring the mic back), so without this the outage would only show as missing events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .event import iso_utc


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
