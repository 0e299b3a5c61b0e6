"""One JSON event per window: what was heard, when, where, how loud, by which model.

Built in one place for both `classify` (files) and the live daemon, so the two can never disagree on the fields.
The schema is wire/event.schema.json (custom.wire.schemas); tests validate every event they see against it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from custom.wire.timestamps import iso_utc

SCHEMA_VERSION = 2  # 2: level gained LAFmax/LAFmin/LA10/50/90 (AES17 dBFS); `clock` added
SCORE_DECIMALS = 4


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
    ) -> dict[str, Any]:
        """`levels` is `WindowLevels.to_event()`; `clock` is `ClockState.to_event()` at the window start (live only).
        `vetoed`: the bundle's veto mask for the window (None: the bundle has no veto). Published as the names it
        scaled down, so a listener who sees a low score under a loud sound can tell the veto from a deaf model."""
        scores = [round(float(s), SCORE_DECIMALS) for s in scores]
        labels: list[dict[str, Any]] = [
            {"name": name, "score": score}
            for name, score, threshold in zip(self.class_names, scores, self.thresholds, strict=True)
            if score >= threshold
        ]
        labels.sort(key=lambda label: -label["score"])
        top = int(np.argmax(scores))
        # "nothing heard" is an answer: with no class at its threshold, top names no class (its score stays, so a
        # listener still sees how close the best class came)
        top_name = self.class_names[top] if labels else None
        event: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "sensor_id": self.sensor_id,
            "event_id": str(uuid.uuid4()),
            "window": {"start": iso_utc(start), "end": iso_utc(end), "duration_s": round(end - start, 3)},
            "location": dict(self.location),
            "labels": labels,
            "top": {"name": top_name, "score": scores[top]},
            "scores": dict(zip(self.class_names, scores, strict=True)),
            **({} if vetoed is None else {"vetoed": [c for c, v in zip(self.class_names, vetoed, strict=True) if v]}),
            "level": dict(levels),
            "model": {"bundle_id": self.bundle_id, "sha256": self.bundle_sha256},
            "processing_ms": round(processing_ms, 1),
        }
        if clock is not None:
            event["clock"] = dict(clock)
        if extra:
            event.update(extra)
        return event
