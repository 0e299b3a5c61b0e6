"""The ingest's settings: one YAML file (optional) parsed once into frozen dataclasses, command-line overrides on top.

Kept apart from the daemon's config on purpose: the ingest runs on fleet servers, not on sensors, and must not
break when the sensor config grows a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

import yaml

from .alert_rules import AlertSettings, RuleError, parse_alerts

_TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9_.-]+$")


class ConfigError(ValueError):
    """A bad setting: the message names the key or file; the CLI prints it as one line and exits 78."""


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "custom"
    group: str = "ingest"  # the shared-subscription group: every ingest in one group splits the messages
    client_id: str = "custom-ingest-1"  # unique per ingest process AND stable across restarts (persistent session)
    session_expiry_s: int = 7 * 24 * 3600  # how long the broker keeps our queue while we are away
    receive_maximum: int = 10000  # unacknowledged messages the broker may have in flight to us
    username: str | None = None
    password_file: str | None = None
    keepalive_s: int = 30


@dataclass(frozen=True)
class DatabaseSettings:
    dsn: str = "dbname=custom"  # libpq connection string or URI
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0


@dataclass(frozen=True)
class DashboardSettings:
    """`custom-ingest serve`. The DSN should name a role in `custom_reader` (read-only); empty: database.dsn."""

    host: str = "127.0.0.1"
    port: int = 8080
    dsn: str = ""
    tile_url: str = ""  # e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png; empty: points, scale and labels only
    tile_attribution: str = ""


@dataclass(frozen=True)
class IngestConfig:
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    batch_rows: int = 2000  # most messages committed in one transaction
    batch_wait_s: float = 0.2  # longest a message waits for its batch to fill (latency vs. throughput)
    retention_days: int = 0  # drop event partitions older than this many days; 0 keeps everything
    health_interval_s: float = 10.0
    timezone: str = "UTC"  # local time of alert periods (`between`), Lden day/evening/night and the heatmap's hours
    alerts: AlertSettings = field(default_factory=AlertSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)

    @property
    def event_topic(self) -> str:
        return f"$share/{self.mqtt.group}/{self.mqtt.topic_prefix}/+/events"

    @property
    def summary_topic(self) -> str:
        return f"$share/{self.mqtt.group}/{self.mqtt.topic_prefix}/+/summary"

    @property
    def health_topic(self) -> str:
        return f"{self.mqtt.topic_prefix}/_ingest/{self.mqtt.client_id}/health"


_T = TypeVar("_T", bound="DataclassInstance")


def _section(cls: type[_T], data: Any, where: str) -> _T:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        default = getattr(cls(), key)
        values[key] = _coerce(value, default, f"{where}.{key}")
    return cls(**values)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> IngestConfig:
    """Read `path` (if given), apply dotted-key overrides like {"mqtt.port": 1884}, check, return frozen config."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top")
        data = dict(loaded.get("ingest", loaded)) if isinstance(loaded.get("ingest", loaded), dict) else {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    top = {k: v for k, v in data.items() if k not in ("mqtt", "database", "alerts", "dashboard")}
    config = _section(IngestConfig, top, "ingest")
    try:
        alerts = parse_alerts(data.get("alerts"), "ingest.alerts")
    except RuleError as exc:
        raise ConfigError(str(exc)) from None
    config = replace(
        config,
        mqtt=_section(MqttSettings, data.get("mqtt"), "ingest.mqtt"),
        database=_section(DatabaseSettings, data.get("database"), "ingest.database"),
        alerts=alerts,
        dashboard=_section(DashboardSettings, data.get("dashboard"), "ingest.dashboard"),
    )
    _check(config)
    return config


def _check(config: IngestConfig) -> None:
    m = config.mqtt
    for key in ("topic_prefix", "group", "client_id"):
        if not _TOPIC_LEVEL.match(getattr(m, key)):
            raise ConfigError(f"ingest.mqtt.{key}: {getattr(m, key)!r} must be letters, digits, '_', '-', '.'")
    if not 0 < m.port < 65536:
        raise ConfigError(f"ingest.mqtt.port: {m.port} is not a TCP port")
    if not 1 <= m.receive_maximum <= 65535:
        raise ConfigError("ingest.mqtt.receive_maximum: must be 1..65535 (MQTT 5 Receive Maximum)")
    if m.session_expiry_s < 60:
        raise ConfigError("ingest.mqtt.session_expiry_s: under 60 s a restart could lose the broker's queue")
    if config.batch_rows < 1:
        raise ConfigError("ingest.batch_rows: must be at least 1")
    if config.batch_wait_s <= 0:
        raise ConfigError("ingest.batch_wait_s: must be > 0")
    d = config.database
    if not 0 < d.reconnect_min_s <= d.reconnect_max_s:
        raise ConfigError("ingest.database.reconnect_min_s: must be > 0 and at most ingest.database.reconnect_max_s")
    if config.retention_days < 0:
        raise ConfigError("ingest.retention_days: must be >= 0 (0 keeps everything)")
    try:
        ZoneInfo(config.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"ingest.timezone: {config.timezone!r} is not an IANA time zone (e.g. Europe/Madrid)"
        ) from None
    if not 0 < config.dashboard.port < 65536:
        raise ConfigError(f"ingest.dashboard.port: {config.dashboard.port} is not a TCP port")
