"""`custom-sensord classify FILE...`: run a bundle over recordings through the live daemon's own code path.

Files are cut into windows exactly like live audio (10 s, no overlap); a short last window is scored on what there
is (padded to one patch at least) and marked `padded`. Output is a line per window for people, or with --json one
event per line with the same fields the daemon publishes plus the file path.

Window timestamps: a file carries no capture time, so windows are stamped from the file's modification time minus
its duration (the best guess of when the recording started); `window.offset_s` gives the position in the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import exitcodes
from .audiofile import AudioFile, AudioFileError, read_audio
from .bundle import BundleError, load_bundle
from .event import EventContext
from .levels import LevelMeter
from .model import Model
from .runtime import RuntimeMissingError

DEFAULT_BUNDLE = Path("/var/lib/custom-sensor/bundle")
MIN_DURATION_S = 1.0  # shorter recordings hold less than one YAMNet/VGGish patch: nothing meaningful to say
SILENCE_PEAK = 1e-4  # -80 dBFS peak: digital silence or a dead microphone, not a quiet street


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="wav, flac or ogg recordings")
    parser.add_argument(
        "--bundle", type=Path, default=None, help=f"model bundle folder (default: $CUSTOM_BUNDLE or {DEFAULT_BUNDLE})"
    )
    parser.add_argument("--json", action="store_true", help="one JSON event per window (the daemon's event fields)")
    parser.add_argument("--window", type=float, default=10.0, metavar="SECONDS", help="window length (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="TFLite CPU threads (default 1)")
    parser.add_argument("--sensor-id", default="classify", help="sensor_id written into JSON events")


def windows(audio: AudioFile, window_s: float) -> Iterator[tuple[float, np.ndarray, bool]]:
    """(offset_s, samples, padded) for consecutive windows; the short tail is kept and marked."""
    size = int(round(window_s * audio.rate_hz))
    for start in range(0, len(audio.waveform), size):
        chunk = audio.waveform[start : start + size]
        if start > 0 and len(chunk) < MIN_DURATION_S * audio.rate_hz:
            return  # a sliver after the last full window: too short to score on its own
        yield start / audio.rate_hz, chunk, len(chunk) < size


def check_audio(audio: AudioFile) -> None:
    if audio.duration_s < MIN_DURATION_S:
        raise AudioFileError(f"{audio.path}: only {audio.duration_s:.2f} s of audio; need at least {MIN_DURATION_S} s")
    peak = float(np.max(np.abs(audio.waveform)))
    if peak < SILENCE_PEAK:
        raise AudioFileError(f"{audio.path}: silent recording (peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS)")


def format_line(event: dict) -> str:
    window = event["window"]
    end = window["offset_s"] + window["duration_s"]
    span = f"{window['offset_s']:7.1f}-{end:6.1f} s" + (" (padded)" if window.get("padded") else "")
    labels = ", ".join(f"{lab['name']} {lab['score']:.2f}" for lab in event["labels"]) or "-"
    top = event["top"]
    level = event["level"]["laeq"]
    level_text = f"{level:6.1f} {event['level']['unit']}" if level is not None else "   -inf"
    return f"{event['file']}  {span}  {level_text}  top {top['name']} {top['score']:.2f}  labels: {labels}"


def run(args: argparse.Namespace) -> int:
    import os

    bundle_path = args.bundle or Path(os.environ.get("CUSTOM_BUNDLE", DEFAULT_BUNDLE))
    try:
        model = Model(load_bundle(bundle_path), threads=args.threads)
    except BundleError as exc:
        print(f"custom-sensord classify: bad bundle: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except RuntimeMissingError as exc:
        print(f"custom-sensord classify: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    bundle = model.bundle
    context = EventContext(
        sensor_id=args.sensor_id,
        location={},
        class_names=bundle.class_names,
        thresholds=bundle.thresholds,
        bundle_id=bundle.bundle_id,
        bundle_sha256=bundle.sha256,
        level_unit="dBFS",
    )
    meter = LevelMeter()
    status = exitcodes.OK
    for path in args.files:
        try:
            audio = read_audio(path, bundle.frontend.sample_rate_hz)
            check_audio(audio)
        except AudioFileError as exc:
            print(f"custom-sensord classify: {exc}", file=sys.stderr)
            status = exitcodes.NO_INPUT
            continue
        recorded_at = path.stat().st_mtime - audio.duration_s
        for offset_s, chunk, padded in windows(audio, args.window):
            t0 = time.perf_counter()
            result = model.scores(chunk)
            levels = meter(chunk, audio.rate_hz)
            start = recorded_at + offset_s
            event = context.build(
                result.scores,
                start=start,
                end=start + len(chunk) / audio.rate_hz,
                levels=levels.to_event(),
                processing_ms=(time.perf_counter() - t0) * 1e3,
                extra={"file": str(path)},
            )
            event["window"].update(offset_s=round(offset_s, 3), padded=padded)
            print(json.dumps(event) if args.json else format_line(event), flush=True)
    return status
