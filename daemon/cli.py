"""`custom-sensord`: the sensor daemon and its tools.

  run           capture, classify and publish until stopped (what systemd starts)
  classify      classify recordings with a bundle, through the daemon's own code path
  check-config  validate a config file and exit (78 if it is bad)
  status        what the running service last reported; exit 0 only when it is healthy
  devices       list audio input devices
  calibrate     measure a 1 kHz acoustic calibrator and set audio.calibration_db
  bundle assemble  assemble a model bundle from a prebuilt head + manifest and the published backbones

Exit codes: 0 ok, 2 usage, 65 bad data (calibrate), 66 unreadable input, 69 missing runtime, 78 bad config or bundle.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from custom.wire import exitcodes
from custom.wire.entry import guarded

if TYPE_CHECKING:
    from .config import Config

DEFAULT_CONFIG = Path("/etc/custom-sensor/config.yaml")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")


def _load(path: Path) -> Config | None:
    """The config, or None once its one-line error is printed (the caller exits 78)."""
    from custom.wire.settings import ConfigError

    from .config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"custom-sensord: {path}: {exc}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return exitcodes.CONFIG
    print(f"{args.config}: ok (sensor {config.sensor_id}, bundle {config.model.bundle})")
    return exitcodes.OK


def _status(args: argparse.Namespace) -> int:
    from . import status

    config = _load(args.config)
    return exitcodes.CONFIG if config is None else status.run(args, config)


def _documented(sub: Any, name: str, help_text: str, module: ModuleType) -> argparse.ArgumentParser:
    """A subcommand whose --help is its module's docstring."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser


def _devices(args: argparse.Namespace) -> int:
    from .audio.devices import format_devices, list_input_devices

    devices = list_input_devices()
    if args.json:
        import json

        print(json.dumps(devices, indent=2))
    else:
        print(format_devices(devices))
    return exitcodes.OK if devices else exitcodes.UNAVAILABLE


def _run(args: argparse.Namespace) -> int:
    from .service import RunOptions, run_service

    return run_service(RunOptions(args.config, input_file=args.input, loop=args.loop))


def build_parser() -> argparse.ArgumentParser:
    from . import classify

    parser = argparse.ArgumentParser(
        prog="custom-sensord", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the sensor: capture, classify, publish (systemd starts this)")
    _add_config(p)
    p.add_argument("--input", type=Path, help="replay this recording at real-time pace instead of the microphone")
    p.add_argument("--loop", action="store_true", help="with --input: replay the recording over and over (demos)")
    p.set_defaults(func=_run)

    p = _documented(sub, "classify", "classify recordings with a model bundle", classify)
    classify.add_arguments(p)
    p.set_defaults(func=classify.run)

    p = sub.add_parser("check-config", help="validate a config file (exit 78 if bad)")
    _add_config(p)
    p.set_defaults(func=_check_config)

    from . import status

    p = _documented(sub, "status", "what the running service last reported (exit 69 unless healthy)", status)
    _add_config(p)
    status.add_arguments(p)
    p.set_defaults(func=_status)

    p = sub.add_parser("devices", help="list audio input devices")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_devices)

    from .noise import calibrate

    p = _documented(sub, "calibrate", "measure a 1 kHz calibrator on the mic and write audio.calibration_db", calibrate)
    _add_config(p)
    calibrate.add_arguments(p)
    p.set_defaults(func=calibrate.run)

    from .model import assemble

    p = sub.add_parser("bundle", help="model bundle tools (assemble)")
    bundle_sub = p.add_subparsers(dest="bundle_command", required=True, metavar="BUNDLE_COMMAND")
    p = _documented(bundle_sub, "assemble", "assemble a bundle from a prebuilt head + manifest (models/default) and "
                    "the published backbones, no TensorFlow", assemble)  # fmt: skip
    assemble.add_arguments(p)
    p.set_defaults(func=assemble.run)
    return parser


# numpy's BLAS would start a busy thread per core for the front ends' matrix products: measured no faster per
# window, twice the CPU (bench/ENSEMBLE.md). The interpreters have their own threads (`model.threads`).
BLAS_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def pin_blas_threads() -> None:
    """Call before numpy loads (nothing above imports it); a value the caller set wins."""
    for key, value in BLAS_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    pin_blas_threads()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `custom-sensord classify ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return exitcodes.OK


def entry() -> int:
    """The `custom-sensord` console script: on an install without the sensor extra, one line naming it."""
    return guarded("custom-sensord", "sensor", main)


if __name__ == "__main__":
    sys.exit(main())
