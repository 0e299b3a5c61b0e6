"""A service under test run as a subprocess with its output in a log file: started, stopped (SIGTERM, then a kill
that fails the test if it hangs) or killed (SIGKILL), its log quoted in failures. The daemon and the ingest both."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from .shared import source_env


class LoggedProcess:
    name = "process"  # in the failure message of a process that does not stop

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def _launch(self, command: list[str], env: dict[str, str]) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        # the checkout's root on PYTHONPATH: the test-only entry points (`python -m testing.faults`) live there
        self.proc = subprocess.Popen(command, env=source_env(env), stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code (kills it after `timeout` so a hang fails the test)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.name} did not stop within {timeout} s; log:\n{self.log()}") from None
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL: no goodbye, no last commit, no last acknowledgement."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def reap(self) -> None:
        """Test teardown: whatever a test left running is killed, so no process outlives its test."""
        if self.proc is not None:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
