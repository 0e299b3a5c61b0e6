"""Home Assistant discovery: the configs are what HA needs, their templates read real events, and they travel
retained through the example broker under the sensor's own ACL.

Templates are rendered with Jinja2's sandbox the way HA renders MQTT value templates (`value_json` is the parsed
payload), against events made by the daemon's own event builder and checked against event.schema.json.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import jsonschema
import pytest

from custom.convert.classes import CLASS_NAMES
from custom.daemon.config import MqttConfig
from custom.daemon.publish.discovery import DeviceInfo, Discovery, discovery_messages, ha_id, removal_messages
from custom.daemon.publish.event import EventContext
from custom.daemon.publish.publisher import Publisher
from custom.daemon.publish.spool import Spool
from custom.wire.topics import Topics

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "wire" / "event.schema.json").read_text())
# What HA's MQTT discovery requires or this project promises for every entity, per platform.
COMMON_KEYS = {"name", "unique_id", "state_topic", "value_template", "availability_topic", "payload_available",
               "payload_not_available", "device"}  # fmt: skip
PLATFORM_KEYS = {"sensor": set(), "binary_sensor": {"payload_on", "payload_off"}}
DEVICE_KEYS = {"identifiers", "name", "model", "manufacturer", "sw_version"}
HA_TOPIC = re.compile(r"^homeassistant/(sensor|binary_sensor)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config$")


def make_event(sensor_id: str, scores: list[float], level_db: float, unit: str = "dBFS") -> dict:
    context = EventContext(
        sensor_id=sensor_id,
        location={"lat": 40.4, "lon": -3.7},
        class_names=CLASS_NAMES,
        thresholds=tuple(0.5 for _ in CLASS_NAMES),
        bundle_id="test",
        bundle_sha256="0" * 64,
        level_unit=unit,
    )
    figure = round(level_db, 1) if math.isfinite(level_db) else None
    levels = {name: figure for name in ("laeq", "lafmax", "lafmin", "la10", "la50", "la90")} | {"unit": unit}
    event = context.build(
        scores, start=1_700_000_000.0, end=1_700_000_010.0, levels=levels, processing_ms=12.0
    ).to_json()
    jsonschema.validate(event, SCHEMA)
    return event


def render(template: str, payload: dict) -> str:
    sandbox = pytest.importorskip("jinja2.sandbox", reason="needs jinja2 (the test extra) to render HA templates")
    env = sandbox.ImmutableSandboxedEnvironment()
    env.policies["json.dumps_kwargs"] = {"sort_keys": True}
    return env.from_string(template).render(value_json=payload, value=json.dumps(payload)).strip()


def configs(**kwargs) -> dict[str, dict]:
    return {
        topic: json.loads(payload)
        for topic, payload in discovery_messages(Topics("custom", "sensor-01"), CLASS_NAMES, **kwargs)
    }


def test_every_config_has_the_fields_home_assistant_requires() -> None:
    found = configs()
    assert len(found) == 2 + len(CLASS_NAMES)
    for topic, config in found.items():
        platform = HA_TOPIC.match(topic).group(1)
        missing = (COMMON_KEYS | PLATFORM_KEYS[platform]) - config.keys()
        assert not missing, f"{topic} lacks {missing}"
        assert config["state_topic"] == "custom/sensor-01/events"
        assert config["availability_topic"] == "custom/sensor-01/status"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        assert config["device"].keys() >= DEVICE_KEYS
        assert config["device"]["identifiers"] == ["custom_sensor_sensor-01"]
    assert len({c["unique_id"] for c in found.values()}) == len(found), "unique_id must be unique"
    platforms = sorted(HA_TOPIC.match(t).group(1) for t in found)
    assert platforms.count("sensor") == 2 and platforms.count("binary_sensor") == len(CLASS_NAMES)


def test_sound_level_is_a_sound_pressure_only_when_calibrated() -> None:
    level = "homeassistant/sensor/sensor-01/sound_level/config"
    uncalibrated = configs(level_unit="dBFS")[level]
    assert uncalibrated["unit_of_measurement"] == "dBFS" and "device_class" not in uncalibrated
    calibrated = configs(level_unit="dB(A)")[level]
    assert calibrated["unit_of_measurement"] == "dBA" and calibrated["device_class"] == "sound_pressure"
    assert calibrated["state_class"] == "measurement"


def test_templates_read_real_events() -> None:
    found = configs()
    scores = [0.0] * len(CLASS_NAMES)
    scores[CLASS_NAMES.index("Siren")] = 0.9
    scores[CLASS_NAMES.index("Subway/metro")] = 0.6
    scores[CLASS_NAMES.index("Dog")] = 0.3  # below its threshold: not a label
    event = make_event("sensor-01", scores, level_db=-31.24)

    assert render(found["homeassistant/sensor/sensor-01/top_class/config"]["value_template"], event) == "Siren"
    top = found["homeassistant/sensor/sensor-01/top_class/config"]
    assert "Siren" in top["options"]
    assert json.loads(render(top["json_attributes_template"], event)) == event["scores"]
    assert render(found["homeassistant/sensor/sensor-01/sound_level/config"]["value_template"], event) == "-31.2"
    states = {
        config["name"]: render(config["value_template"], event)
        for topic, config in found.items()
        if topic.startswith("homeassistant/binary_sensor/")
    }
    assert states == {name: "ON" if name in ("Siren", "Subway/metro") else "OFF" for name in CLASS_NAMES}


def test_a_window_without_level_renders_none() -> None:
    event = make_event("sensor-01", [0.1] * len(CLASS_NAMES), level_db=float("-inf"))
    template = configs()["homeassistant/sensor/sensor-01/sound_level/config"]["value_template"]
    assert render(template, event) == "None"  # HA's MQTT sensor takes "None" as unknown


def test_device_info_and_odd_sensor_ids() -> None:
    device = DeviceInfo(name="Kiosk 3", sw_version="9")
    messages = discovery_messages(Topics("city", "kiosk.3", "ha"), ["Dog"], device=device)
    topics = [t for t, _ in messages]
    assert topics[0] == "ha/sensor/kiosk_3/top_class/config"
    config = json.loads(messages[0][1])
    assert config["device"]["name"] == "Kiosk 3" and config["device"]["sw_version"] == "9"
    assert config["state_topic"] == "city/kiosk.3/events"  # the sensor's own topics keep the real id
    with pytest.raises(ValueError):
        discovery_messages(Topics("custom", "s"), [])
    with pytest.raises(ValueError):
        discovery_messages(Topics("custom", "s"), ["Dog", "dog"])  # same HA id
    with pytest.raises(ValueError):
        ha_id("///")


def test_removal_empties_every_config_topic() -> None:
    removal = removal_messages(Topics("custom", "sensor-01"), CLASS_NAMES)
    assert [t for t, _ in removal] == list(configs())
    assert all(payload == "" for _, payload in removal)


def test_configs_travel_retained_through_the_example_broker(clients) -> None:
    """Published by the sensor's own account (the ACL lets it write only homeassistant/+/<sensor_id>/#), read by
    HA's account after the fact: retained, valid JSON, then gone after removal."""
    messages = discovery_messages(Topics("custom", "sensor-a"), CLASS_NAMES)
    sensor = clients("sensor-a")
    assert not sensor.connect().is_failure
    for topic, payload in messages:
        assert not sensor.publish(topic, payload, retain=True).is_failure, topic
    # Another sensor's device must not be forgeable.
    forged = discovery_messages(Topics("custom", "sensor-b"), ["Dog"])[0]
    assert sensor.publish(*forged, retain=True).value == 135

    ha = clients("homeassistant")
    assert not ha.connect().is_failure
    ha.subscribe("homeassistant/#")
    got = ha.wait_messages(len(messages))
    assert all(m.retain for m in got), "discovery configs must be retained"
    assert {m.topic: json.loads(m.payload) for m in got} == {t: json.loads(p) for t, p in messages}

    for topic, payload in removal_messages(Topics("custom", "sensor-a"), CLASS_NAMES):
        assert not sensor.publish(topic, payload, retain=True).is_failure
    late = clients("homeassistant", client_id="test-homeassistant-late")
    late.connect()
    late.subscribe("homeassistant/#")
    # A sentinel after the subscription: every retained config still there would have come before it.
    sensor_status = "custom/sensor-a/status"
    late.subscribe(sensor_status)
    assert not sensor.publish(sensor_status, "online").is_failure
    seen = late.wait_until(lambda m: m.topic == sensor_status)
    assert [t for t, _ in seen if t.startswith("homeassistant/")] == []


def test_removal_made_while_the_broker_is_down_reaches_it_on_reconnect(broker, subscriber_factory, tmp_path) -> None:
    """Discovery switched off while the connection is gone (the removals cannot be sent then): the next connect
    sends them before anything else, and never re-announces what was removed."""
    topics = Topics("custom", "sensor-01")
    discovery = Discovery()
    with Spool(tmp_path / "spool.sqlite", max_rows=100, max_bytes=10**6) as spool:
        mqtt = MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.3, keepalive_s=5)
        publisher = Publisher(mqtt, topics, spool, on_state=discovery.on_connect)
        discovery.attach(publisher.send_if_connected)
        discovery.update(topics, CLASS_NAMES, enabled=True)
        publisher.start()
        try:
            announced = [t for t, _ in discovery_messages(topics, CLASS_NAMES)]
            watcher = subscriber_factory(broker, ["homeassistant/#"])
            assert watcher.wait_for(lambda ms: {m.topic for m in ms if m.payload} >= set(announced), timeout=10)

            broker.stop()  # persistence keeps the retained configs over the restart
            assert _disconnected(publisher)
            discovery.update(topics, CLASS_NAMES, enabled=False)
            broker.start()
            assert publisher.wait_connected(10)
            publisher.stop(timeout=5.0)  # a clean stop waits for the PUBACKs of everything queued on the connect
            late = subscriber_factory(broker, ["homeassistant/#"])
            assert late.settle("homeassistant/probe", timeout=10)
            assert {m.topic for m in late.messages if m.payload} == set()
        finally:
            publisher.stop(timeout=2.0)


def _disconnected(publisher: Publisher, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while publisher.connected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
