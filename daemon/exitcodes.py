"""Process exit codes (BSD sysexits), so systemd and scripts can tell a bad config from a crash."""

OK = 0
USAGE = 2  # argparse's own code for a bad command line
DATA = 65  # EX_DATAERR: the input is there but wrong (e.g. calibrate heard no steady 1 kHz tone)
NO_INPUT = 66  # EX_NOINPUT: an input file is missing, unreadable or not audio
UNAVAILABLE = 69  # EX_UNAVAILABLE: a needed service or runtime is missing
SOFTWARE = 70  # EX_SOFTWARE: internal error
CANT_CREATE = 73  # EX_CANTCREAT: cannot write an output
CONFIG = 78  # EX_CONFIG: bad config or model bundle; systemd's RestartPreventExitStatus=78 stops a restart loop
