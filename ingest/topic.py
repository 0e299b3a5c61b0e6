"""Whose message this is: the topic says, `<prefix>/<sensor_id>/events|summary`, never the payload.

The broker binds a client's credentials to its topics (deploy/mosquitto/acl: user X writes only `<prefix>/X/#`), so
the topic is the one part of a message a stolen or misconfigured sensor cannot forge; a `sensor_id` inside the
payload is only a claim, checked against it by the judge (records.py). This is the ingest's only topic parser (the
daemon builds the same layout in daemon/topics.py); it is one function so it can move, whole, to a package both
sides share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SENSOR_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the daemon's sensor_id rule; also one topic level, no wildcards
RESERVED = "_"  # <prefix>/_ingest/, <prefix>/_alerts/: the fleet's own levels, never a sensor (deploy/mosquitto/acl)
KINDS = ("events", "summary")


class TopicError(ValueError):
    """A topic that is not a sensor's events or summary topic under the configured prefix."""


@dataclass(frozen=True)
class SensorTopic:
    sensor_id: str
    kind: str  # one of KINDS


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
