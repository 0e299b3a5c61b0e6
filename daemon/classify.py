"""`custom-sensord classify FILE...`: run a bundle over recordings through the live daemon's own code path.

Files are decoded at their own rate, as live audio arrives at the capture rate: levels measure the file's full band
and the pipeline gives the model its 16 kHz band, so a file and the same sound live give the same figures. Files are
cut into windows exactly like live audio (10 s, no overlap); a short last window is scored on what there
is (padded to one patch at least) and marked `padded`. Output is a line per window for people, or with --json one
event per line with the same fields the daemon publishes plus the file path.

Window timestamps: a file carries no capture time, so windows are stamped from the file's modification time minus
its duration (the best guess of when the recording started); `window.offset_s` gives the position in the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from custom.wire import exitcodes

from .audio.audiofile import AudioFile, AudioFileError, read_audio
from .audio.windows import recording_windows
from .config import ModelConfig
from .model.bundle import BundleError
from .model.runtime import RuntimeMissingError
from .pipeline import bundle_pipeline
from .publish.event import Event

DEFAULT_BUNDLE = ModelConfig.bundle  # the daemon's default bundle folder
DEFAULT_THREADS = ModelConfig.threads  # the daemon's default, so classify measures what the sensor runs
MIN_DURATION_S = 1.0  # shorter recordings hold less than one YAMNet/VGGish patch: nothing meaningful to say
SILENCE_PEAK = 1e-4  # -80 dBFS peak: digital silence or a dead microphone, not a quiet street


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="wav, flac or ogg recordings")
    parser.add_argument(
        "--bundle", type=Path, default=None, help=f"model bundle folder (default: $CUSTOM_BUNDLE or {DEFAULT_BUNDLE})"
    )
    parser.add_argument("--json", action="store_true", help="one JSON event per window (the daemon's event fields)")
    parser.add_argument("--window", type=float, default=10.0, metavar="SECONDS", help="window length (default 10)")
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help=f"TFLite CPU threads (default {DEFAULT_THREADS})"
    )
    parser.add_argument("--sensor-id", default="classify", help="sensor_id written into JSON events")


def check_audio(audio: AudioFile) -> None:
    if audio.duration_s < MIN_DURATION_S:
        raise AudioFileError(f"{audio.path}: only {audio.duration_s:.2f} s of audio; need at least {MIN_DURATION_S} s")
    if not np.all(np.isfinite(audio.waveform)):  # a float file with NaN or inf (one NaN channel is enough)
        bad = int(np.size(audio.waveform) - np.count_nonzero(np.isfinite(audio.waveform)))
        raise AudioFileError(f"{audio.path}: {bad} sample(s) are NaN or infinite: not a recording")
    peak = float(np.max(np.abs(audio.waveform)))
    if peak < SILENCE_PEAK:
        raise AudioFileError(f"{audio.path}: silent recording (peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS)")


def format_line(event: Event, path: Path, offset_s: float, padded: bool) -> str:
    end = offset_s + round(event.end - event.start, 3)
    span = f"{offset_s:7.1f}-{end:6.1f} s" + (" (padded)" if padded else "")
    labels = ", ".join(f"{label.name} {label.score:.2f}" for label in event.labels) or "-"
    level = event.level["laeq"]
    level_text = f"{level:6.1f} {event.level['unit']}" if level is not None else "   -inf"
    top_text = f"{event.top_name or 'nothing heard'} {event.top_score:.2f}"
    return f"{path}  {span}  {level_text}  top {top_text}  labels: {labels}"


def run(args: argparse.Namespace) -> int:
    bundle_path = args.bundle or Path(os.environ.get("CUSTOM_BUNDLE", DEFAULT_BUNDLE))
    try:
        pipeline = bundle_pipeline(bundle_path, args.threads, args.sensor_id)
    except BundleError as exc:
        print(f"custom-sensord classify: bad bundle: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except RuntimeMissingError as exc:
        print(f"custom-sensord classify: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    status = exitcodes.OK
    for path in args.files:
        try:
            audio = read_audio(path, rate_hz=None)  # the file's own rate, as live capture
            check_audio(audio)
        except AudioFileError as exc:
            print(f"custom-sensord classify: {exc}", file=sys.stderr)
            status = exitcodes.NO_INPUT
            continue
        recorded_at = path.stat().st_mtime - audio.duration_s
        size = round(args.window * audio.rate_hz)
        for window in recording_windows(audio.waveform, audio.rate_hz, args.window, recorded_at, MIN_DURATION_S):
            event = pipeline.score(window, extra={"file": str(path)}).event
            offset_s, padded = round(window.start_sample / audio.rate_hz, 3), len(window.samples) < size
            if args.json:  # the daemon's event, plus where in the file the window lies
                line = event.to_json()
                line["window"].update(offset_s=offset_s, padded=padded)
                print(json.dumps(line), flush=True)
            else:
                print(format_line(event, path, offset_s, padded), flush=True)
    return status
