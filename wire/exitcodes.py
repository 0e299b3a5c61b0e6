"""Process exit codes (BSD sysexits), so systemd and scripts can tell a bad config from a crash.

Shared by every command of the sensor, the fleet and the converter; the values are the platform's `os.EX_*` where it
has one, so they can never drift from what `sysexits.h` says.
"""

import os

OK = os.EX_OK  # 0
USAGE = 2  # argparse's own code for a bad command line (not EX_USAGE, 64: argparse exits before we could choose)
DATA_ERROR = os.EX_DATAERR  # 65: input data is wrong (e.g. a training set with a class missing)
NO_INPUT = os.EX_NOINPUT  # 66: an input file is missing, unreadable or not audio
UNAVAILABLE = os.EX_UNAVAILABLE  # 69: a needed service or runtime is missing
SOFTWARE = os.EX_SOFTWARE  # 70: internal error
CANT_CREATE = os.EX_CANTCREAT  # 73: cannot write an output
CONFIG = os.EX_CONFIG  # 78: bad config or model bundle; systemd's RestartPreventExitStatus=78 stops a restart loop
