"""Inputs for the bench, made once and cached under the work dir: windows of real audio and the model bundles.

The VGGish bundles come from a checkpoint with random weights in the official names and shapes (the official file
cannot be downloaded here). Latency and memory do not depend on the weight values: every layer is a dense
convolution or matmul whose cost is fixed by the shapes, and no runtime here exploits weight sparsity. Each step
that needs TensorFlow runs in its own subprocess (`python -m bench.build STEP ...`), so the orchestrator stays small
and each conversion's several GB are returned to the system when it exits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .common import INPUT_RATE_HZ, ROOT, WINDOW_S, cached_bundle, mark_bundle, shared_dir

if TYPE_CHECKING:
    from custom.convert.backbones.vggish_model import Architecture

ARCH_NAMES = ("official", "small")  # small: the tests' narrow VGGish (same names and layer stack), for the smoke test
VGGISH_MODES = ("float32", "float16", "dynamic", "int8")


def architecture(name: str) -> Architecture:
    """VGGish layer widths by name; imported lazily so TensorFlow-free callers stay light."""
    from custom.convert.backbones.vggish_model import OFFICIAL

    if name == "official":
        return OFFICIAL
    from testing.vggish import SMALL

    return SMALL


def subprocess_env(threads: int | None = None) -> dict[str, str]:
    """Environment for bench subprocesses: the repo importable (bench), BLAS threads pinned if asked."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if threads is not None:
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(threads)
    return env


def run_step(args: list[str], log: Path, timeout_s: float = 900.0) -> None:
    """`python -m bench.build ARGS` in a subprocess; its output goes to `log`, which the error quotes on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.build", *args],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"bench.build {' '.join(args)} failed ({proc.returncode}); log {log}:\n{tail}")


def clip_files(per_class: int = 1) -> list[Path]:
    """The first `per_class` clips of every class folder, in a fixed order: varied real sound, same every run."""
    root = shared_dir() / "data" / "clips"
    files: list[Path] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files.extend(sorted(folder.glob("*.flac"))[:per_class])
    return files


def make_windows(path: Path, count: int, rate_hz: int = INPUT_RATE_HZ) -> Path:
    """`count` 10 s windows at `rate_hz` from real clips end to end, saved as one (count, samples) float32 .npy.

    The clips are 16 kHz; at another rate (e.g. 44.1 kHz) they are resampled once here so that every pipeline
    starts from a common consumer-device rate and pays for its own resampler, as the seed did.
    """
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape[0] >= count:
            return path
    import soundfile

    from custom.daemon.audio.pcm import to_model_rate

    samples = int(WINDOW_S * rate_hz)
    pieces, total = [], 0
    files = clip_files(per_class=3)
    i = 0
    while total < samples * count:
        audio, rate = soundfile.read(files[i % len(files)], dtype="float32", always_2d=True)
        piece = to_model_rate(audio, rate, rate_hz)
        pieces.append(piece)
        total += len(piece)
        i += 1
    audio = np.concatenate(pieces)[: samples * count].reshape(count, samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, audio.astype(np.float32))
    os.replace(tmp, path)
    return path


def make_live_audio(path: Path, seconds: float = 60.0) -> Path:
    """A 16 kHz FLAC of real clips end to end for paplay to loop into the virtual mic (the sink runs at 16 kHz)."""
    if path.is_file():
        return path
    import soundfile

    from custom.daemon.audio.pcm import to_model_rate

    pieces, total, files = [], 0, clip_files(per_class=3)
    for i in range(10_000):
        if total >= seconds * 16000:
            break
        audio, rate = soundfile.read(files[i % len(files)], dtype="float32", always_2d=True)
        pieces.append(to_model_rate(audio, rate, 16000))
        total += len(pieces[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.flac")
    soundfile.write(tmp, np.concatenate(pieces), 16000, subtype="PCM_16")
    os.replace(tmp, path)
    return path


def converted(out: Path, args: list[str], log: Path) -> Path:
    """`out`, converted by `python -m bench.build ARGS --out OUT` unless today's converter already built it there."""
    if not cached_bundle(out, args):
        shutil.rmtree(out, ignore_errors=True)
        run_step([*args, "--out", str(out)], log)
        mark_bundle(out, args)
    return out


def vggish_inputs(work: Path, arch: str) -> tuple[Path, Path]:
    """(checkpoint, classifier folder) for `arch`, written once."""
    folder = work / arch
    checkpoint = folder / "vggish_random.ckpt"
    classifier = folder / "classifier"
    if not (checkpoint.is_file() and (classifier / "classifier.json").is_file()):
        run_step(["inputs", "--arch", arch, "--out", str(folder)], folder / "inputs.log")
    return checkpoint, classifier


def vggish_bundle(work: Path, arch: str, mode: str) -> Path:
    """The VGGish bundle in quantization `mode`, converted once by the real converter (`custom-convert vggish`)."""
    checkpoint, classifier = vggish_inputs(work, arch)
    out = work / arch / f"vggish-{mode}"
    args = ["vggish", "--arch", arch, "--mode", mode, "--checkpoint", str(checkpoint)]
    return converted(out, [*args, "--classifier", str(classifier)], work / arch / f"vggish-{mode}.log")


def yamnet_patch_bundle(work: Path) -> Path:
    """Coral's log-mel patch YAMNet (input [1,96,64], batchable) as a bundle, same classes and calibration."""
    return converted(work / "yamnet-patch", ["yamnet", "--patch"], work / "yamnet-patch.log")


def yamnet_bundle(work: Path) -> Path:
    """The shipped-default YAMNet bundle, built with the real converter exactly as tests/conftest.py does."""
    return converted(work / "yamnet", ["yamnet"], work / "yamnet.log")


# ------------------------------------------------------------------------------------------------ subprocess steps


def _write_inputs(arch_name: str, out: Path) -> None:
    from testing.vggish import random_weights, write_checkpoint, write_classifier

    arch = architecture(arch_name)
    write_classifier(out / "classifier")
    write_checkpoint(out / "vggish_random.ckpt", random_weights(arch, seed=0))


def _convert_vggish(args: argparse.Namespace) -> int:
    from custom.convert.backbones import vggish

    options = vggish.BuildOptions(
        checkpoint=args.checkpoint,
        pca=shared_dir() / "models" / "vggish_pca_params.npz",
        classifier=args.classifier,
        out=args.out,
        quantize=args.mode,
        calibration_audio=shared_dir() / "data" / "clips",
        calibration_patches=200 if args.arch == "official" else 16,
        bundle_id=f"bench-vggish-{args.mode}",
        version="0.0.0",
    )
    return vggish.build(options, architecture(args.arch))


def _convert_yamnet(out: Path, patch: bool = False) -> int:
    from custom.convert.cli import main as convert

    if not patch:  # the documented default-bundle command; --backbone yamnet: this entry is YAMNet in every table
        return convert(["default-bundle", "--shared", str(shared_dir()), "--backbone", "yamnet", "--out", str(out)])
    from custom.convert.backbones.yamnet import shared_layout_args

    args = shared_layout_args(shared_dir())  # the mapping recipe on Coral's patch model (same 521 outputs)
    args[args.index("--tflite") + 1] = str(shared_dir() / "models/yamnet_spectra_in.tflite")
    return convert(["yamnet", *args, "--out", str(out)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.build")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("inputs", help="random-weight checkpoint + tiny classifier")
    p.add_argument("--arch", choices=ARCH_NAMES, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("vggish", help="one VGGish bundle")
    p.add_argument("--arch", choices=ARCH_NAMES, required=True)
    p.add_argument("--mode", choices=VGGISH_MODES, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--classifier", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("yamnet", help="the YAMNet bundle")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--patch", action="store_true", help="Coral's log-mel patch model instead of the waveform one")
    args = parser.parse_args(argv)
    if args.step == "inputs":
        _write_inputs(args.arch, args.out)
        return 0
    if args.step == "vggish":
        return _convert_vggish(args)
    return _convert_yamnet(args.out, args.patch)


if __name__ == "__main__":
    raise SystemExit(main())
