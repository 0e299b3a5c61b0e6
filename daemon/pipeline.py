"""One window in, one event out: the scoring path shared by the daemon and `custom-sensord classify`.

Windows carry audio at the capture rate (`Window.samples`, `Window.rate_hz`); `Pipeline.score` limits them to the
bundle's band, scores, measures the level and builds the event, so the live sensor and an offline run over a
recording cannot disagree about what a window means.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custom.wire.settings import ConfigError

from .audio.pcm import resample
from .audio.windows import Window
from .clock import ClockState
from .config import Config
from .model.bundle import Bundle, BundleError, load_bundle
from .model.inference import EnsembleModel, Model, open_model
from .noise.levels import LevelMeter, WindowLevels
from .publish.event import Event, EventContext

# The model sees the band it was trained on, which the bundle names (bundle.band_rate_hz: a version-2 manifest's
# band_rate_hz, 16 kHz for version 1): a window captured at 48 kHz (the default, for full-band levels) is brought to
# that band once, then to each front end's own rate (32 kHz for EfficientAT, whose head would otherwise meet a band it
# never saw in training) by the model. Levels are measured on the capture-rate window, untouched.


@dataclass(frozen=True)
class Pipeline:
    """Everything that depends on config + bundle and is swapped as a whole on reload."""

    model: Model | EnsembleModel
    context: EventContext
    meter: LevelMeter

    @property
    def bundle(self) -> Bundle:
        return self.model.bundle

    def score(self, window: Window, extra: Mapping[str, Any] | None = None, clock: ClockState | None = None) -> Scored:
        """The per-window hot path: limit to the bundle's band, score, measure levels on the capture-rate audio (the
        full band), build the event (with `processing_ms`). `clock`: the NTP state at the window start (live only)."""
        t0 = time.perf_counter()
        band = resample(window.samples, int(round(window.rate_hz)), self.model.band_rate_hz)
        result = self.model.band_scores(band)
        levels = self.meter(window.samples, window.rate_hz)
        elapsed_ms = (time.perf_counter() - t0) * 1e3
        event = self.context.build(
            result.scores, window.start_time, window.end_time, levels.to_event(), elapsed_ms, extra=extra,
            clock=None if clock is None else clock.to_event(), vetoed=result.vetoed,
        )  # fmt: skip
        return Scored(event, levels)


@dataclass(frozen=True)
class Scored:
    """A window's event, and its levels in full (the hourly summary needs the fast-level series)."""

    event: Event
    levels: WindowLevels


def build_pipeline(config: Config) -> Pipeline:
    """Load the bundle and check config against it; ConfigError/BundleError name what is wrong (exit 78)."""
    try:
        bundle = load_bundle(config.model.bundle)
        model = open_model(bundle, threads=config.model.threads)  # the runtime checks the file and tensor shapes
    except BundleError as exc:
        raise ConfigError("model.bundle", str(exc)) from None
    unknown = sorted(set(config.model.thresholds) - set(bundle.class_names))
    if unknown:
        raise ConfigError(
            f"model.thresholds.{unknown[0]}",
            f"not a class of bundle {bundle.bundle_id} (classes: {', '.join(bundle.class_names)})",
        )
    thresholds = tuple(config.model.thresholds.get(c.name, c.threshold) for c in bundle.classes)
    return _assemble(model, config.sensor_id, config.location.to_event(), thresholds, config.audio.calibration_db)


def bundle_pipeline(bundle_path: Path, threads: int, sensor_id: str) -> Pipeline:
    """A pipeline straight from a bundle with its own thresholds and no location (classify); BundleError if bad."""
    model = open_model(load_bundle(bundle_path), threads=threads)
    return _assemble(model, sensor_id, {}, model.bundle.thresholds, None)


def _assemble(
    model: Model | EnsembleModel,
    sensor_id: str,
    location: dict[str, Any],
    thresholds: tuple[float, ...],
    calibration_db: float | None,
) -> Pipeline:
    bundle = model.bundle
    context = EventContext(
        sensor_id=sensor_id,
        location=location,
        class_names=bundle.class_names,
        thresholds=thresholds,
        bundle_id=bundle.bundle_id,
        bundle_sha256=bundle.sha256,
        level_unit="dBFS" if calibration_db is None else "dB(A)",
    )
    return Pipeline(model, context, LevelMeter(calibration_db))
