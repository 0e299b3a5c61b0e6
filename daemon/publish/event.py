"""One event per window: what was heard, when, where, how loud, by which model.

Built in one place for both `classify` (files) and the live daemon, so the two can never disagree on the fields. An
`Event` stays a typed value through the daemon (the service, the summary and the log read its attributes);
`Event.to_json` is the one place that knows its JSON spelling, used where it leaves the process (the publisher's
spool, `classify --json`). The schema is wire/event.schema.json (custom.wire.schemas); tests validate every event they
see against it and pin the spelling (tests/test_event.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from custom.wire.timestamps import iso_utc

SCHEMA_VERSION = 2  # 2: level gained LAFmax/LAFmin/LA10/50/90 (AES17 dBFS); `clock` added
SCORE_DECIMALS = 4


@dataclass(frozen=True)
class Label:
    """A class at or above its threshold, with its (rounded) score."""

    name: str
    score: float


@dataclass(frozen=True)
class Event:
    """One window's answer, as published. Scores are already rounded to SCORE_DECIMALS, as the listener sees them."""

    sensor_id: str
    event_id: str
    start: float  # unix seconds, UTC, of the window's first sample
    end: float
    location: Mapping[str, Any]
    labels: tuple[Label, ...]  # best first
    top_name: str | None  # None: nothing heard (no class at its threshold); top_score is still the best class's
    top_score: float
    scores: Mapping[str, float]  # every class, in the bundle's order
    vetoed: tuple[str, ...] | None  # the classes the bundle's veto scaled down; None: the bundle has no veto
    level: Mapping[str, Any]  # `WindowLevels.to_event()`
    bundle_id: str
    bundle_sha256: str
    processing_ms: float
    clock: Mapping[str, Any] | None = None  # `ClockState.to_event()` at the window start (live only)
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys added at the top level last (classify: the file)

    def to_json(self) -> dict[str, Any]:
        """The event's JSON object, keys in the published order."""
        event: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "sensor_id": self.sensor_id,
            "event_id": self.event_id,
            "window": {
                "start": iso_utc(self.start),
                "end": iso_utc(self.end),
                "duration_s": round(self.end - self.start, 3),
            },
            "location": dict(self.location),
            "labels": [{"name": label.name, "score": label.score} for label in self.labels],
            "top": {"name": self.top_name, "score": self.top_score},
            "scores": dict(self.scores),
            **({} if self.vetoed is None else {"vetoed": list(self.vetoed)}),
            "level": dict(self.level),
            "model": {"bundle_id": self.bundle_id, "sha256": self.bundle_sha256},
            "processing_ms": self.processing_ms,
        }
        if self.clock is not None:
            event["clock"] = dict(self.clock)
        event.update(self.extra)
        return event


@dataclass(frozen=True)
class EventContext:
    """Everything in an event that does not change from window to window; built once per (re)load."""

    sensor_id: str
    location: Mapping[str, Any]
    class_names: tuple[str, ...]
    thresholds: tuple[float, ...]
    bundle_id: str
    bundle_sha256: str
    level_unit: str  # "dBFS" (A-weighted, AES17), or "dB(A)" once a calibration offset makes levels absolute

    def build(
        self,
        scores: Sequence[float] | np.ndarray,
        start: float,
        end: float,
        levels: Mapping[str, Any],
        processing_ms: float,
        extra: Mapping[str, Any] | None = None,
        clock: Mapping[str, Any] | None = None,
        vetoed: np.ndarray | None = None,
    ) -> Event:
        """`levels` is `WindowLevels.to_event()`; `clock` is `ClockState.to_event()` at the window start (live only).
        `vetoed`: the bundle's veto mask for the window (None: the bundle has no veto). Published as the names it
        scaled down, so a listener who sees a low score under a loud sound can tell the veto from a deaf model."""
        rounded = [round(float(s), SCORE_DECIMALS) for s in scores]
        labels = sorted(
            (
                Label(name, score)
                for name, score, threshold in zip(self.class_names, rounded, self.thresholds, strict=True)
                if score >= threshold
            ),
            key=lambda label: -label.score,
        )
        top = int(np.argmax(rounded))
        # "nothing heard" is an answer: with no class at its threshold, top names no class (its score stays, so a
        # listener still sees how close the best class came)
        return Event(
            sensor_id=self.sensor_id,
            event_id=str(uuid.uuid4()),
            start=start,
            end=end,
            location=self.location,
            labels=tuple(labels),
            top_name=self.class_names[top] if labels else None,
            top_score=rounded[top],
            scores=dict(zip(self.class_names, rounded, strict=True)),
            vetoed=None if vetoed is None else tuple(c for c, v in zip(self.class_names, vetoed, strict=True) if v),
            level=levels,
            bundle_id=self.bundle_id,
            bundle_sha256=self.bundle_sha256,
            processing_ms=round(processing_ms, 1),
            clock=clock,
            extra={} if extra is None else extra,
        )
