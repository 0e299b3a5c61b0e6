"""The ingest's settings: one YAML file (optional) parsed once into frozen dataclasses, command-line overrides on top.

Kept apart from the daemon's settings on purpose: the ingest runs on fleet servers, not on sensors, and must not
break when the sensor config grows a key. Validated by the same engine (`custom.wire.settings`) as the sensor's
config and the bundle manifests, so a mistake reads the same everywhere: `ingest.mqtt.port: must be 1..65535, got
70000 (line 4)`. The file may hold the settings at its top level or under an `ingest:` key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from custom.wire.settings import ConfigError, at_line, build, num, opt, os_reason, parse_text
from custom.wire.topics import TOPIC_LEVEL, fleet_topic, subscription

from .alert_rules import AlertSettings, parse_alerts

__all__ = ["IngestConfig", "load_config"]

SECTION = "ingest"  # every key path starts here, whether or not the file has the `ingest:` key


@dataclass(frozen=True)
class MqttSettings:
    host: str = opt("127.0.0.1", "Broker host.", pattern=r"\S{1,253}")
    port: int = opt(1883, "Broker port.", lo=1, hi=65535)
    topic_prefix: str = opt("custom", "The sensors' topic prefix.", pattern=TOPIC_LEVEL)
    group: str = opt("ingest", "Shared-subscription group: every ingest in one group splits the messages.",
                     pattern=TOPIC_LEVEL)  # fmt: skip
    client_id: str = opt("custom-ingest-1", "Unique per ingest process AND stable across restarts (persistent "
                         "session).", pattern=TOPIC_LEVEL)  # fmt: skip
    session_expiry_s: int = opt(7 * 24 * 3600, "How long the broker keeps our queue while we are away; under 60 s a "
                                "restart could lose it.", lo=60)  # fmt: skip
    receive_maximum: int = opt(10000, "Unacknowledged messages the broker may have in flight to us (MQTT 5 Receive "
                               "Maximum).", lo=1, hi=65535)  # fmt: skip
    username: str | None = opt(None, "User name; null connects anonymously.")
    password_file: str | None = opt(None, "File holding the password (first line).")
    tls_ca: str | None = opt(None, "CA certificate file to check the broker's certificate with; set: connect over TLS "
                             "(the example broker, deploy/mosquitto, listens only on TLS).")  # fmt: skip
    keepalive_s: int = opt(30, "Keepalive, seconds.", lo=5, hi=3600)


@dataclass(frozen=True)
class DatabaseSettings:
    dsn: str = opt("dbname=custom", "libpq connection string or URI.")
    reconnect_min_s: float = opt(0.5, "First reconnect delay, seconds.", gt=0.0)
    reconnect_max_s: float = opt(10.0, "Longest reconnect delay, seconds.", gt=0.0)


@dataclass(frozen=True)
class DashboardSettings:
    """`custom-ingest serve`. The DSN should name a role in `custom_reader` (read-only); empty: database.dsn."""

    host: str = opt("127.0.0.1", "Address to listen on.")
    port: int = opt(8080, "TCP port.", lo=1, hi=65535)
    dsn: str = opt("", "Read-only connection string; empty: database.dsn.", may_be_empty=True)
    tile_url: str = opt("", "e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png; empty: points, scale and labels "
                        "only.", may_be_empty=True)  # fmt: skip
    tile_attribution: str = opt("", "Attribution shown with the tiles.", may_be_empty=True)
    basemap_mbtiles: str | None = opt(None, "Raster MBTiles file the dashboard serves its basemap from (offline; "
                                      "ingest/README.md says how to make one); instead of tile_url.")  # fmt: skip
    outline_geojson: str | None = opt(None, "GeoJSON file of district or street lines drawn under the sensors "
                                      "(with or without a basemap).")  # fmt: skip
    users_file: str = opt("/etc/custom-ingest/dashboard-users", "Who may log in: `custom-ingest user add NAME` "
                          "writes it (argon2id hashes, mode 0600).")  # fmt: skip
    session_hours: float = opt(12.0, "A login lasts this long (then log in again).", gt=0.0, hi=24.0 * 30)
    tls_cert: str | None = opt(None, "Certificate file (PEM) to serve HTTPS directly; a reverse proxy is the "
                               "recommended way (ingest/README.md).")  # fmt: skip
    tls_key: str | None = opt(None, "Its private key file (PEM).")


@dataclass(frozen=True)
class IngestConfig:
    mqtt: MqttSettings = opt(factory=MqttSettings, doc="The broker the sensors publish to.")
    database: DatabaseSettings = opt(factory=DatabaseSettings, doc="PostgreSQL.")
    batch_rows: int = opt(2000, "Most messages committed in one transaction.", lo=1)
    batch_wait_s: float = opt(0.2, "Longest a message waits for its batch to fill (latency vs. throughput).", gt=0.0)
    retention_days: int = opt(0, "Drop event partitions older than this many days; 0 keeps everything.", lo=0)
    health_interval_s: float = opt(10.0, "Seconds between the ingest's health messages.", gt=0.0)
    timezone: str = opt("Europe/Madrid", "Local time of alert periods (`between`), Lden day/evening/night, the "
                        "heatmap and every time the dashboard shows.")  # fmt: skip
    alerts: AlertSettings = opt(factory=AlertSettings, doc="Exceedance rules (alert_rules.py).")
    dashboard: DashboardSettings = opt(factory=DashboardSettings, doc="The web dashboard.")

    @property
    def event_topic(self) -> str:
        return subscription(self.mqtt.topic_prefix, "events", self.mqtt.group)

    @property
    def summary_topic(self) -> str:
        return subscription(self.mqtt.topic_prefix, "summary", self.mqtt.group)

    @property
    def health_topic(self) -> str:
        return fleet_topic(self.mqtt.topic_prefix, "ingest", self.mqtt.client_id, "health")


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> IngestConfig:
    """Read `path` (if given), apply dotted-key overrides like {"mqtt.port": 1884}, check, return frozen config."""
    data: Any = {}
    lines: dict[str, int] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"cannot read: {os_reason(exc)}") from None
        data, lines = parse_text(text, str(path))
        if isinstance(data, dict) and SECTION in data:
            data = data[SECTION]
        else:  # settings at the top level: their key paths still start with `ingest.`
            lines = {f"{SECTION}.{key}": line for key, line in lines.items()}
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}", "must be a mapping of keys at the top")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return at_line(lambda: _parse(data), lines)


def _parse(data: dict[str, Any]) -> IngestConfig:
    """The alerts section has rules of several shapes: its own parser, same errors; the rest is the engine's."""
    config = build(IngestConfig, {k: v for k, v in data.items() if k != "alerts"}, SECTION)
    config = replace(config, alerts=parse_alerts(data.get("alerts"), f"{SECTION}.alerts"))
    _check_cross_fields(config)
    return config


def _check_cross_fields(config: IngestConfig) -> None:
    d = config.database
    if d.reconnect_min_s > d.reconnect_max_s:
        raise ConfigError(
            f"{SECTION}.database.reconnect_min_s", f"must be <= database.reconnect_max_s ({num(d.reconnect_max_s)})"
        )
    web = config.dashboard
    if (web.tls_cert is None) != (web.tls_key is None):
        missing = "tls_key" if web.tls_key is None else "tls_cert"
        raise ConfigError(f"{SECTION}.dashboard.{missing}", "give both tls_cert and tls_key, or neither")
    if web.tile_url and web.basemap_mbtiles:
        raise ConfigError(f"{SECTION}.dashboard.basemap_mbtiles", "give tile_url or basemap_mbtiles, not both")
    try:
        ZoneInfo(config.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{SECTION}.timezone", f"{config.timezone!r} is not an IANA time zone (e.g. Europe/Madrid)"
        ) from None
