"""A real PulseAudio virtual microphone for tests (owned by the capture work).

``virtual_mic`` starts a private PulseAudio server in the test's temp dir with a 16 kHz mono null sink ``vmic``;
the sink's monitor ``vmic.monitor`` is the microphone. PortAudio reaches it through ALSA's ``default`` device
(libasound2-plugins routes it to PulseAudio), so the code under test runs its real, unmodified PortAudio path.

How a client finds it: ``PULSE_SERVER`` (the socket) and ``PULSE_SOURCE=vmic.monitor``. The fixture sets both in
this process (restored afterwards) and offers ``mic.env`` for subprocesses (e.g. the daemon under test).

PortAudio and a server started later: PortAudio lists devices once, when it is initialised, and ALSA only makes
``pulse`` the ``default`` device if a server is running when it loads its configuration. A process that imported
sounddevice before this fixture ran therefore sees no usable device until PortAudio is re-initialised.
``MicCapture`` re-scans (``sounddevice._terminate(); sounddevice._initialize()``) before every open, for the same
reason on a real sensor (USB mic plugged in late); code that does not must run in a subprocess started after the
server.

Root: PulseAudio warns when run as root without ``--system`` but works in this per-user mode; ``HOME`` and
``XDG_RUNTIME_DIR`` point into the temp dir so it writes no cookie or state outside it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SINK = "vmic"
SOURCE = f"{SINK}.monitor"
RATE_HZ = 16000
START_TIMEOUT_S = 10.0


class VirtualMic:
    """One private PulseAudio server whose null-sink monitor is the microphone; it can vanish and come back."""

    def __init__(self, workdir: Path, rate_hz: int = RATE_HZ) -> None:
        self.dir = workdir
        self.rate_hz = rate_hz
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "pulse.sock"
        self.log_path = self.dir / "pulse.log"
        self._server: subprocess.Popen | None = None
        self._players: list[_Player] = []

    @property
    def env(self) -> dict[str, str]:
        """Variables a client process needs to use this server as its microphone."""
        return {"PULSE_SERVER": f"unix:{self.socket}", "PULSE_SOURCE": SOURCE}

    def _server_env(self) -> dict[str, str]:
        return {**os.environ, **self.env, "XDG_RUNTIME_DIR": str(self.dir), "HOME": str(self.dir)}

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until it answers; the microphone "is plugged in"."""
        if self.running:
            return
        for tool in ("pulseaudio", "pactl", "paplay"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} not found: install pulseaudio and pulseaudio-utils")
        self.socket.unlink(missing_ok=True)
        cmd = [
            "pulseaudio",
            "-n",  # no default.pa: only the modules below
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--use-pid-file=no",
            "--log-target=stderr",
            "-L",
            f"module-native-protocol-unix socket={self.socket} auth-anonymous=1",
            "-L",
            f"module-null-sink sink_name={SINK} rate={self.rate_hz} channels=1",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server owns it for its lifetime
        self._server = subprocess.Popen(
            cmd, env=self._server_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                pytest.fail(f"pulseaudio exited with {self._server.returncode}: {self.log_path.read_text()[-2000:]}")
            if self._answers():
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"pulseaudio did not answer within {timeout} s: {self.log_path.read_text()[-2000:]}")

    def _answers(self) -> bool:
        try:
            out = subprocess.run(
                ["pactl", "list", "short", "sources"],
                env=self._server_env(),
                capture_output=True,
                text=True,
                timeout=2.0,
            )
        except subprocess.TimeoutExpired:
            return False
        return out.returncode == 0 and SOURCE in out.stdout

    def stop(self, timeout: float = 5.0) -> None:
        """Kill the server: the microphone "is unplugged" (clients see their stream end)."""
        server, self._server = self._server, None
        if server is None or server.poll() is not None:
            return
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout)

    def play(self, path: str | Path, loop: bool = False) -> _Player:
        """Play a file into the mic (``paplay -d vmic``), in the background; ``loop`` repeats it until stopped,
        surviving server restarts."""
        player = _Player(["paplay", "-d", SINK, str(path)], self._server_env(), loop)
        self._players.append(player)
        return player

    def close(self) -> None:
        for player in self._players:
            player.stop()
        self._players.clear()
        self.stop()


class _Player:
    """paplay in the background; with loop, restarted whenever it ends (clip over, or server gone) until stopped."""

    def __init__(self, cmd: list[str], env: dict[str, str], loop: bool) -> None:
        self.started_at = time.time()  # wall time, to compare with window timestamps
        self._cmd = cmd
        self._env = env
        self._loop = loop
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._proc = self._spawn()
        self._thread: threading.Thread | None = None
        if loop:
            self._thread = threading.Thread(target=self._relaunch, name="paplay-loop", daemon=True)
            self._thread.start()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(
            self._cmd, env=self._env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _relaunch(self) -> None:
        while not self._stop.is_set():
            proc = self._proc
            if proc is not None and proc.poll() is None:
                self._stop.wait(0.05)
                continue
            if self._stop.wait(0.2):  # pause so a missing server is not hammered
                break
            self._proc = self._spawn()

    def wait(self, timeout: float) -> int:
        """Wait for a non-looping player to finish; returns paplay's exit code."""
        assert self._proc is not None
        return self._proc.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)


@pytest.fixture
def virtual_mic(monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualMic]:
    """A running private PulseAudio virtual mic; this process's PULSE_* variables point at it for the test."""
    # A short directory of its own, not tmp_path: a unix socket path must stay under 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="vmic-"))
    mic = VirtualMic(workdir)
    for key, value in mic.env.items():
        monkeypatch.setenv(key, value)
    try:
        mic.start()
        yield mic
    finally:
        mic.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def virtual_mic_48k(monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualMic]:
    """As ``virtual_mic``, at 48 kHz (a USB mic's usual rate): for the full-band level measurement."""
    workdir = Path(tempfile.mkdtemp(prefix="vmic48-"))
    mic = VirtualMic(workdir, rate_hz=48000)
    for key, value in mic.env.items():
        monkeypatch.setenv(key, value)
    try:
        mic.start()
        yield mic
    finally:
        mic.close()
        shutil.rmtree(workdir, ignore_errors=True)
