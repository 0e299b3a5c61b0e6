"""Training data for the head: the real recordings in ../shared, their grouping, label-honest augmentation, and
the backbone's per-window features, computed once per build.

Sources: `data/train-audio` (dog, horn, siren and "other" negatives) and `data/clips` (all 10 classes). Every row
carries its `source_recording`; folds are grouped by it, so pieces of one recording never sit on both sides of a
split. A recording whose id hashes to a line of `data/holdout-recordings.sha256` is never read.

Augmentation only mixes a labelled event over a background whose labels are known (an "other" recording adds no
label, a traffic recording adds Traffic noise), with a random gain, SNR and time shift, all from one seeded RNG.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from custom.daemon.audio.audiofile import AudioFileError, read_audio
from custom.daemon.audio.pcm import SAMPLE_RATE_HZ
from custom.wire import exitcodes

from ..classes import URBAN_CLASSES
from .licences import FAMILIES, describe, licence_family

OTHER_LABEL = "other"
WINDOW_S = 10.0
THIN_CLASSES = ("children", "jackhammer", "traffic", "subway", "footsteps", "chatter")  # little real audio
SNRS_DB = (0.0, 6.0, 12.0)
GAIN_DB = (-12.0, 0.0)


class DataError(ValueError):
    """Bad training data; `code` is the exit status (65 bad data, 66 missing/unreadable input)."""

    def __init__(self, message: str, code: int = exitcodes.DATA_ERROR) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Recording:
    path: Path
    labels: tuple[int, ...]  # class indices; empty for "other"
    group: str  # source recording id: the grouping key for folds
    source: str  # "clips" or "train-audio"
    kind: str  # the dataset's own class (train-audio) or our label (clips)
    proxy: bool = False  # a scene-level label (a metro-station ambience for subway): trains only where CV says so
    licence: str = ""  # the manifest row's licence text, as given

    @property
    def licence_family(self) -> str:
        return licence_family(self.licence)


@dataclass
class Examples:
    """One row per training window: features from the backbone, multi-hot labels, and who it came from."""

    scores: list[np.ndarray] = field(default_factory=list)  # (patches, 521) per window
    embeddings: list[np.ndarray] = field(default_factory=list)  # (patches, 1024) per window
    labels: list[np.ndarray] = field(default_factory=list)  # (classes,) bool
    groups: list[tuple[str, ...]] = field(default_factory=list)  # every recording mixed into the window
    real: list[int] = field(default_factory=list)  # index into recordings, or -1 for an augmented window

    def add(self, scores: np.ndarray, emb: np.ndarray, labels: np.ndarray, groups: tuple[str, ...], real: int) -> None:
        self.scores.append(scores)
        self.embeddings.append(emb)
        self.labels.append(labels)
        self.groups.append(groups)
        self.real.append(real)


def holdout_hashes(path: Path) -> set[str]:
    """Hashes of held-out recording ids (sha256 of the id as written in the manifests), '#' lines skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read holdout list: {exc.strerror}", exitcodes.NO_INPUT) from None
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def is_held_out(recording_id: str, hashes: set[str]) -> bool:
    return hashlib.sha256(recording_id.encode()).hexdigest() in hashes


def read_recordings(
    shared: Path, *, limit_per_label: int | None = None, licences: frozenset[str] = frozenset(FAMILIES)
) -> tuple[list[Recording], int]:
    """Both manifests' rows (minus held-out recordings, and rows whose licence family is not in `licences`) and how
    many rows were held out.

    Raises DataError naming the manifest for an unknown label, or the class left with no recording (naming the
    licence filter when it is the filter that emptied it).
    """
    hashes = holdout_hashes(shared / "data/holdout-recordings.sha256")
    by_label = {c.clip_label: i for i, c in enumerate(URBAN_CLASSES)}
    recordings: list[Recording] = []
    held_out = 0
    for source, manifest in (("train-audio", "data/train-audio/manifest.csv"), ("clips", "data/clips/manifest.csv")):
        path = shared / manifest
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as exc:
            raise DataError(f"{path}: cannot read manifest: {exc.strerror}", exitcodes.NO_INPUT) from None
        taken: dict[str, int] = {}
        for row in rows:
            label = row.get("label", "")
            if label != OTHER_LABEL and label not in by_label:
                raise DataError(f"{path}: {row.get('path')}: unknown label {label!r}")
            group = row.get("source_recording") or row["path"]
            if is_held_out(group, hashes):
                held_out += 1
                continue
            licence = row.get("license") or row.get("licence") or ""
            if licence_family(licence) not in licences:
                continue
            if limit_per_label is not None and taken.get(label, 0) >= limit_per_label:
                continue
            taken[label] = taken.get(label, 0) + 1
            labels = () if label == OTHER_LABEL else (by_label[label],)
            recordings.append(
                Recording(
                    path.parent / row["path"],
                    labels,
                    group,
                    source,
                    row.get("source_class") or label,
                    proxy=row.get("label_quality") == "proxy",
                    licence=licence,
                )  # fmt: skip
            )
    present = {i for r in recordings for i in r.labels}
    missing = [c.clip_label for i, c in enumerate(URBAN_CLASSES) if i not in present]
    where = "" if licences == frozenset(FAMILIES) else f" under --licences {describe(licences)}"
    if missing:
        raise DataError(f"{shared / 'data'}: no training recordings{where} for class(es) {', '.join(missing)}")
    if not any(not r.labels for r in recordings):
        raise DataError(f"{shared / 'data/train-audio/manifest.csv'}: no '{OTHER_LABEL}' recordings (negatives){where}")
    return recordings, held_out


def load_waveform(recording: Recording, rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """The first window of a recording, mono float32 at the backbone's rate; DataError (66) naming the file if
    unreadable."""
    try:
        audio = read_audio(recording.path, rate_hz)
    except (AudioFileError, OSError, RuntimeError) as exc:
        raise DataError(f"{recording.path}: unreadable audio: {exc}", exitcodes.NO_INPUT) from None
    return audio.waveform[: int(WINDOW_S * rate_hz)].astype(np.float32)


class BackboneFeatures:
    """Scores and dequantised embeddings per patch, from a bundle's backbone exactly as the daemon computes them."""

    def __init__(
        self, model
    ) -> None:  # a custom.daemon.model.inference.Model of a bundle whose head declares the embedding
        self.model = model

    def __call__(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs, _, _ = self.model.backbone_outputs(waveform)
        width = self.model.bundle.backbone_model.output.shape[-1]
        return outputs[:, :width], outputs[:, width:]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def mix(
    event: np.ndarray, background: np.ndarray, snr_db: float, gain_db: float, rng: np.random.Generator
) -> np.ndarray:
    """`event` at a random offset over `background` (tiled to the window) at `snr_db`, then `gain_db` overall."""
    length = max(len(event), len(background))
    bed = np.resize(background, length)
    start = int(rng.random() * (length - len(event) + 1))  # a fraction: the same mix at every backbone's rate
    placed = np.zeros(length, dtype=np.float32)
    placed[start : start + len(event)] = event
    bed = bed * (_rms(event) / _rms(bed) * 10 ** (-snr_db / 20))
    out = (placed + bed) * 10 ** (gain_db / 20)
    peak = float(np.max(np.abs(out)))
    return (out / peak * 0.99 if peak > 0.99 else out).astype(np.float32)


def build_examples(
    recordings: Sequence[Recording],
    features: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    augment_per_clip: int,
    seed: int,
    rate_hz: int = SAMPLE_RATE_HZ,
    progress: Callable[[int], None] | None = None,
) -> Examples:
    """Every real recording once, plus `augment_per_clip` mixes of each thin-class recording over backgrounds.

    The random draws do not depend on the rate, so two backbones built with one seed get the same windows in the
    same order (their features can be concatenated row by row)."""
    rng = np.random.default_rng(seed)
    examples = Examples()
    classes = len(URBAN_CLASSES)
    traffic = next(i for i, c in enumerate(URBAN_CLASSES) if c.clip_label == "traffic")
    thin = {i for i, c in enumerate(URBAN_CLASSES) if c.clip_label in THIN_CLASSES}
    waves: dict[int, np.ndarray] = {}
    for i, rec in enumerate(recordings):
        waves[i] = load_waveform(rec, rate_hz)
        labels = np.zeros(classes, dtype=bool)
        labels[list(rec.labels)] = True
        examples.add(*features(waves[i]), labels, (rec.group,), i)
        if progress is not None:
            progress(1)
    backgrounds = [i for i, r in enumerate(recordings) if not r.labels or r.labels == (traffic,)]
    for i, rec in enumerate(recordings):
        if not thin.intersection(rec.labels):
            continue
        for _ in range(augment_per_clip):
            b = int(rng.choice([j for j in backgrounds if recordings[j].group != rec.group]))
            snr = float(rng.choice(SNRS_DB))
            gain = float(rng.uniform(*GAIN_DB))
            labels = np.zeros(classes, dtype=bool)
            labels[list(rec.labels) + list(recordings[b].labels)] = True
            mixed = mix(waves[i], waves[b], snr, gain, rng)
            examples.add(*features(mixed), labels, (rec.group, recordings[b].group), -1)
            if progress is not None:
                progress(1)
    return examples


def recording_fold_map(groups: Sequence[str], labels: np.ndarray, folds: int, seed: int) -> dict[str, int]:
    """Fold per recording id, recordings of each class spread round-robin (rarest class first)."""
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    order = np.argsort(labels.sum(axis=0))  # rarest class first, so each is split as evenly as possible
    for k in [*order.tolist(), None]:
        rows = [
            g for g, y in zip(groups, labels, strict=True) if (k is None and not y.any()) or (k is not None and y[k])
        ]
        pending = sorted(set(rows) - set(fold_of))
        rng.shuffle(pending)
        start = int(rng.integers(folds))
        for j, g in enumerate(pending):
            fold_of[g] = (start + j) % folds
    return fold_of


def save_examples(path: Path, examples: Examples, key: str) -> None:
    """Cache a build's windows (features only, never audio) so re-runs with the same data and options skip the
    backbone; `key` names the data and options that made them."""
    lengths = np.array([len(s) for s in examples.scores])
    np.savez(
        path,
        key=np.array(key),
        lengths=lengths,
        scores=np.concatenate(examples.scores),
        embeddings=np.concatenate(examples.embeddings),
        labels=np.stack(examples.labels),
        groups=np.array(["\t".join(g) for g in examples.groups]),
        real=np.array(examples.real),
    )


def load_examples(path: Path, key: str) -> Examples | None:
    """The cached windows if `path` holds them for exactly `key`, else None."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    with data:
        if str(data["key"]) != key:
            return None
        bounds = np.cumsum(data["lengths"])[:-1]
        return Examples(
            scores=list(np.split(data["scores"], bounds)),
            embeddings=list(np.split(data["embeddings"], bounds)),
            labels=list(data["labels"]),
            groups=[tuple(g.split("\t")) for g in data["groups"]],
            real=[int(r) for r in data["real"]],
        )
