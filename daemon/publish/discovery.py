"""Home Assistant MQTT discovery: the retained config messages that make one HA device per sensor.

`discovery_messages` / `removal_messages` are pure; `Discovery` owns what this sensor has announced and sends it
through the publisher (QoS 1, retained): after every connect, again when Home Assistant announces itself `online` on
`<discovery_prefix>/status` (its birth message, so HA rebuilds the device even if the broker lost its retained
messages), and removals when discovery is switched off or entities go away. Everything HA shows is derived from the
messages the sensor already publishes:

- `<prefix>/<sensor_id>/events` (one JSON event per window, see event.schema.json) feeds every entity through a
  value_template, so no extra state topics and no extra traffic;
- `<prefix>/<sensor_id>/status` (retained `online`, last will `offline`) is every entity's availability.

Topic layout follows HA's `<discovery_prefix>/<component>/<node_id>/<object_id>/config`, with the sensor id as
node_id, which is what the broker ACL example (deploy/mosquitto/acl) lets a sensor write (and read HA's status).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from custom.wire.topics import Topics

from ..version import package_version

NOTHING_HEARD = "none"  # the top-class entity's state when no class reached its threshold (event top.name null)

log = logging.getLogger(__name__)
# HA's allowed characters for node_id and object_id in a discovery topic.
_HA_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]+")
# Units HA accepts for device_class sound_pressure; dBFS is relative to full scale, not a sound pressure level.
_HA_SOUND_PRESSURE_UNITS = {"dB(A)": "dBA", "dB": "dB", "dBA": "dBA"}


@dataclass(frozen=True)
class DeviceInfo:
    """What HA shows on the device page; the identifiers are derived from the sensor id, never given."""

    name: str | None = None  # None: "custom-sensor <sensor_id>"
    model: str = "custom-sensor urban sound classifier"
    manufacturer: str = "custom-sensor project"
    sw_version: str | None = None  # None: the installed package's version
    suggested_area: str | None = None


def ha_id(text: str) -> str:
    """`text` reduced to the characters HA allows in a discovery topic level and in unique ids."""
    cleaned = _HA_ID_CHARS.sub("_", text).strip("_")
    if not cleaned:
        raise ValueError(f"{text!r} has no characters usable in a Home Assistant id")
    return cleaned


def _device_block(sensor_id: str, device: DeviceInfo) -> dict[str, Any]:
    block: dict[str, Any] = {
        "identifiers": [f"custom_sensor_{ha_id(sensor_id)}"],
        "name": device.name or f"custom-sensor {sensor_id}",
        "model": device.model,
        "manufacturer": device.manufacturer,
        "sw_version": device.sw_version or package_version(),
    }
    if device.suggested_area:
        block["suggested_area"] = device.suggested_area
    return block


def _class_template(class_name: str) -> str:
    """Jinja that renders ON when `class_name` is among the event's labels (scores above threshold)."""
    literal = json.dumps(class_name)  # a double-quoted string literal, valid in Jinja too
    return f"{{{{ 'ON' if value_json.labels | selectattr('name', 'eq', {literal}) | list | count > 0 else 'OFF' }}}}"


def _config_topics(
    sensor_id: str, class_names: Sequence[str], discovery_prefix: str
) -> list[tuple[str, str, str | None]]:
    """(config topic, object id, class name or None) for every entity, in the order they are published."""
    node = ha_id(sensor_id)
    entries: list[tuple[str, str, str | None]] = [
        (f"{discovery_prefix}/sensor/{node}/top_class/config", "top_class", None),
        (f"{discovery_prefix}/sensor/{node}/sound_level/config", "sound_level", None),
    ]
    seen: set[str] = set()
    for name in class_names:
        object_id = f"detected_{ha_id(name).lower()}"
        if object_id in seen:
            raise ValueError(f"class names {list(class_names)} map to the same Home Assistant id {object_id!r}")
        seen.add(object_id)
        entries.append((f"{discovery_prefix}/binary_sensor/{node}/{object_id}/config", object_id, name))
    return entries


def discovery_messages(
    topics: Topics,
    class_names: Iterable[str],
    *,
    level_unit: str = "dBFS",
    device: DeviceInfo | None = None,
) -> list[tuple[str, str]]:
    """(topic, JSON payload) pairs to publish retained: one HA device with a top-class sensor, a sound-level sensor
    and one binary sensor per class.

    `level_unit` is what the events' level.unit will be ("dBFS" uncalibrated, "dB(A)" with a calibration offset):
    only a calibrated level is a sound pressure to HA, so only then does the entity get that device class.
    """
    names = list(class_names)
    if not names:
        raise ValueError("no class names: the bundle's classes are needed to announce per-class entities")
    sensor_id = topics.sensor_id
    common: dict[str, Any] = {
        "state_topic": topics.events,
        "availability_topic": topics.status,
        "payload_available": topics.ONLINE,
        "payload_not_available": topics.OFFLINE,
        "device": _device_block(sensor_id, device or DeviceInfo()),
        "origin": {"name": "custom-sensor", "sw_version": package_version()},
        "qos": 1,
    }
    uid = f"custom_sensor_{ha_id(sensor_id)}"
    messages: list[tuple[str, str]] = []
    for topic, object_id, class_name in _config_topics(sensor_id, names, topics.discovery_prefix):
        config: dict[str, Any] = {"unique_id": f"{uid}_{object_id}", **common}
        if object_id == "top_class":
            config.update(
                name="Top class",
                icon="mdi:waveform",
                device_class="enum",
                options=[*names, NOTHING_HEARD],
                value_template="{{ value_json.top.name or '" + NOTHING_HEARD + "' }}",
                json_attributes_topic=common["state_topic"],
                json_attributes_template="{{ value_json.scores | tojson }}",
            )
        elif object_id == "sound_level":
            ha_unit = _HA_SOUND_PRESSURE_UNITS.get(level_unit)
            config.update(
                name="Sound level",
                state_class="measurement",
                unit_of_measurement=ha_unit or level_unit,
                suggested_display_precision=1,
                # A null LAeq (no level this window) renders as "None", which HA takes as "unknown".
                value_template="{{ value_json.level.laeq }}",
            )
            if ha_unit:
                config["device_class"] = "sound_pressure"
            else:
                config["icon"] = "mdi:volume-high"
        else:
            assert class_name is not None
            config.update(
                name=class_name,
                device_class="sound",
                payload_on="ON",
                payload_off="OFF",
                value_template=_class_template(class_name),
            )
        messages.append((topic, json.dumps(config, sort_keys=True)))
    return messages


def removal_messages(topics: Topics, class_names: Iterable[str]) -> list[tuple[str, str]]:
    """(topic, "") pairs to publish retained: an empty retained config makes HA delete the entity and the broker
    forget the config, so a decommissioned sensor does not come back when HA restarts."""
    entries = _config_topics(topics.sensor_id, list(class_names), topics.discovery_prefix)
    return [(topic, "") for topic, _, _ in entries]


Send = Callable[..., bool]  # Publisher.send_if_connected(topic, payload, qos=..., retain=...): False if offline


class Discovery:
    """What this sensor has told Home Assistant, kept true on the broker: announces, re-announces and removes itself.

    `update` (main thread, at start and on reload) sets the wanted configs; `on_connect` and `on_ha_status` (the
    publisher's network thread) re-send them. One lock orders every send, so a re-announce can never land after a
    removal it predates: whatever is sent last reflects the latest `update`. Removals are repeated on every later
    connect too (an empty retained message is idempotent), so one dropped while the broker was away is not lost.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._send: Send | None = None
        self._wanted: list[tuple[str, str]] = []
        self._removed: dict[str, str] = {}

    def attach(self, send: Send | None) -> None:
        """The publisher to send through (None while there is none); the caller then starts it."""
        with self._lock:
            self._send = send

    def update(self, topics: Topics, class_names: Sequence[str], *, enabled: bool, level_unit: str = "dBFS") -> None:
        """Announce these entities (or none when not `enabled`); configs no longer wanted are removed first."""
        wanted = discovery_messages(topics, class_names, level_unit=level_unit) if enabled else []
        with self._lock:
            wanted_topics = {topic for topic, _ in wanted}
            gone = [(topic, "") for topic, _ in self._wanted if topic not in wanted_topics]
            for topic, _ in gone:
                self._removed[topic] = ""
            for topic in wanted_topics:
                self._removed.pop(topic, None)
            changed = wanted != self._wanted
            self._wanted = wanted
            self._send_all(gone + (wanted if changed else []))
        if gone:
            log.info("Home Assistant discovery removed for sensor %s (%d entities)", topics.sensor_id, len(gone))

    def on_connect(self, connected: bool, detail: str = "") -> None:
        """Publisher `on_state`: after every connect, (re)send removals then the wanted configs."""
        if connected:
            self.resend()

    def on_ha_status(self, payload: bytes) -> None:
        """Home Assistant's birth message: HA (re)started and may have lost its entities; announce again."""
        if payload.strip().lower() == Topics.ONLINE.encode():
            log.info("Home Assistant is online: re-sending discovery configs")
            self.resend()

    def resend(self) -> None:
        with self._lock:
            self._send_all(list(self._removed.items()) + self._wanted)

    def _send_all(self, messages: list[tuple[str, str]]) -> None:
        """Under the lock. Dropped when disconnected: the next connect re-sends the whole state."""
        if self._send is None:
            return
        for topic, payload in messages:
            if not self._send(topic, payload, qos=1, retain=True):
                return
