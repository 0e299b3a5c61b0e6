"""Test-only entry points that start the real daemon or ingest with a fault seam set, so no product CLI carries a
hidden test option and no product code reads a fault from the environment.

  python -m testing.faults sensord [--fault-stall-after N] [--summary-period-s S] <run options>
      `custom-sensord run` with the Service's test seams: stop processing after
      N windows (the systemd watchdog must then stop the process: TFLite cannot be hung on demand), or a short
      summary period so a test sees several "hours". Usable as a unit's ExecStart.
  python -m testing.faults ingest --exit-after-commit N run <custom-ingest run options>
      `custom-ingest run` that dies (exit 137, no cleanup) right after its Nth commit and before that batch's
      acknowledgements: the one crash point a real kill -9 cannot be aimed at. The seam is the alert evaluation that
      runs between the commit and the acks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any


def sensord(argv: list[str]) -> int:
    from custom.daemon.cli import build_parser, pin_blas_threads

    pin_blas_threads()  # as `custom-sensord` does, before numpy loads, so a test's daemon costs what a sensor's does
    from custom.daemon.noise.summary import DEFAULT_PERIOD_S
    from custom.daemon.service import RunOptions, run_service

    seams = argparse.ArgumentParser(prog="testing.faults sensord", add_help=False)
    seams.add_argument("--fault-stall-after", type=int, default=None, metavar="N")
    seams.add_argument("--summary-period-s", type=float, default=DEFAULT_PERIOD_S)
    faults, rest = seams.parse_known_args(argv)
    args = build_parser().parse_args(["run", *rest])
    return run_service(
        RunOptions(
            args.config,
            input_file=args.input,
            loop=args.loop,
            stall_after=faults.fault_stall_after,
            summary_period_s=faults.summary_period_s,
        )
    )


def ingest(argv: list[str]) -> int:
    from custom.ingest import cli
    from custom.ingest.alerts import Alerts

    seams = argparse.ArgumentParser(prog="testing.faults ingest", add_help=False)
    seams.add_argument("--exit-after-commit", type=int, required=True, metavar="N")
    faults, rest = seams.parse_known_args(argv)
    left = [faults.exit_after_commit]
    on_commit = Alerts.on_commit

    def crash_after_commit(self: Alerts, *args: Any, **kwargs: Any) -> Any:
        changed = on_commit(self, *args, **kwargs)
        left[0] -= 1
        if left[0] <= 0:
            logging.getLogger("custom.ingest.consumer").warning("fault injection: exiting between commit and ack")
            os._exit(137)
        return changed

    Alerts.on_commit = crash_after_commit  # type: ignore[method-assign]
    return int(cli.main(rest) or 0)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("sensord", "ingest"):
        print(__doc__, file=sys.stderr)
        return 2
    return {"sensord": sensord, "ingest": ingest}[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
