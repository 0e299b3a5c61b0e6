"""The daemon's settings: one YAML file parsed once into frozen dataclasses, failing fast with the key at fault.

The dataclasses below are the single source of truth. Each field carries its documentation and bounds in
`metadata`; `parse_config` enforces them and `render_default_config` writes the commented `config.yaml` shipped at
the repo root (a test keeps the two identical), so docs, defaults and validation cannot drift apart.

Errors are `ConfigError` with a one-line message that starts with the key path (`mqtt.port: must be 1..65535, got
70000`), so `custom-sensord check-config` can print it and exit 78 (EX_CONFIG) without a traceback.

Paths: relative paths resolve against the folder of the config file. Files the daemon only *reads* and that must be
there before start (TLS files, the MQTT password file) are checked here. The model bundle is NOT checked here: the
service checks it when it loads the bundle (a `BundleError` naming `model.bundle`, also exit 78), so
`check-config` on the shipped default works on a machine that has no bundle yet. The spool's folder is not checked
either: systemd's `StateDirectory=custom-sensor` creates /var/lib/custom-sensor, and a spool that cannot be written
falls back to memory at run time rather than refusing to start.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from custom.wire.settings import ConfigError, at_line, build, frozen_mapping, num, opt, os_reason, parse_text
from custom.wire.topics import TOPIC_LEVEL, TOPIC_PREFIX, Topics

STATE_DIR = Path("/var/lib/custom-sensor")  # systemd StateDirectory=custom-sensor
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class LocationConfig:
    """Where the sensor is; copied into every event."""

    lat: float = opt(40.4169, "Latitude in decimal degrees (WGS84).", lo=-90.0, hi=90.0)
    lon: float = opt(-3.7035, "Longitude in decimal degrees (WGS84).", lo=-180.0, hi=180.0)
    name: str | None = opt(None, "Optional human name for the site, e.g. 'Plaza Mayor NE corner'.")
    street: str | None = opt(None, "Optional street or address.")
    height_m: float | None = opt(None, "Optional microphone height above ground, metres.", lo=0.0, hi=1000.0)

    def to_event(self) -> dict[str, Any]:
        """The event's `location` object: unset optional fields are left out, as the schema expects."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class AudioConfig:
    """The microphone. Raw audio is never stored or sent: only scores and levels leave the process."""

    device: str | int | None = opt(
        None, "Input device: null for the system default, an index (int) or a name substring (str).", lo=0
    )
    sample_rate_hz: int | None = opt(
        None,
        "Capture rate in Hz; null (default): the device's own default rate (48 kHz on most USB mics), so levels use "
        "the full band; the model gets 16 kHz by resampling. A rate the device refuses falls back to its default "
        "with one warning.",
        lo=8000,
        hi=192000,
    )
    channels: int = opt(1, "Channels to capture; mixed down to mono.", lo=1, hi=32)
    gain_db: float = opt(0.0, "Digital gain applied before the model, dB.", lo=-40.0, hi=60.0)
    calibration_db: float | None = opt(
        None,
        "Offset in dB that turns dBFS into dB(A) SPL for this mic; `custom-sensord calibrate` sets it. null: dBFS.",
        lo=-50.0,
        hi=200.0,
    )
    block_ms: int = opt(100, "Capture block size, ms: latency vs. wake-ups.", lo=10, hi=1000)


@dataclass(frozen=True)
class WindowConfig:
    """How audio is cut into windows, one event per window."""

    length_s: float = opt(10.0, "Window length, seconds.", gt=0.0, hi=60.0)
    hop_s: float = opt(10.0, "Hop between window starts, seconds; less than length_s makes windows overlap.", gt=0.0)


@dataclass(frozen=True)
class ModelConfig:
    """Which model bundle runs and how its per-class decisions are made."""

    bundle: Path = opt(STATE_DIR / "bundle", "Model bundle folder (checked when the daemon starts).")
    threads: int = opt(
        2, "Interpreter threads; from 2, a two-backbone bundle runs its backbones side by side.", lo=1, hi=16
    )
    thresholds: Mapping[str, float] = opt(
        doc="Per-class score threshold overrides, class name -> 0..1, e.g. {Siren: 0.3}; "
        "names are checked against the bundle at start.",
        factory=frozen_mapping,
        value_lo=0.0,
        value_hi=1.0,
    )


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the broker. ca null with enabled true uses the system's CA store."""

    enabled: bool = opt(False, "Use TLS (usually with port 8883).")
    ca: Path | None = opt(None, "CA certificate file (PEM) that signed the broker's certificate.", exists="file")
    cert: Path | None = opt(None, "Client certificate file (PEM), for brokers that require one.", exists="file")
    key: Path | None = opt(None, "Client private key file (PEM) for cert.", exists="file")


@dataclass(frozen=True)
class MqttConfig:
    """The broker that receives events, status and health."""

    host: str = opt("localhost", "Broker host name or address.", pattern=r"\S{1,253}")
    port: int = opt(1883, "Broker port.", lo=1, hi=65535)
    tls: TlsConfig = opt(factory=TlsConfig, doc="TLS settings.")
    username: str | None = opt(None, "User name; null connects anonymously.")
    password_file: Path | None = opt(
        None, "File holding the password (first line); never put the password itself in this file.", exists="file"
    )
    client_id: str | None = opt(None, "MQTT client id; null means 'custom-sensor-<sensor_id>'.", pattern=r"\S{1,128}")
    topic_prefix: str = opt("custom", "Topic prefix: events go to <prefix>/<sensor_id>/events.", pattern=TOPIC_PREFIX)
    qos: int = opt(1, "QoS for events and status; 1 means at-least-once (duplicates possible, no loss).", lo=0, hi=2)
    keepalive_s: int = opt(60, "Keepalive, seconds: how soon the broker notices a dead sensor.", lo=5, hi=3600)
    reconnect_min_s: float = opt(1.0, "First reconnect delay, seconds (doubles per failure, with jitter).", gt=0.0)
    reconnect_max_s: float = opt(60.0, "Longest reconnect delay, seconds.", gt=0.0, hi=3600.0)
    max_inflight: int = opt(10, "Events sent but not yet acknowledged, at most.", lo=1, hi=1000)

    def effective_client_id(self, sensor_id: str) -> str:
        return self.client_id or f"custom-sensor-{sensor_id}"


@dataclass(frozen=True)
class SpoolConfig:
    """The on-disk queue that holds every event until the broker acknowledges it."""

    path: Path = opt(STATE_DIR / "spool.sqlite", "SQLite spool file; its folder must be writable.")
    max_rows: int = opt(100000, "Most events kept; when full the oldest are dropped (and counted).", lo=1)
    max_bytes: int = opt(
        50_000_000, "Most payload bytes kept; when full the oldest are dropped (and counted).", lo=1024
    )
    memory_rows: int = opt(1000, "Events held in memory while the spool cannot be written.", lo=1, hi=1_000_000)
    drain_per_s: float = opt(20.0, "Publish rate, events per second, while a backlog drains.", gt=0.0)


@dataclass(frozen=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery."""

    discovery: bool = opt(False, "Publish Home Assistant discovery messages.")
    prefix: str = opt("homeassistant", "Home Assistant discovery prefix.", pattern=TOPIC_PREFIX)


@dataclass(frozen=True)
class Config:
    """custom-sensord settings."""

    sensor_id: str = opt(
        "sensor-01",
        "Unique id of this sensor; used in topics and events. Letters, digits, '_', '-', '.'.",
        pattern=TOPIC_LEVEL,
    )
    location: LocationConfig = opt(factory=LocationConfig, doc="Where the sensor is.")
    audio: AudioConfig = opt(factory=AudioConfig, doc="Audio capture.")
    window: WindowConfig = opt(factory=WindowConfig, doc="Windowing.")
    model: ModelConfig = opt(factory=ModelConfig, doc="Model.")
    mqtt: MqttConfig = opt(factory=MqttConfig, doc="MQTT broker.")
    spool: SpoolConfig = opt(factory=SpoolConfig, doc="Spool.")
    health_interval_s: float = opt(60.0, "Seconds between health messages.", lo=1.0, hi=86400.0)
    log_level: str = opt("INFO", "Log level.", choices=LOG_LEVELS)
    home_assistant: HomeAssistantConfig = opt(factory=HomeAssistantConfig, doc="Home Assistant.")

    @property
    def topics(self) -> Topics:
        """Every topic this sensor publishes or listens to; the one place they are derived from the config."""
        return Topics(self.mqtt.topic_prefix, self.sensor_id, self.home_assistant.prefix)


# ----------------------------------------------------------------------------------------------------------- parsing


def load_config(path: str | Path) -> Config:
    """Read and validate the YAML file at `path`. An empty file means all defaults.

    Errors from a file end with the line of the key at fault, e.g. `mqtt.port: must be 1..65535, got 70000 (line 40)`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read config: {os_reason(exc)}") from None
    data, lines = parse_text(text, str(path))
    return at_line(lambda: parse_config({} if data is None else data, path.resolve().parent), lines)


def parse_config(data: Any, base_dir: str | Path) -> Config:
    """Validate an already-parsed mapping; relative paths resolve against `base_dir` (the config file's folder)."""
    config = build(Config, data, "", Path(base_dir))
    _check_cross_fields(config)
    return config


def _check_cross_fields(config: Config) -> None:
    """Rules that involve two keys; the message names the key a user would change."""
    if config.window.hop_s > config.window.length_s:
        raise ConfigError(
            "window.hop_s",
            f"must be <= window.length_s ({num(config.window.length_s)}), got {num(config.window.hop_s)}",
        )
    mqtt = config.mqtt
    if mqtt.reconnect_min_s > mqtt.reconnect_max_s:
        raise ConfigError(
            "mqtt.reconnect_min_s",
            f"must be <= mqtt.reconnect_max_s ({num(mqtt.reconnect_max_s)}), got {num(mqtt.reconnect_min_s)}",
        )
    tls = mqtt.tls
    if not tls.enabled:
        for name in ("ca", "cert", "key"):
            if getattr(tls, name) is not None:
                raise ConfigError(f"mqtt.tls.{name}", "is set but mqtt.tls.enabled is false")
    if (tls.cert is None) != (tls.key is None):
        missing = "key" if tls.key is None else "cert"
        raise ConfigError(f"mqtt.tls.{missing}", "must be set together with mqtt.tls.cert/key")
    if mqtt.password_file is not None and mqtt.username is None:
        raise ConfigError("mqtt.password_file", "is set but mqtt.username is not")


# -------------------------------------------------------------------------------------------------------- rendering

_HEADER = """\
# custom-sensor configuration (custom-sensord). Deployed at /etc/custom-sensor/config.yaml.
#
# Every key is optional; the values below are the defaults. Relative paths are relative to this file's folder.
# Check a file with: custom-sensord check-config --config /etc/custom-sensor/config.yaml
# Generated from daemon/config.py (render_default_config); edit the docs there, not here.
"""
_WIDTH = 118


def render_default_config() -> str:
    """The commented default config.yaml, generated from the dataclasses so docs and defaults live in one place."""
    lines = [_HEADER.rstrip("\n")]
    _render_section(Config(), 0, lines)
    return "\n".join(lines).rstrip("\n") + "\n"


def _render_section(obj: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        doc = f.metadata.get("doc", "")
        if indent == 0:
            lines.append("")
        if dataclasses.is_dataclass(value):
            section_doc = (type(value).__doc__ or doc).strip()
            lines.extend(
                textwrap.wrap(section_doc, _WIDTH - indent, initial_indent=pad + "# ", subsequent_indent=pad + "# ")
            )
            lines.append(f"{pad}{f.name}:")
            _render_section(value, indent + 2, lines)
            continue
        lines.extend(textwrap.wrap(doc, _WIDTH - indent, initial_indent=pad + "# ", subsequent_indent=pad + "# "))
        lines.append(f"{pad}{f.name}: {_yaml_scalar(value)}")


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, Mapping):
        value = dict(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
