"""Audio input devices as PortAudio sees them: listing (`custom-sensord devices`), rate checks, re-scanning.

PortAudio enumerates devices once, at initialisation, so a device plugged in (or a sound server started) later is
invisible until `rescan_devices`; capture calls it before every (re)open.
"""

from __future__ import annotations

from typing import Any

from .pcm import SAMPLE_RATE_HZ

PREFERRED_RATE_HZ = SAMPLE_RATE_HZ  # the model rate: capturing at it means no resampling at all


def rescan_devices() -> None:
    """Make PortAudio enumerate devices again; sounddevice documents this private pair. Only safe while no stream
    is open in this process (capture owns the only one and makes every PortAudio call from its supervisor)."""
    import sounddevice as sd

    if sd._initialized > 0:
        sd._terminate()
    sd._initialize()


def supports_rate(device: int | str | None, rate_hz: float, channels: int = 1) -> bool:
    import sounddevice as sd

    try:
        sd.check_input_settings(device=device, samplerate=rate_hz, channels=channels, dtype="float32")
    except Exception:  # PortAudioError or ValueError, depending on what is wrong
        return False
    return True


def list_input_devices(rescan: bool = False) -> list[dict[str, Any]]:
    """Input devices for ``custom-sensord devices``: index, name, host API, channels, default rate, 16 kHz support."""
    import sounddevice as sd

    if rescan:
        rescan_devices()
    try:
        default_in = sd.default.device[0]
    except Exception:
        default_in = -1
    hostapis = sd.query_hostapis()
    devices = []
    for dev in sd.query_devices():
        if dev["max_input_channels"] <= 0:
            continue
        devices.append(
            {
                "index": dev["index"],
                "name": dev["name"],
                "hostapi": hostapis[dev["hostapi"]]["name"],
                "max_input_channels": dev["max_input_channels"],
                "default_samplerate_hz": dev["default_samplerate"],
                "supports_16k": supports_rate(dev["index"], PREFERRED_RATE_HZ),
                "default": dev["index"] == default_in,
            }
        )
    return devices


def format_devices(devices: list[dict[str, Any]]) -> str:
    """Human-readable table of ``list_input_devices()`` (``*`` = system default input)."""
    if not devices:
        return "no input devices found (is the microphone plugged in / the sound server running?)"
    lines = [f"{'':1} {'index':>5}  {'in ch':>5}  {'default Hz':>10}  {'16 kHz':6}  name (host API)"]
    for d in devices:
        lines.append(
            f"{'*' if d['default'] else ' ':1} {d['index']:>5}  {d['max_input_channels']:>5}  "
            f"{d['default_samplerate_hz']:>10.0f}  {'yes' if d['supports_16k'] else 'no':6}  "
            f"{d['name']} ({d['hostapi']})"
        )
    return "\n".join(lines)
