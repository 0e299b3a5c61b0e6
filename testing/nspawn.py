"""A booted Debian 12 container with real systemd for the systemd test tier.

The host's PID 1 is not systemd, so `machinectl`/`systemd-run -M` cannot reach a container: it is booted with
`systemd-nspawn --keep-unit --register=no` in the background and entered with `nsenter -t <its PID 1> -a`. Nothing
here needs systemd on the host.

The debootstrapped root is cached outside git (CUSTOM_NSPAWN_CACHE, default /var/cache/custom-sensor), keyed by a
hash of the suite and package list; every test session gets an overlay (or copy) of it, so a test never dirties
the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# systemd + what deploy/install.sh would apt-get (preinstalled so install.sh finds them and needs no apt), plus
# PulseAudio for the container's virtual microphone and PostgreSQL for the ingest unit.
PACKAGES = (
    "systemd",
    "dbus",
    "python3",
    "python3-venv",
    "python3-dev",
    "gcc",
    "pkg-config",
    "libsystemd-dev",
    "libportaudio2",
    "libsndfile1",
    "alsa-utils",
    "ca-certificates",
    "mosquitto-clients",
    "pulseaudio",
    "pulseaudio-utils",
    "libasound2-plugins",  # ALSA default device -> PulseAudio, for the daemon's PortAudio
    "postgresql",
    "procps",  # /bin/kill for ExecReload
    "iproute2",
)
CACHE = Path(os.environ.get("CUSTOM_NSPAWN_CACHE", "/var/cache/custom-sensor"))


def root_key() -> str:
    """Cache key: a change to the suite or package list makes a new root instead of reusing a stale one."""
    text = "\n".join((SUITE, MIRROR, *sorted(PACKAGES)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_root() -> Path:
    return CACHE / f"nspawn-{SUITE}-{root_key()}"


def ensure_root() -> Path:
    """The cached root, debootstrapped first when missing (about 2-4 min cold). Built beside it, then renamed,
    so an interrupted run never leaves a half-made root under the final name."""
    final = cached_root()
    if (final / "usr/lib/systemd/systemd").exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    # one builder at a time: two test sessions on one machine must not debootstrap into the same folder
    with (CACHE / ".nspawn.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "usr/lib/systemd/systemd").exists():
            return final
        building = final.with_name(final.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(building), MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        os.rename(building, final)
        for stale in CACHE.glob(f"nspawn-{SUITE}-*"):  # roots of older package lists
            if stale != final:
                shutil.rmtree(stale, ignore_errors=True)
    return final


PATH_INSIDE = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT_S = 60.0


def session_root(cached: Path, workdir: Path, layers: Sequence[Path] = ()) -> Path:
    """A private, writable view of the cached root for one session: tests write into it, never into the cache.

    An overlay mount (the cache as the read-only lower layer, under any cached `layers`, topmost first) costs nothing
    to make or drop; where overlayfs is not allowed, a full copy (1.3 GB) instead. `release` undoes either."""
    merged, upper, work = workdir / "root", workdir / "upper", workdir / "work"
    for folder in (merged, upper, work):
        folder.mkdir(parents=True, exist_ok=True)
    lower = ":".join(str(folder) for folder in (*layers, cached))
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], capture_output=True)
    if mounted.returncode != 0:
        for folder in (cached, *reversed(layers)):
            subprocess.run(["cp", "-a", "--reflink=auto", f"{folder}/.", str(merged)], check=True)
    return merged


def release(workdir: Path) -> None:
    """Unmount the session's root (if it is an overlay) and delete everything the session wrote."""
    merged = workdir / "root"
    if os.path.ismount(merged):
        subprocess.run(["umount", str(merged)], check=False)
    if not os.path.ismount(merged):
        shutil.rmtree(workdir, ignore_errors=True)


class Container:
    """One booted container: `systemd-nspawn -b` in the background, commands through `nsenter` into its PID 1.

    Without --private-network it shares the host's network, so a broker on host loopback is reachable from it.
    """

    def __init__(self, root: Path, name: str, binds: list[str] | None = None, log: Path | None = None) -> None:
        self.root = root
        self.name = name
        self.binds = binds or []
        self.log = log or root.with_name(root.name + ".console.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self, timeout: float = BOOT_TIMEOUT_S) -> Container:
        command = ["systemd-nspawn", "-q", "-D", str(self.root), "-b", "--register=no", "--keep-unit"]
        command += ["--console=pipe", "-M", self.name, *(f"--bind{b}" for b in self.binds)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.console()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no container PID 1 after {timeout} s:\n{self.console()}")
            self.leader = self._find_leader()
            time.sleep(0.1)
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"container not booted after {timeout} s (state {state!r}):\n{self.console()}")

    def _find_leader(self) -> int:
        """The container's init: the child of systemd-nspawn that runs systemd."""
        assert self.proc is not None
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            for pid in task.read_text().split():
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
                except OSError:
                    continue
        return 0

    def run(
        self, *argv: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all its namespaces), with a clean environment."""
        clean = {"PATH": PATH_INSIDE, "LANG": "C.UTF-8", "HOME": "/root", **(env or {})}
        command = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *(f"{k}={v}" for k, v in clean.items())]
        result = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, **kwargs)  # type: ignore[arg-type]

    def console(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        """Power the container off; kill systemd-nspawn only if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.leader:
            subprocess.run(["kill", "-RTMIN+4", str(self.leader)], check=False)  # systemd: poweroff
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# ------------------------------------------------------------------------------------ the sensor inside a container

PIP_CACHE = CACHE / "pip"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
MIC_DIR = "/run/vmic"  # the container's PulseAudio socket lives here
MIC_UNIT = f"""[Unit]
Description=virtual microphone for tests: a PulseAudio null sink whose monitor is the mic

[Service]
Environment=XDG_RUNTIME_DIR={MIC_DIR} HOME={MIC_DIR}
RuntimeDirectory=vmic
RuntimeDirectoryMode=0755
ExecStart=/usr/bin/pulseaudio -n --daemonize=no --exit-idle-time=-1 --disallow-exit --system=no \\
    -L "module-native-protocol-unix socket={MIC_DIR}/pulse.sock auth-anonymous=1" \\
    -L "module-null-sink sink_name=vmic rate=16000 channels=1"
"""
# Plays a clip from ../shared (bound at /shared) into the mic, over and over; CLIP is set in a drop-in.
PLAYER_UNIT = f"""[Unit]
Description=test clip into the virtual microphone, looped
After=vmic.service
Requires=vmic.service

[Service]
Environment=PULSE_SERVER=unix:{MIC_DIR}/pulse.sock
ExecStart=/bin/sh -c 'while :; do paplay -d vmic "$CLIP" || sleep 0.5; done'
"""


def copy_source(checkout: Path, dest: Path) -> None:
    """The checkout without its venvs and git data: pip builds in the source folder, so it cannot be a read-only
    bind of the host's checkout."""
    skip = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "build", ".mypy_cache", "reports")
    shutil.copytree(checkout, dest, ignore=skip, symlinks=True)


def sensor_container(
    workdir: Path,
    checkout: Path | None,
    shared: Path,
    name: str,
    layers: Sequence[Path] = (),
    prepare: Callable[[Path], None] | None = None,
) -> Container:
    """A booted container prepared for deploy/install.sh: source at /src (unless `checkout` is None), ../shared at
    /shared (read-only), the host's CA bundle (pip goes through the same TLS as the host), a pip cache shared
    between runs, and a running virtual microphone (vmic.service). `layers` go over the cached root (see
    `session_root`); `prepare` gets the root before it boots."""
    root = session_root(ensure_root(), workdir, layers)
    if checkout is not None:
        copy_source(checkout, root / "src")
    if HOST_CA.exists():
        shutil.copyfile(HOST_CA, root / str(HOST_CA).lstrip("/"))
    units = root / "etc/systemd/system"
    (units / "vmic.service").write_text(MIC_UNIT)
    (units / "vmic-player.service").write_text(PLAYER_UNIT)
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    binds = [f"-ro={shared}:/shared", f"={PIP_CACHE}:/root/.cache/pip"]
    if prepare is not None:
        prepare(root)
    container = Container(root, name, binds, log=workdir / "console.log")
    try:
        container.boot()
        container.run("systemctl", "start", "vmic.service")
    except BaseException:
        container.stop()
        release(workdir)
        raise
    return container
