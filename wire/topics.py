"""Every MQTT topic of the system, built and parsed in one place: `<prefix>/<sensor_id>/<kind>`.

The sensor builds its own topics (`Topics`: events, summary, status, health, Home Assistant's); the fleet subscribes
to every sensor's (`subscription`), republishes a summary under its sensor's topic (`sensor_topic`), keeps its own
levels under `<prefix>/_...` (`fleet_topic`) and reads whose a message is from its topic (`parse_sensor_topic`), never
from the payload. The broker binds a client's credentials to its topics (deploy/mosquitto/acl: user X writes only
`<prefix>/X/#`), so the topic is the one part of a message a stolen or misconfigured sensor cannot forge; a
`sensor_id` inside the payload is only a claim, checked against it by the ingest's judge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

# One topic level safe for ids and prefixes: no wildcards, no separators, nothing a shell or HA would choke on.
TOPIC_LEVEL = r"[A-Za-z0-9_.-]{1,64}"
TOPIC_PREFIX = rf"{TOPIC_LEVEL}(/{TOPIC_LEVEL})*"  # the sensor's prefix may have levels; the ingest's is one level
SENSOR_ID = re.compile(TOPIC_LEVEL)  # the sensor_id rule; also one topic level
RESERVED = "_"  # <prefix>/_ingest/, <prefix>/_alerts/: the fleet's own levels, never a sensor (deploy/mosquitto/acl)
KINDS = ("events", "summary")  # what a sensor sends the fleet (QoS 1, through its spool)


class TopicError(ValueError):
    """A topic that is not a sensor's events or summary topic under the configured prefix."""


@dataclass(frozen=True)
class SensorTopic:
    sensor_id: str
    kind: str  # one of KINDS


def sensor_topic(prefix: str, sensor_id: str, kind: str) -> str:
    """`<prefix>/<sensor_id>/<kind>`; `sensor_id` "+" gives the subscription filter for every sensor."""
    return f"{prefix}/{sensor_id}/{kind}"


def subscription(prefix: str, kind: str, group: str) -> str:
    """Every sensor's `kind` topic as an MQTT 5 shared subscription: each ingest in `group` gets a share."""
    return f"$share/{group}/{sensor_topic(prefix, '+', kind)}"


def fleet_topic(prefix: str, level: str, name: str, *rest: str) -> str:
    """The fleet's own topics, `<prefix>/_<level>/<name>[/...]` (e.g. `_alerts/<sensor>`, `_ingest/<client>/health`):
    under the reserved level no sensor id can take."""
    return "/".join((prefix, f"{RESERVED}{level}", name, *rest))


def parse_sensor_topic(topic: str, prefix: str) -> SensorTopic:
    """`<prefix>/<sensor_id>/<kind>` -> its parts, or TopicError saying what is wrong (one line, topic cut short)."""
    parts = topic.split("/")
    shown = repr(topic[:80])
    if len(parts) != 3 or parts[0] != prefix:
        raise TopicError(f"topic {shown} is not {prefix}/<sensor_id>/{'|'.join(KINDS)}")
    sensor_id, kind = parts[1], parts[2]
    if not SENSOR_ID.fullmatch(sensor_id):
        raise TopicError(f"topic {shown}: {sensor_id[:80]!r} is not a sensor id (1-64 of A-Z a-z 0-9 _ . -)")
    if sensor_id.startswith(RESERVED):
        raise TopicError(f"topic {shown}: a sensor id never starts with {RESERVED!r} (the fleet's own topics)")
    if kind not in KINDS:
        raise TopicError(f"topic {shown}: {kind[:80]!r} is not one of {', '.join(KINDS)}")
    return SensorTopic(sensor_id, kind)


@dataclass(frozen=True)
class Topics:
    """One sensor's topics: `<prefix>/<sensor_id>/...` for its own messages, `<discovery_prefix>/...` for Home
    Assistant's. The publisher, Home Assistant discovery and the config all read the same value."""

    prefix: str
    sensor_id: str
    discovery_prefix: str = "homeassistant"

    # Availability payloads (retained on `status`; `offline` is also the last will) and HA's birth message.
    ONLINE: ClassVar[str] = "online"
    OFFLINE: ClassVar[str] = "offline"

    @property
    def events(self) -> str:
        return sensor_topic(self.prefix, self.sensor_id, "events")

    @property
    def summary(self) -> str:
        """Hourly noise and class summaries (QoS 1, through the spool like events)."""
        return sensor_topic(self.prefix, self.sensor_id, "summary")

    @property
    def status(self) -> str:
        return sensor_topic(self.prefix, self.sensor_id, "status")

    @property
    def health(self) -> str:
        return sensor_topic(self.prefix, self.sensor_id, "health")

    @property
    def ha_status(self) -> str:
        """Where Home Assistant announces itself (`online` after every HA start): configs are re-sent then."""
        return f"{self.discovery_prefix}/status"
