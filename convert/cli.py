"""`custom-convert`: the offline, workstation-side tools that make and check model bundles.

Each subcommand lives in its own module exposing HELP, add_arguments(parser) and run(args) -> exit code. Modules
import TensorFlow inside run(), never at import time, so `--help` stays fast and works without the convert extra.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from custom.wire import exitcodes
from custom.wire.entry import guarded

# subcommand -> module under custom.convert
SUBCOMMANDS = {
    "yamnet": "backbones.yamnet",
    "vggish": "backbones.vggish",
    "efficientat": "backbones.efficientat",
    "train": "vggish_classifier.train",
    "evaluate": "evaluate.classifier",
    "evaluate-clips": "evaluate.clips",
    "head": "head.build",
    "default-bundle": "default_bundle",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="custom-convert",
        description="Build, train and evaluate custom-sensor model bundles (runs on a workstation, not the Pi).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"custom.convert.{module_name}")
        p = sub.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("custom-convert: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:
        print(
            f"custom-convert: {exc}; install the converter extra: pip install 'custom-sensor[convert]'", file=sys.stderr
        )
        return exitcodes.UNAVAILABLE


def entry() -> int:
    """The `custom-convert` console script: on an install without the convert extra, one line naming it."""
    return guarded("custom-convert", "convert", main)


if __name__ == "__main__":
    sys.exit(main())
