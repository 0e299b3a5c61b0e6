"""Every MQTT topic and status word the sensor uses, derived in one place from the config.

The publisher (events, status, health), Home Assistant discovery (state and availability topics, the HA birth
topic) and the config all read the same `Topics` value, so a topic name can only be spelled one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Topics:
    """`<prefix>/<sensor_id>/...` for the sensor's own messages, `<discovery_prefix>/...` for Home Assistant's."""

    prefix: str
    sensor_id: str
    discovery_prefix: str = "homeassistant"

    # Availability payloads (retained on `status`; `offline` is also the last will) and HA's birth message.
    ONLINE: ClassVar[str] = "online"
    OFFLINE: ClassVar[str] = "offline"

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.sensor_id}"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def summary(self) -> str:
        """Hourly noise and class summaries (QoS 1, through the spool like events)."""
        return f"{self.base}/summary"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def ha_status(self) -> str:
        """Where Home Assistant announces itself (`online` after every HA start): configs are re-sent then."""
        return f"{self.discovery_prefix}/status"
