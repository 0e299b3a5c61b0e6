"""Build a VGGish bundle from Google's official checkpoint, the AudioSet PCA file and a trained classifier.

Get `vggish_model.ckpt` and `vggish_pca_params.npz` from Google's AudioSet storage (links in the README, or
tensorflow/models research/audioset/vggish). The checkpoint is read by its TF1 variable names, rebuilt as a Keras
network identical to vggish_slim.py and exported to TFLite in the chosen quantization mode; the PCA file is copied
into the bundle unchanged and applied by the daemon (custom.daemon.model.postprocess), the one implementation of the
AudioSet postprocess. The converter checks its own output: the TFLite embeddings must match the float Keras network
(cosine) on silence, seeded noise, a tone and real calibration clips, or no bundle is written.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.audio.audiofile import AudioFileError, read_audio
from custom.daemon.model.audioset_params import EMBEDDING_SIZE, NUM_BANDS, NUM_FRAMES
from custom.daemon.model.bundle import (
    BundleDraft,
    BundleError,
    ClassSpec,
    ModelSpec,
    TensorSpec,
    sha256_file,
    write_bundle,
)
from custom.daemon.model.frontend import VGGISH, Frontend
from custom.daemon.model.inference import Model
from custom.daemon.model.postprocess import AudioSetPCA
from custom.daemon.model.runtime import RowRunner
from custom.wire import exitcodes

from ..classes import URBAN_CLASSES
from ..tflite.export import QUANTIZE_MODES
from ..vggish_classifier.artifact import CLASSIFIER_FILE, Classifier, InputError, read_classifier
from .vggish_model import OFFICIAL, Architecture, CheckpointError

HELP = "build a bundle from the official VGGish checkpoint + AudioSet PCA file + a trained classifier"
BACKBONE_FILE = "vggish.tflite"
PCA_FILE = "vggish_pca_params.npz"
# Chosen from measurements on a full-size checkpoint (README, "VGGish bundle"): a quarter of the float32 size (69 vs
# 275 MiB, which matters on a 2-4 GB Pi), cosine >= 0.9995 to float on real clips where full int8 reaches only
# ~0.999, no calibration audio needed, and about twice as fast as float32 in ai_edge_litert.
DEFAULT_MODE = "dynamic"
# Below this the embedding no longer matches what the classifier was trained on (AudioSet's float VGGish).
MIN_COSINE = {"float32": 0.99999, "float16": 0.9999, "dynamic": 0.999, "int8": 0.995}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
# A free batch dimension (-1): the daemon runs the 10 patches of a window in one invoke, streaming fc1's 50 M
# weights once per window instead of ten times.
BACKBONE_INPUT = TensorSpec((-1, NUM_FRAMES, NUM_BANDS), "float32")
BACKBONE_OUTPUT = TensorSpec((-1, EMBEDDING_SIZE), "float32")
log = logging.getLogger("custom.convert.backbones.vggish")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="official vggish_model.ckpt (TF1 checkpoint)")
    parser.add_argument("--pca", type=Path, required=True, help="official vggish_pca_params.npz")
    parser.add_argument(
        "--classifier", type=Path, required=True, help="`custom-convert train` output folder, or its classifier.tflite"
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced atomically)")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default=DEFAULT_MODE,
        help=f"weight/activation type (default {DEFAULT_MODE})",
    )
    parser.add_argument(
        "--calibration-audio",
        type=Path,
        help="folder of real recordings (wav/flac/ogg, searched recursively): int8 calibration and the self-check",
    )
    parser.add_argument(
        "--calibration-patches", type=int, default=200, help="at most this many 0.96 s patches (default 200)"
    )
    parser.add_argument("--bundle-id", default="vggish-urban10")
    parser.add_argument("--version", default="1.0.0")


@dataclass(frozen=True)
class BuildOptions:
    """What `custom-convert vggish` is asked to build; the command line maps onto it one to one."""

    checkpoint: Path
    pca: Path
    classifier: Path
    out: Path
    quantize: str = DEFAULT_MODE
    calibration_audio: Path | None = None
    calibration_patches: int = 200
    bundle_id: str = "vggish-urban10"
    version: str = "1.0.0"


def read_pca(path: Path) -> AudioSetPCA:
    try:
        pca = AudioSetPCA.load(path)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a VGGish PCA file (pca_means, pca_eigen_vectors): {exc}") from None
    if pca.eigen_vectors.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE):
        raise InputError(f"{path}: eigen vectors are {pca.eigen_vectors.shape}, VGGish needs (128, 128)")
    return pca


def calibration_patches(folder: Path, limit: int) -> np.ndarray:
    """Up to `limit` log-mel patches from the recordings under `folder`, spread evenly over the files.

    Spreading (rather than taking the first files) makes the int8 ranges cover every kind of sound given.
    """
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found for calibration")
    frontend = Frontend(VGGISH)
    if len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    per_file = -(-limit // len(files))  # ceil: every file contributes, together about `limit` patches
    chosen: list[np.ndarray] = []
    for path in files:
        try:
            audio = read_audio(path, VGGISH.sample_rate_hz)
        except AudioFileError as exc:
            log.warning("calibration: skipping %s", exc)
            continue
        patches = frontend.log_mel_patches(audio.waveform)  # (n, 96, 64)
        chosen.extend(patches[np.linspace(0, len(patches) - 1, min(per_file, len(patches))).astype(int)])
    if not chosen:
        raise InputError(f"{folder}: no file gave a full 0.975 s patch")
    return np.stack(chosen[:limit]).astype(np.float32)


def probe_patches(seed: int = 0) -> np.ndarray:
    """Silence, seeded noise and a tone through the real front end: cheap inputs whose failure modes differ."""
    frontend = Frontend(VGGISH)
    n = VGGISH.patch_samples
    t = np.arange(n, dtype=np.float32) / VGGISH.sample_rate_hz
    waves = (
        np.zeros(n, np.float32),
        np.random.default_rng(seed).normal(0.0, 0.1, n).astype(np.float32),
        (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32),
    )
    return np.concatenate([frontend.log_mel_patches(w) for w in waves]).astype(np.float32)


def tflite_embeddings(path: Path, patches: np.ndarray, threads: int = 2) -> tuple[np.ndarray, float]:
    """(n, 128) embeddings from the .tflite on the daemon's runtime and row runner, and the mean ms per patch."""
    runner = RowRunner(path, threads=threads)
    start = time.perf_counter()
    results = runner(patches)
    return results, (time.perf_counter() - start) * 1e3 / max(1, len(patches))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; rows of zeros in both count as identical."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


@dataclass(frozen=True)
class Conversion:
    """How the converted backbone (written to work_dir) compares with the float network."""

    cosine_min: float
    cosine_mean: float
    pca_max_abs_diff: int  # largest difference of the uint8 postprocessed embeddings, in steps of 1/255 of [-2, 2]
    patch_ms: float
    checked_patches: int


def convert(
    checkpoint: Path,
    mode: str,
    calibration: np.ndarray | None,
    pca: AudioSetPCA,
    work_dir: Path,
    arch: Architecture = OFFICIAL,
    progress: Any = None,
) -> Conversion:
    """Checkpoint -> work_dir/vggish.tflite, compared with the float network; CheckpointError for a bad checkpoint."""
    from ..tflite.export import export_tflite
    from .vggish_model import build_keras, read_checkpoint

    def step(what: str) -> None:
        """Close the previous stage and name the next: the bar shows what is running now, not what finished."""
        if progress is not None:
            if progress.n or progress.desc:
                progress.update(1)
            progress.set_description(what)

    step("reading checkpoint")
    weights = read_checkpoint(checkpoint, arch)
    step("building Keras network")
    model = build_keras(weights, arch)
    del weights  # the Keras layers hold their own copy; keep peak RAM down on the full 72 M parameters
    representative = None
    if calibration is not None:

        def representative() -> Any:
            for patch in calibration:
                yield [patch[None]]

    step(f"exporting {mode} TFLite")
    tflite = export_tflite(model, (None, *BACKBONE_INPUT.shape[1:]), mode, representative)
    step("checking against float")
    checks = probe_patches() if calibration is None else np.concatenate([probe_patches(), calibration[:64]])
    reference = model.predict(checks, batch_size=16, verbose=0)
    path = work_dir / BACKBONE_FILE
    path.write_bytes(tflite)
    del tflite
    got, patch_ms = tflite_embeddings(path, checks)
    similarity = cosine(got, reference)
    pca_diff = int(np.abs(pca(got).astype(int) - pca(reference).astype(int)).max())
    step("checked")
    return Conversion(float(similarity.min()), float(similarity.mean()), pca_diff, patch_ms, len(checks))


def _checkpoint_sha256(path: Path) -> str:
    """sha256 of the official single-file checkpoint; for a V2 prefix, of its .index (which pins the data)."""
    if path.is_file():
        return sha256_file(path)
    index = path.with_name(path.name + ".index")
    return sha256_file(index) if index.is_file() else "unknown"


def run(args: argparse.Namespace) -> int:
    options = BuildOptions(
        checkpoint=args.checkpoint,
        pca=args.pca,
        classifier=args.classifier,
        out=args.out,
        quantize=args.quantize,
        calibration_audio=args.calibration_audio,
        calibration_patches=args.calibration_patches,
        bundle_id=args.bundle_id,
        version=args.version,
    )
    return build(options, OFFICIAL)


def build(args: BuildOptions, arch: Architecture = OFFICIAL) -> int:
    """`run` for a given layer-width table; only the official one is reachable from the command line."""
    from tqdm import tqdm

    started = time.monotonic()
    try:
        for what, path in (("checkpoint", args.checkpoint), ("PCA file", args.pca)):
            if not (path.exists() or path.with_name(path.name + ".index").exists()):
                raise InputError(f"{path}: no such file ({what})")
        pca = read_pca(args.pca)
        classifier = read_classifier(args.classifier)
        calibration = None
        if args.calibration_audio is not None:
            calibration = calibration_patches(args.calibration_audio, args.calibration_patches)
            log.info("calibration: %d patches from %s", len(calibration), args.calibration_audio)
        elif args.quantize == "int8":
            raise InputError("--quantize int8 needs --calibration-audio (a folder of real recordings)")
    except InputError as exc:
        print(f"custom-convert vggish: {exc}")
        return exitcodes.NO_INPUT

    with tempfile.TemporaryDirectory(prefix="vggish-") as tmp, tqdm(total=4, unit="step") as progress:
        work = Path(tmp)
        try:
            result = convert(args.checkpoint, args.quantize, calibration, pca, work, arch, progress)
        except CheckpointError as exc:
            print(f"custom-convert vggish: {exc}")
            return exitcodes.CONFIG
        floor = MIN_COSINE[args.quantize]
        if result.cosine_min < floor:
            print(
                f"custom-convert vggish: {args.quantize} model drifts from float: cosine min {result.cosine_min:.5f} "
                f"< {floor} on {result.checked_patches} patches; no bundle written (try another --quantize)"
            )
            return exitcodes.SOFTWARE
        draft = _draft(args, work, classifier, _provenance(args, arch, classifier, result, calibration))
        try:
            check_bundle(write_bundle(draft, work / "bundle"))  # a bad bundle never replaces a good one at --out
            bundle = write_bundle(draft, args.out)
        except BundleError as exc:
            print(f"custom-convert vggish: {exc}")
            return exitcodes.CONFIG
        except OSError as exc:
            print(f"custom-convert vggish: cannot write {args.out}: {exc}")
            return exitcodes.CANT_CREATE

    _summary(bundle, args, arch, result, time.monotonic() - started)
    return exitcodes.OK


def _draft(args: BuildOptions, work: Path, classifier: Classifier, provenance: dict[str, Any]) -> BundleDraft:
    return BundleDraft(
        bundle_id=args.bundle_id,
        version=args.version,
        backbone="vggish",
        frontend=VGGISH,
        backbone_model=ModelSpec(
            file=BACKBONE_FILE, input=BACKBONE_INPUT, output=BACKBONE_OUTPUT, input_kind="log_mel"
        ),
        classifier_model=classifier.spec,
        postprocess={"kind": "audioset_pca", "file": PCA_FILE},
        classes=[
            ClassSpec(c.name, c.audioset_name, c.mid, threshold)
            for c, threshold in zip(URBAN_CLASSES, classifier.thresholds, strict=True)
        ],
        sources={BACKBONE_FILE: work / BACKBONE_FILE, CLASSIFIER_FILE: classifier.path, PCA_FILE: args.pca},
        provenance=provenance,
    )


def check_bundle(bundle: Any) -> None:
    """Run the bundle through the daemon's own code path on seeded noise; NaN/inf scores (a broken classifier or
    PCA file) are a BundleError, found here rather than on the sensor."""
    noise = np.random.default_rng(0).normal(0.0, 0.1, VGGISH.patch_samples * 2).astype(np.float32)
    scores = Model(bundle).scores(noise).scores
    if not np.all(np.isfinite(scores)):
        raise BundleError(f"{bundle.path}: the bundle scores NaN/inf on noise: {scores.tolist()}")


def _provenance(
    args: BuildOptions,
    arch: Architecture,
    classifier: Classifier,
    result: Conversion,
    calibration: np.ndarray | None,
) -> dict[str, Any]:
    import tensorflow as tf

    return {
        "converter": "custom-convert vggish",
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tensorflow": tf.__version__,
        "checkpoint": {"name": args.checkpoint.name, "sha256": _checkpoint_sha256(args.checkpoint)},
        "pca_sha256": sha256_file(args.pca),
        "parameters": arch.parameter_count,
        "quantize": args.quantize,
        "calibration_patches": 0 if calibration is None else len(calibration),
        "check_vs_float": {
            "patches": result.checked_patches,
            "cosine_min": round(result.cosine_min, 6),
            "cosine_mean": round(result.cosine_mean, 6),
            "pca_uint8_max_abs_diff": result.pca_max_abs_diff,
        },
        "classifier": {k: v for k, v in classifier.meta.items() if k not in ("classes", "thresholds")},
    }


def _summary(bundle: Any, args: BuildOptions, arch: Architecture, result: Conversion, seconds: float) -> None:
    print(f"wrote {bundle.path} ({bundle.bundle_id} {bundle.version}, VGGish {args.quantize})")
    for name in sorted(bundle.files):
        size = bundle.file_path(name).stat().st_size
        print(f"  {name:<24} {size / 2**20:9.2f} MiB  sha256 {bundle.files[name]}")
    print(f"parameters {arch.parameter_count:,}")
    print(
        f"vs float on {result.checked_patches} patches: cosine min {result.cosine_min:.6f} mean "
        f"{result.cosine_mean:.6f}; uint8 embedding max diff {result.pca_max_abs_diff}; "
        f"{result.patch_ms:.1f} ms/patch here"
    )
    print("thresholds: " + ", ".join(f"{c.name} {c.threshold:.2f}" for c in bundle.classes))
    print(f"bundle sha256 {bundle.sha256}  ({seconds:.1f} s)")
