"""Config: the shipped default, one-line errors that name the key, and no exception but ConfigError on any input."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custom.daemon.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    render_default_config,
)
from testing.config_trees import KEYS, keys, leaf_fields, trees

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message, "check-config prints one line"
    return message


# --------------------------------------------------------------------------------------------------- the default


def test_shipped_config_is_the_generated_one():
    assert SHIPPED.read_text() == render_default_config(), (
        "config.yaml is generated: run python -c 'from custom.daemon.config import render_default_config as r; "
        'open("config.yaml", "w").write(r())\''
    )


def test_shipped_config_loads_to_the_defaults():
    assert load_config(SHIPPED) == Config()


def test_every_key_is_documented_in_the_shipped_file():
    lines = SHIPPED.read_text().splitlines()
    for path, f in leaf_fields():
        assert f.metadata.get("doc"), f"{path} has no doc"
        leaf = path.rsplit(".", 1)[-1]
        indent = "  " * path.count(".")
        hits = [i for i, line in enumerate(lines) if line.startswith(f"{indent}{leaf}:")]
        assert hits, f"{path} missing from config.yaml"
        assert any(lines[i - 1].lstrip().startswith("#") for i in hits), f"{path} has no comment above it"


def test_empty_file_means_all_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "mqtt:\n")) == Config()


def test_values_are_read_and_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "pw").write_text("secret\n")
    config = load_config(
        write(
            tmp_path,
            """
            sensor_id: plaza-3
            location: {lat: 40.1, lon: -3.5, name: Plaza, height_m: 4}
            audio: {device: 2, sample_rate_hz: 48000, channels: 2, calibration_db: 94.5}
            window: {length_s: 10, hop_s: 5}
            model: {bundle: bundles/yamnet, threads: 4, thresholds: {Siren: 0.3, Dog bark: 1}}
            mqtt:
              host: broker.local
              port: 8883
              tls: {enabled: true, ca: ca.pem}
              username: sensor
              password_file: pw
              topic_prefix: city/noise
            spool: {path: /data/spool.sqlite, max_rows: 10}
            log_level: DEBUG
            home_assistant: {discovery: true}
            """,
        )
    )
    assert config.sensor_id == "plaza-3"
    assert config.location.to_event() == {"lat": 40.1, "lon": -3.5, "name": "Plaza", "height_m": 4.0}
    assert config.audio.device == 2 and config.audio.calibration_db == 94.5
    assert config.window.hop_s == 5.0
    assert config.model.bundle == tmp_path / "bundles/yamnet"
    assert dict(config.model.thresholds) == {"Siren": 0.3, "Dog bark": 1.0}
    assert config.mqtt.tls.ca == tmp_path / "ca.pem" and config.mqtt.password_file == tmp_path / "pw"
    assert config.spool.path == Path("/data/spool.sqlite")
    assert config.topics.events == "city/noise/plaza-3/events"
    assert config.mqtt.effective_client_id(config.sensor_id) == "custom-sensor-plaza-3"
    assert config.home_assistant.discovery
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sensor_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.model.thresholds["Siren"] = 0.9  # type: ignore[index]


def test_audio_device_may_be_a_name(tmp_path):
    assert load_config(write(tmp_path, "audio: {device: 'USB Audio'}")).audio.device == "USB Audio"


# ------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt: {port: 70000}", "mqtt.port: must be 1..65535, got 70000"),
        ("mqtt: {port: '1883'}", "mqtt.port: must be an integer, got string '1883'"),
        ("mqtt: {port: true}", "mqtt.port: must be an integer, got bool"),
        ("mqtt: {prot: 1}", "mqtt.prot: unknown key"),
        ("mqtt: {tls: {enable: true}}", "mqtt.tls.enable: unknown key"),
        ("sensor: x", "sensor: unknown key"),
        ("mqtt: 5", "mqtt: must be a mapping, got int"),
        ("mqtt: {qos: 3}", "mqtt.qos: must be 0..2"),
        ("mqtt: {topic_prefix: 'a/#'}", "mqtt.topic_prefix: must match"),
        ("sensor_id: 'a/b'", "sensor_id: must match"),
        ("sensor_id: ''", "sensor_id: must not be empty"),
        ("sensor_id: null", "sensor_id: must be a string, got null"),
        ("location: {lat: 91}", "location.lat: must be -90..90, got 91"),
        ("location: {lon: .nan}", "location.lon: must be a finite number"),
        ("audio: {device: 1.5}", "audio.device: must be a string or an integer or null, got float 1.5"),
        ("audio: {device: -1}", "audio.device: must be >= 0, got -1"),
        ("window: {length_s: 0}", "window.length_s: must be > 0, got 0"),
        ("window: {hop_s: 12}", "window.hop_s: must be <= window.length_s (10), got 12"),
        ("model: {thresholds: {Siren: 1.5}}", "model.thresholds.Siren: must be 0..1, got 1.5"),
        ("model: {thresholds: {Siren: high}}", "model.thresholds.Siren: must be a number, got string 'high'"),
        ("model: {thresholds: [Siren]}", "model.thresholds: must be a mapping, got list"),
        ("model: {bundle: 3}", "model.bundle: must be a file path, got int 3"),
        ("mqtt: {tls: {enabled: true, ca: missing.pem}}", "mqtt.tls.ca: file not found: "),
        ("mqtt: {username: u, password_file: nope}", "mqtt.password_file: file not found: "),
        ("mqtt: {reconnect_min_s: 90}", "mqtt.reconnect_min_s: must be <= mqtt.reconnect_max_s (60), got 90"),
        ("log_level: verbose", "log_level: must be one of DEBUG, INFO, WARNING, ERROR, got 'verbose'"),
        ("spool: {max_rows: 0}", "spool.max_rows: must be >= 1, got 0"),
        ("- a\n- b", "(top level): must be a mapping of keys, got list"),
        ("mqtt:\n  port: 1\n  port: 2", "mqtt.port: duplicate key (line 3)"),
    ],
)
def test_errors_name_the_key_path(tmp_path, text, expected):
    assert error_of(tmp_path, text).startswith(expected)


def test_errors_from_a_file_give_the_line(tmp_path):
    text = "sensor_id: a\nmqtt:\n  host: x\n  port: 70000\n"
    assert error_of(tmp_path, text) == "mqtt.port: must be 1..65535, got 70000 (line 4)"
    assert error_of(tmp_path, "mqtt:\n  tls:\n    enable: true\n").endswith("(line 3)")
    with pytest.raises(ConfigError) as info:
        parse_config({"mqtt": {"port": 70000}}, tmp_path)
    assert str(info.value) == "mqtt.port: must be 1..65535, got 70000", "no line without a file"


def test_tls_files_need_tls_enabled_and_cert_needs_key(tmp_path):
    (tmp_path / "c.pem").write_text("x")
    assert error_of(tmp_path, "mqtt: {tls: {ca: c.pem}}").startswith("mqtt.tls.ca: is set but mqtt.tls.enabled")
    assert error_of(tmp_path, "mqtt: {tls: {enabled: true, cert: c.pem}}").startswith("mqtt.tls.key: must be set")
    assert error_of(tmp_path, "mqtt: {password_file: c.pem}").startswith("mqtt.password_file: is set but")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    message = error_of(tmp_path, "mqtt:\n  port: [1\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}:3:") and "invalid YAML" in message


def test_missing_config_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'nope.yaml'}: cannot read config")


# -------------------------------------------------------------------------------------------------------- fuzzing


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, trees, max_size=6))
def test_any_structure_gives_a_config_or_a_one_line_config_error(tmp_path_factory, data):
    try:
        config = parse_config(data, tmp_path_factory.getbasetemp())
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).split(":", 1)[0].strip()
    else:
        assert isinstance(config, Config)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(list("ab:- \n\t{}[]'\"#&*!|>%@`0.9\\") + KEYS), max_size=40).map("".join))
def test_any_text_gives_a_config_or_a_one_line_config_error(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_round_trip_through_yaml_of_a_changed_config(tmp_path):
    """render -> edit -> parse: the generated file is valid YAML that the parser takes back."""
    data = yaml.safe_load(render_default_config())
    data["mqtt"]["port"] = 1884
    assert parse_config(data, tmp_path).mqtt.port == 1884


def test_sample_rate_null_means_the_devices_own_rate(tmp_path):
    assert parse_config({"audio": {"sample_rate_hz": None}}, tmp_path).audio.sample_rate_hz is None
    assert parse_config({"audio": {"sample_rate_hz": 48000}}, tmp_path).audio.sample_rate_hz == 48000
    with pytest.raises(ConfigError, match=r"^audio\.sample_rate_hz: "):
        parse_config({"audio": {"sample_rate_hz": 4000}}, tmp_path)
