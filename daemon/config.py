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
import functools
import math
import re
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

import yaml

from .topics import Topics

STATE_DIR = Path("/var/lib/custom-sensor")  # systemd StateDirectory=custom-sensor
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# MQTT topic level safe for ids and prefixes: no wildcards, no separators, nothing a shell or HA would choke on
_TOPIC_LEVEL = r"[A-Za-z0-9_.-]{1,64}"
_TOPIC_PREFIX = rf"{_TOPIC_LEVEL}(/{_TOPIC_LEVEL})*"


class ConfigError(ValueError):
    """A config the daemon must not run with. str() is one line starting with the key path."""

    def __init__(self, key_path: str, message: str) -> None:
        self.key_path = key_path
        self.message = message
        super().__init__(f"{key_path}: {message}")


def _opt(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None, **rules: Any) -> Any:
    """A dataclass field with its documentation and validation rules kept right beside the default.

    Rules: lo/hi (inclusive bounds), gt (exclusive lower bound), choices, pattern (full match), exists ("file"),
    value_lo/value_hi (bounds for each value of a mapping).
    """
    metadata = {"doc": doc, **rules}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _frozen_mapping() -> Mapping[str, float]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class LocationConfig:
    """Where the sensor is; copied into every event."""

    lat: float = _opt(40.4169, "Latitude in decimal degrees (WGS84).", lo=-90.0, hi=90.0)
    lon: float = _opt(-3.7035, "Longitude in decimal degrees (WGS84).", lo=-180.0, hi=180.0)
    name: str | None = _opt(None, "Optional human name for the site, e.g. 'Plaza Mayor NE corner'.")
    street: str | None = _opt(None, "Optional street or address.")
    height_m: float | None = _opt(None, "Optional microphone height above ground, metres.", lo=0.0, hi=1000.0)

    def to_event(self) -> dict[str, Any]:
        """The event's `location` object: unset optional fields are left out, as the schema expects."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class AudioConfig:
    """The microphone. Raw audio is never stored or sent: only scores and levels leave the process."""

    device: str | int | None = _opt(
        None, "Input device: null for the system default, an index (int) or a name substring (str).", lo=0
    )
    sample_rate_hz: int | None = _opt(
        None,
        "Capture rate in Hz; null (default): the device's own default rate (48 kHz on most USB mics), so levels use "
        "the full band; the model gets 16 kHz by resampling. A rate the device refuses falls back to its default "
        "with one warning.",
        lo=8000,
        hi=192000,
    )
    channels: int = _opt(1, "Channels to capture; mixed down to mono.", lo=1, hi=32)
    gain_db: float = _opt(0.0, "Digital gain applied before the model, dB.", lo=-40.0, hi=60.0)
    calibration_db: float | None = _opt(
        None,
        "Offset in dB that turns dBFS into dB(A) SPL for this mic; `custom-sensord calibrate` sets it. null: dBFS.",
        lo=-50.0,
        hi=200.0,
    )
    block_ms: int = _opt(100, "Capture block size, ms: latency vs. wake-ups.", lo=10, hi=1000)


@dataclass(frozen=True)
class WindowConfig:
    """How audio is cut into windows, one event per window."""

    length_s: float = _opt(10.0, "Window length, seconds.", gt=0.0, hi=60.0)
    hop_s: float = _opt(10.0, "Hop between window starts, seconds; less than length_s makes windows overlap.", gt=0.0)


@dataclass(frozen=True)
class ModelConfig:
    """Which model bundle runs and how its per-class decisions are made."""

    bundle: Path = _opt(STATE_DIR / "bundle", "Model bundle folder (checked when the daemon starts).")
    threads: int = _opt(2, "Interpreter threads.", lo=1, hi=16)
    thresholds: Mapping[str, float] = _opt(
        doc="Per-class score threshold overrides, class name -> 0..1, e.g. {Siren: 0.3}; "
        "names are checked against the bundle at start.",
        factory=_frozen_mapping,
        value_lo=0.0,
        value_hi=1.0,
    )


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the broker. ca null with enabled true uses the system's CA store."""

    enabled: bool = _opt(False, "Use TLS (usually with port 8883).")
    ca: Path | None = _opt(None, "CA certificate file (PEM) that signed the broker's certificate.", exists="file")
    cert: Path | None = _opt(None, "Client certificate file (PEM), for brokers that require one.", exists="file")
    key: Path | None = _opt(None, "Client private key file (PEM) for cert.", exists="file")


@dataclass(frozen=True)
class MqttConfig:
    """The broker that receives events, status and health."""

    host: str = _opt("localhost", "Broker host name or address.", pattern=r"\S{1,253}")
    port: int = _opt(1883, "Broker port.", lo=1, hi=65535)
    tls: TlsConfig = _opt(factory=TlsConfig, doc="TLS settings.")
    username: str | None = _opt(None, "User name; null connects anonymously.")
    password_file: Path | None = _opt(
        None, "File holding the password (first line); never put the password itself in this file.", exists="file"
    )
    client_id: str | None = _opt(None, "MQTT client id; null means 'custom-sensor-<sensor_id>'.", pattern=r"\S{1,128}")
    topic_prefix: str = _opt("custom", "Topic prefix: events go to <prefix>/<sensor_id>/events.", pattern=_TOPIC_PREFIX)
    qos: int = _opt(1, "QoS for events and status; 1 means at-least-once (duplicates possible, no loss).", lo=0, hi=2)
    keepalive_s: int = _opt(60, "Keepalive, seconds: how soon the broker notices a dead sensor.", lo=5, hi=3600)
    reconnect_min_s: float = _opt(1.0, "First reconnect delay, seconds (doubles per failure, with jitter).", gt=0.0)
    reconnect_max_s: float = _opt(60.0, "Longest reconnect delay, seconds.", gt=0.0, hi=3600.0)
    max_inflight: int = _opt(10, "Events sent but not yet acknowledged, at most.", lo=1, hi=1000)

    def effective_client_id(self, sensor_id: str) -> str:
        return self.client_id or f"custom-sensor-{sensor_id}"


@dataclass(frozen=True)
class SpoolConfig:
    """The on-disk queue that holds every event until the broker acknowledges it."""

    path: Path = _opt(STATE_DIR / "spool.sqlite", "SQLite spool file; its folder must be writable.")
    max_rows: int = _opt(100000, "Most events kept; when full the oldest are dropped (and counted).", lo=1)
    max_bytes: int = _opt(
        50_000_000, "Most payload bytes kept; when full the oldest are dropped (and counted).", lo=1024
    )
    memory_rows: int = _opt(1000, "Events held in memory while the spool cannot be written.", lo=1, hi=1_000_000)
    drain_per_s: float = _opt(20.0, "Publish rate, events per second, while a backlog drains.", gt=0.0)


@dataclass(frozen=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery."""

    discovery: bool = _opt(False, "Publish Home Assistant discovery messages.")
    prefix: str = _opt("homeassistant", "Home Assistant discovery prefix.", pattern=_TOPIC_PREFIX)


@dataclass(frozen=True)
class Config:
    """custom-sensord settings."""

    sensor_id: str = _opt(
        "sensor-01",
        "Unique id of this sensor; used in topics and events. Letters, digits, '_', '-', '.'.",
        pattern=_TOPIC_LEVEL,
    )
    location: LocationConfig = _opt(factory=LocationConfig, doc="Where the sensor is.")
    audio: AudioConfig = _opt(factory=AudioConfig, doc="Audio capture.")
    window: WindowConfig = _opt(factory=WindowConfig, doc="Windowing.")
    model: ModelConfig = _opt(factory=ModelConfig, doc="Model.")
    mqtt: MqttConfig = _opt(factory=MqttConfig, doc="MQTT broker.")
    spool: SpoolConfig = _opt(factory=SpoolConfig, doc="Spool.")
    health_interval_s: float = _opt(60.0, "Seconds between health messages.", lo=1.0, hi=86400.0)
    log_level: str = _opt("INFO", "Log level.", choices=LOG_LEVELS)
    home_assistant: HomeAssistantConfig = _opt(factory=HomeAssistantConfig, doc="Home Assistant.")

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
        raise ConfigError(str(path), f"cannot read config: {_os_reason(exc)}") from None
    data, lines = _load_yaml(text, str(path))
    try:
        return parse_config({} if data is None else data, path.resolve().parent)
    except ConfigError as exc:
        line = _line_of(exc.key_path, lines)
        if line is None:
            raise
        raise ConfigError(exc.key_path, f"{exc.message} (line {line})") from None


def parse_config(data: Any, base_dir: str | Path) -> Config:
    """Validate an already-parsed mapping; relative paths resolve against `base_dir` (the config file's folder)."""
    if not isinstance(data, Mapping):
        raise ConfigError("(top level)", f"must be a mapping of keys, got {_type_name(data)}")
    config = _build(Config, data, "", Path(base_dir))
    _check_cross_fields(config)
    return config


def _load_yaml(text: str, where: str) -> tuple[Any, dict[str, int]]:
    """YAML -> (Python data, key path -> line number), refusing duplicate keys (PyYAML keeps the last one silently,
    hiding a typo'd override)."""
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None, lines
        _index_keys(node, "", lines)
        return yaml.safe_load(text), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}{at}", f"invalid YAML: {one_line(problem)}") from None
    except RecursionError:
        raise ConfigError(where, "invalid YAML: nested too deeply") from None


def _index_keys(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = _key(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(key_node, yaml.ScalarNode) and path in lines:
                raise ConfigError(path, f"duplicate key (line {key_node.start_mark.line + 1})")
            lines[path] = key_node.start_mark.line + 1
            _index_keys(value_node, path, lines)


def _line_of(key_path: str, lines: Mapping[str, int]) -> int | None:
    """Line of the key, or of its nearest parent that is in the file (a missing key is reported on its section)."""
    while key_path:
        if key_path in lines:
            return lines[key_path]
        key_path = key_path.rpartition(".")[0]
    return None


_T = typing.TypeVar("_T", bound="DataclassInstance")


def _build(cls: type[_T], data: Mapping[Any, Any], prefix: str, base_dir: Path) -> _T:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for key in data:
        if not isinstance(key, str) or key not in fields:
            where = _join(prefix, _key(key))
            known = ", ".join(fields)
            raise ConfigError(where, f"unknown key (known here: {known})")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(data[name], hints[name], f.metadata, _join(prefix, name), base_dir)
    return cls(**values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, tp: Any, rules: Mapping[str, Any], path: str, base_dir: Path) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if value is None:  # an empty section, e.g. "mqtt:" with everything commented out
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"must be a mapping, got {_type_name(value)}")
        return _build(tp, value, path, base_dir)
    options = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(path, f"must be {_describe_types(options)}, got null")
    for option in options:
        if option is type(None):
            continue
        converted = _as_type(value, option, rules, path, base_dir)
        if converted is not _NO_MATCH:
            _check_rules(converted, rules, path)
            return converted
    raise ConfigError(path, f"must be {_describe_types(options)}, got {_type_name(value)} {_show(value)}")


_NO_MATCH = object()


def _as_type(value: Any, tp: Any, rules: Mapping[str, Any], path: str, base_dir: Path) -> Any:
    """`value` as type `tp`, or _NO_MATCH. Strict: YAML's `yes` is not an int and `"1883"` is not a port."""
    if tp is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(path, f"must be a finite number, got {value}")
            return float(value)
        return _NO_MATCH
    if tp is str:
        if not isinstance(value, str):
            return _NO_MATCH
        if not value.strip():
            raise ConfigError(path, "must not be empty")
        return value
    if tp is Path:
        if not isinstance(value, str):
            return _NO_MATCH
        if not value.strip() or "\0" in value:
            raise ConfigError(path, f"must be a file path, got {_show(value)}")
        resolved = base_dir / Path(value)  # an absolute value replaces base_dir
        return Path(resolved.as_posix())
    if typing.get_origin(tp) is Mapping:
        if not isinstance(value, Mapping):
            return _NO_MATCH
        out: dict[str, float] = {}
        for k, v in value.items():
            where = f"{path}.{_key(k)}"
            if not isinstance(k, str) or not k.strip():
                raise ConfigError(where, "keys must be non-empty strings")
            item_rules = {"lo": rules.get("value_lo"), "hi": rules.get("value_hi")}
            item = _as_type(v, float, {}, where, base_dir)
            if item is _NO_MATCH:
                raise ConfigError(where, f"must be a number, got {_type_name(v)} {_show(v)}")
            _check_rules(item, item_rules, where)
            out[k] = item
        return types.MappingProxyType(out)
    raise TypeError(f"config field type {tp!r} not supported")  # a bug in this module, not in the user's file


def _check_rules(value: Any, rules: Mapping[str, Any], path: str) -> None:
    lo, hi, gt = rules.get("lo"), rules.get("hi"), rules.get("gt")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise ConfigError(path, f"must be {_num(lo)}..{_num(hi)}, got {_num(value)}")
        if lo is not None and value < lo:
            raise ConfigError(path, f"must be >= {_num(lo)}, got {_num(value)}")
        if gt is not None and value <= gt:
            raise ConfigError(path, f"must be > {_num(gt)}, got {_num(value)}")
        if hi is not None and value > hi:
            raise ConfigError(path, f"must be <= {_num(hi)}, got {_num(value)}")
    if isinstance(value, str):
        choices = rules.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(path, f"must be one of {', '.join(choices)}, got {_show(value)}")
        pattern = rules.get("pattern")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise ConfigError(path, f"must match {pattern}, got {_show(value)}")
    if isinstance(value, Path) and rules.get("exists") == "file":
        try:
            ok = value.is_file()
        except OSError:
            ok = False
        if not ok:
            raise ConfigError(path, f"file not found: {value}")


def _check_cross_fields(config: Config) -> None:
    """Rules that involve two keys; the message names the key a user would change."""
    if config.window.hop_s > config.window.length_s:
        raise ConfigError(
            "window.hop_s",
            f"must be <= window.length_s ({_num(config.window.length_s)}), got {_num(config.window.hop_s)}",
        )
    mqtt = config.mqtt
    if mqtt.reconnect_min_s > mqtt.reconnect_max_s:
        raise ConfigError(
            "mqtt.reconnect_min_s",
            f"must be <= mqtt.reconnect_max_s ({_num(mqtt.reconnect_max_s)}), got {_num(mqtt.reconnect_min_s)}",
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


# ---------------------------------------------------------------------------------------------------------- helpers


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _key(key: Any) -> str:
    """A key as it appears in a key path: plain if it reads cleanly, repr() if empty, odd or not a string."""
    if isinstance(key, str) and key and key.isprintable() and key == key.strip():
        return key
    return _show(key)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def one_line(text: object) -> str:
    """Any message or exception squeezed onto one line, for the one-line errors and the journal."""
    return " ".join(str(text).split())


def _show(value: Any) -> str:
    text = one_line(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _describe_types(options: tuple[Any, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", Path: "a file path"}
    words = [names.get(o, "a mapping") for o in options if o is not type(None)]
    text = " or ".join(words)
    return text + " or null" if type(None) in options else text


def _os_reason(exc: BaseException) -> str:
    return one_line(getattr(exc, "strerror", None) or str(exc))


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
