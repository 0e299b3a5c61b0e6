"""The labelled real recordings in shared/data/clips: reading the manifest and running a bundle over every clip.

Used to choose the YAMNet bundle's aggregation and thresholds (grouped by source recording, so pieces of one
recording never sit on both sides of a split) and by `evaluate-clips` to report accuracy on real audio.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from custom.daemon.audio.audiofile import read_audio
from custom.daemon.model.inference import Model

from ..classes import URBAN_CLASSES


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str  # clip label (folder name), e.g. "siren"
    class_index: int  # position in URBAN_CLASSES
    recording: str  # source recording: the grouping key for splits
    quality: str  # "exact" or "proxy"


def read_manifest(path: Path | str) -> list[Clip]:
    """Rows of manifest.csv whose label is one of our classes, with absolute paths."""
    path = Path(path)
    by_label = {c.clip_label: i for i, c in enumerate(URBAN_CLASSES)}
    clips = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["label"] not in by_label:
                raise ValueError(f"{path}: unknown label {row['label']!r} (expected one of {', '.join(by_label)})")
            clips.append(
                Clip(
                    path=path.parent / row["path"],
                    label=row["label"],
                    class_index=by_label[row["label"]],
                    recording=row.get("source_recording") or row["path"],
                    quality=row.get("label_quality", "exact"),
                )
            )
    if not clips:
        raise ValueError(f"{path}: no clips listed")
    return clips


def clip_outputs(
    model: Model, clips: Sequence[Clip], window_s: float = 10.0, progress: Callable[[int], None] | None = None
) -> list[np.ndarray]:
    """Backbone outputs (patches, outputs) of each clip's first window, computed once so that every aggregation
    and class mapping can be scored without running the network again."""
    rate_hz = model.bundle.frontend.sample_rate_hz  # 16 kHz for YAMNet/VGGish, 32 kHz for EfficientAT
    limit = int(window_s * rate_hz)
    results = []
    for clip in clips:
        waveform = read_audio(clip.path, rate_hz).waveform[:limit]
        outputs, _, _ = model.backbone_outputs(waveform)
        results.append(outputs)
        if progress is not None:
            progress(1)
    return results


def recording_folds(clips: Sequence[Clip], folds: int = 2, seed: int = 0) -> np.ndarray:
    """Fold number per clip; every source recording lands in one fold, folds balanced per class."""
    rng = np.random.default_rng(seed)
    fold_of_recording: dict[str, int] = {}
    for class_index in range(len(URBAN_CLASSES)):
        recordings = sorted({c.recording for c in clips if c.class_index == class_index} - set(fold_of_recording))
        rng.shuffle(recordings)
        for i, recording in enumerate(recordings):
            fold_of_recording[recording] = i % folds
    return np.array([fold_of_recording[c.recording] for c in clips])
