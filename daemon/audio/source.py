"""What the service needs from an audio source (live microphone or replayed file), and the state it reports.

The service, health and tests read one typed `SourceState` instead of a dict; `to_health` keeps the health
message's `audio` object as it always was (its `mic` key is the status).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Protocol

# opening: never up yet; up: audio flowing; down: lost or failing, being retried; stopped; file/ended: a replay.
SourceStatus = Literal["opening", "up", "down", "stopped", "file", "ended"]


@dataclass(frozen=True)
class SourceState:
    source: Literal["mic", "file"]
    status: SourceStatus
    device: str | None
    rate_hz: float | None
    channels: int
    overflows: int = 0
    gaps: int = 0
    reopens: int = 0
    last_error: str | None = None
    samples: int = 0
    down_for_s: float | None = None

    @property
    def waiting_for_device(self) -> bool:
        """The microphone is missing and being reopened: no windows, but nothing a restart would fix."""
        return self.status in ("down", "opening")

    def to_health(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        status = fields.pop("status")
        return {"source": fields.pop("source"), "mic": status, **fields}


class AudioSource(Protocol):
    """Fills a RingBuffer from its own thread; never raises to the caller once started."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def state(self) -> SourceState: ...
