"""AudioSet VGGish-embedding clips for training and evaluation: npz subsets and official tfrecord folders.

Two sources give the same `ClipSet`:

* an `.npz` like `shared/data/audioset/bal_train.npz` (fields in that folder's README: `embeddings` uint8
  [N,10,128] zero-padded after `n_frames`, `all_labels` AudioSet indices padded with -1, `video_id`, ...);
* a folder of official `audioset_v1_embeddings` tfrecords (`bal_train/`, `eval/` or `unbal_train/`), read with
  TensorFlow's protobuf classes: context `video_id`, `start_time_seconds`, `labels` (AudioSet indices),
  feature list `audio_embedding` of 128-byte strings, one per 0.96 s frame.

Labels are rebuilt from the full AudioSet label list with the ontology: a clip counts for one of our classes if
it carries that class's label or any descendant of it ("Bark" -> Dog, "Chirp, tweet" -> Bird, "Toot" -> Vehicle
horn, "Police car (siren)" -> Siren). The npz's own `labels` column uses exact labels only, so a few of its "other"
clips become positives here, in training and in evaluation alike. A clip with none of our classes is "other".

Embeddings stay uint8 (the raw 0..255 values the classifier takes); frames past `n_frames` are zeros, and a real
VGGish frame is never all zeros, so `frame_mask` can tell them apart.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.model.audioset_params import EMBEDDING_SIZE, FRAMES_PER_CLIP
from custom.daemon.model.bundle import sha256_file

from ..classes import URBAN_CLASSES, UrbanClass
from ..ontology import Ontology

log = logging.getLogger(__name__)

ONTOLOGY_NAME = "ontology.json"
LABEL_INDEX_NAME = "class_labels_indices.csv"
TFRECORD_SUFFIX = ".tfrecord"


@dataclass
class ClipSet:
    """Clips with embeddings and labels over our classes (rows aligned across all arrays)."""

    video_id: np.ndarray  # str [N]
    start_time: np.ndarray  # float32 [N], seconds
    embeddings: np.ndarray  # uint8 [N, 10, 128], zero-padded after n_frames
    n_frames: np.ndarray  # int16 [N], 1..10
    labels: np.ndarray  # uint8 [N, C] multi-hot over `class_names`, descendants included
    all_labels: np.ndarray  # int16 [N, K] AudioSet indices, padded with -1
    class_names: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)  # {"path", "sha256", "kind", "relabelled", ...}

    def __len__(self) -> int:
        return len(self.video_id)

    @property
    def is_other(self) -> np.ndarray:
        """True for clips with none of our classes."""
        return self.labels.sum(axis=1) == 0

    @property
    def frame_mask(self) -> np.ndarray:
        """bool [N, 10]: True for real frames (a zero-padded frame is all zeros)."""
        return self.embeddings.max(axis=2) > 0

    def subset(self, rows: np.ndarray | Sequence[int]) -> ClipSet:
        rows = np.asarray(rows)
        return ClipSet(
            video_id=self.video_id[rows],
            start_time=self.start_time[rows],
            embeddings=self.embeddings[rows],
            n_frames=self.n_frames[rows],
            labels=self.labels[rows],
            all_labels=self.all_labels[rows],
            class_names=self.class_names,
            source=dict(self.source),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "clips": len(self),
            "other": int(self.is_other.sum()),
            "positives": {n: int(v) for n, v in zip(self.class_names, self.labels.sum(axis=0), strict=True)},
        }


class LabelMap:
    """Which AudioSet label indices count for each of our classes: its own label and its ontology descendants."""

    def __init__(self, ontology_path: Path | str, label_index_path: Path | str) -> None:
        self.ontology = Ontology.load(ontology_path)
        self.index_to_mid: dict[int, str] = {}
        with open(label_index_path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                self.index_to_mid[int(row["index"])] = row["mid"]

    def class_index_sets(self, classes: Sequence[UrbanClass]) -> list[set[int]]:
        mid_to_index = {m: i for i, m in self.index_to_mid.items()}
        return [{mid_to_index[m] for m in self.ontology.with_descendants(c.mid) if m in mid_to_index} for c in classes]

    def multi_hot(self, all_labels: np.ndarray, classes: Sequence[UrbanClass]) -> np.ndarray:
        """uint8 [N, C] from AudioSet index lists [N, K] padded with -1."""
        out = np.zeros((len(all_labels), len(classes)), dtype=np.uint8)
        for c, indices in enumerate(self.class_index_sets(classes)):
            out[:, c] = np.isin(all_labels, sorted(indices)).any(axis=1)
        return out


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's tfrecords (their relative names and contents, in sorted order)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob(f"*{TFRECORD_SUFFIX}") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def find_metadata(data_path: Path, name: str, explicit: Path | str | None = None) -> Path:
    """`explicit` if given, else `name` beside the data or in up to two folders above it."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found")
        return path
    start = data_path if data_path.is_dir() else data_path.parent
    for folder in [start, *list(start.parents)[:2]]:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{name} not found beside {data_path} or in the two folders above it; "
        "pass its path (--ontology / --label-index)"
    )


def load_clips(
    path: Path | str,
    classes: Sequence[UrbanClass] = URBAN_CLASSES,
    ontology: Path | str | None = None,
    label_index: Path | str | None = None,
    max_negatives: int | None = None,
    seed: int = 0,
) -> ClipSet:
    """Load an npz subset or a tfrecord folder, with labels rebuilt through the ontology.

    `max_negatives` caps the "other" clips kept (a seeded uniform sample; every positive is kept), for folders such
    as unbal_train whose negatives alone are two million clips.
    """
    path = Path(path)
    onto = LabelMap(find_metadata(path, ONTOLOGY_NAME, ontology), find_metadata(path, LABEL_INDEX_NAME, label_index))
    if path.is_dir():
        clips = _load_tfrecord_folder(path, onto, classes, max_negatives, seed)
        kind = "tfrecord"
    elif path.suffix == ".npz":
        clips = _load_npz(path, onto, classes)
        kind = "npz"
    else:
        raise ValueError(f"{path}: expected an .npz file or a folder of {TFRECORD_SUFFIX} files")
    if kind == "npz" and max_negatives is not None and clips.is_other.sum() > max_negatives:
        clips = clips.subset(_cap_negatives(clips.is_other, max_negatives, seed))
    clips.source.update({"path": str(path), "kind": kind, "sha256": sha256_of(path)})
    return clips


def _cap_negatives(is_other: np.ndarray, max_negatives: int, seed: int) -> np.ndarray:
    others = np.flatnonzero(is_other)
    keep = np.random.default_rng(seed).choice(others, max_negatives, replace=False)
    return np.sort(np.concatenate([np.flatnonzero(~is_other), keep]))


def _load_npz(path: Path, onto: LabelMap, classes: Sequence[UrbanClass]) -> ClipSet:
    with np.load(path, allow_pickle=False) as data:
        fields = {k: data[k] for k in data.files}
    missing = {"video_id", "embeddings", "n_frames", "all_labels"} - set(fields)
    if missing:
        raise ValueError(f"{path}: npz lacks {', '.join(sorted(missing))}")
    embeddings = fields["embeddings"]
    if embeddings.dtype != np.uint8 or embeddings.shape[1:] != (FRAMES_PER_CLIP, EMBEDDING_SIZE):
        raise ValueError(f"{path}: embeddings must be uint8 [N,10,128], got {embeddings.dtype} {embeddings.shape}")
    all_labels = fields["all_labels"].astype(np.int16)
    labels = onto.multi_hot(all_labels, classes)
    relabelled = 0
    if "labels" in fields and fields["labels"].shape == labels.shape:
        exact = fields["labels"].astype(np.uint8)
        if np.any(exact > labels):
            raise ValueError(f"{path}: its exact labels are not a subset of the ontology labels; wrong class order?")
        relabelled = int((labels > exact).sum())
    n = len(embeddings)
    clips = ClipSet(
        video_id=fields["video_id"].astype(str),
        start_time=fields.get("start_time", np.zeros(n)).astype(np.float32),
        embeddings=embeddings,
        n_frames=fields["n_frames"].astype(np.int16),
        labels=labels,
        all_labels=all_labels,
        class_names=tuple(c.name for c in classes),
    )
    clips.source["relabelled"] = relabelled
    log.info("%s: %d clips, %d labels added through the ontology", path.name, n, relabelled)
    return clips


def parse_sequence_example(raw: bytes) -> tuple[str, float, list[int], np.ndarray]:
    """(video_id, start_time, AudioSet label indices, uint8 [frames, 128]) of one audioset_v1_embeddings record."""
    from tensorflow.core.example import example_pb2  # the convert extra; imported only when tfrecords are read

    example = example_pb2.SequenceExample.FromString(raw)
    context = example.context.feature
    video_id = context["video_id"].bytes_list.value[0].decode()
    start = float(context["start_time_seconds"].float_list.value[0]) if "start_time_seconds" in context else 0.0
    labels = [int(x) for x in context["labels"].int64_list.value]
    frames = example.feature_lists.feature_list["audio_embedding"].feature
    emb = np.frombuffer(b"".join(f.bytes_list.value[0] for f in frames), dtype=np.uint8)
    return video_id, start, labels, emb.reshape(-1, EMBEDDING_SIZE)


def iter_tfrecord(path: Path) -> Iterable[bytes]:
    """Raw records of one TFRecord file (length, crc, data, crc framing; crcs not checked)."""
    with open(path, "rb") as handle:
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header")
            length = int.from_bytes(header[:8], "little")
            data = handle.read(length)
            if len(data) < length or len(handle.read(4)) < 4:
                raise ValueError(f"{path}: truncated record")
            yield data


def _load_tfrecord_folder(
    folder: Path, onto: LabelMap, classes: Sequence[UrbanClass], max_negatives: int | None, seed: int
) -> ClipSet:
    files = sorted(p for p in folder.rglob(f"*{TFRECORD_SUFFIX}") if p.is_file())
    if not files:
        raise ValueError(f"{folder}: no {TFRECORD_SUFFIX} files")
    index_sets = onto.class_index_sets(classes)
    wanted = set().union(*index_sets)
    rng = np.random.default_rng(seed)
    positives: list[tuple] = []
    negatives: list[tuple] = []  # reservoir when max_negatives is set
    seen_negatives = 0
    for file in files:
        for raw in iter_tfrecord(file):
            video_id, start, labels, emb = parse_sequence_example(raw)
            n = min(len(emb), FRAMES_PER_CLIP)
            if n == 0:
                continue
            padded = np.zeros((FRAMES_PER_CLIP, EMBEDDING_SIZE), dtype=np.uint8)
            padded[:n] = emb[:n]
            row = (video_id, start, padded, n, labels)
            if wanted.intersection(labels):
                positives.append(row)
                continue
            seen_negatives += 1
            if max_negatives is None or len(negatives) < max_negatives:
                negatives.append(row)
            else:  # reservoir sampling: every negative seen so far has the same chance to be kept
                j = int(rng.integers(seen_negatives))
                if j < max_negatives:
                    negatives[j] = row
    rows = positives + negatives
    width = max(1, max(len(r[4]) for r in rows))
    all_labels = np.full((len(rows), width), -1, dtype=np.int16)
    for i, r in enumerate(rows):
        all_labels[i, : len(r[4])] = r[4]
    clips = ClipSet(
        video_id=np.array([r[0] for r in rows]),
        start_time=np.array([r[1] for r in rows], dtype=np.float32),
        embeddings=np.stack([r[2] for r in rows]),
        n_frames=np.array([r[3] for r in rows], dtype=np.int16),
        labels=onto.multi_hot(all_labels, classes),
        all_labels=all_labels,
        class_names=tuple(c.name for c in classes),
    )
    clips.source.update({"files": len(files), "negatives_seen": seen_negatives})
    log.info(
        "%s: %d tfrecord files, %d positives, %d of %d negatives kept",
        folder,
        len(files),
        len(positives),
        len(negatives),
        seen_negatives,
    )
    return clips


def write_tfrecord(path: Path | str, records: Iterable[tuple[str, float, Sequence[int], np.ndarray]]) -> None:
    """Write (video_id, start_time, labels, uint8 [frames,128]) as audioset_v1_embeddings records (for tests)."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for video_id, start, labels, emb in records:
            ex = tf.train.SequenceExample()
            ctx = ex.context.feature
            ctx["video_id"].bytes_list.value.append(video_id.encode())
            ctx["start_time_seconds"].float_list.value.append(float(start))
            ctx["end_time_seconds"].float_list.value.append(float(start) + 10.0)
            ctx["labels"].int64_list.value.extend(int(x) for x in labels)
            frames = ex.feature_lists.feature_list["audio_embedding"]
            for frame in np.asarray(emb, dtype=np.uint8):
                frames.feature.add().bytes_list.value.append(frame.tobytes())
            writer.write(ex.SerializeToString())
