"""The console scripts' front door.

One repository installs three ways (`.[sensor]`, `.[fleet]`, `.[convert]`), yet every install carries all three
commands. A command run on an install that lacks its packages (custom-sensord on the fleet server, say) must say
which install it needs in one line, not end in a ModuleNotFoundError traceback from deep inside an import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from . import exitcodes


def guarded(command: str, extra: str, main: Callable[[], int]) -> int:
    """Run `main` (which imports what it needs lazily); a missing third-party package is one line and exit 69."""
    try:
        return main()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not missing or missing == "custom":
            raise  # our own code is missing: a broken install or a bug, not a missing extra
        print(
            f"{command}: this install lacks the Python package '{missing}'; {command} needs the {extra} install: "
            f"pip install 'custom-sensor[{extra}]'",
            file=sys.stderr,
        )
        return exitcodes.UNAVAILABLE
