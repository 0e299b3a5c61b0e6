"""A Raspberry Pi's userland on this x86 machine: an arm64 Debian 12 chroot run under qemu-user.

Why: the sensor runs on a Pi 4 (aarch64, Debian 12 / Raspberry Pi OS), while every other test runs on x86_64.
Here the real aarch64 wheels (numpy, soxr, soundfile, ai-edge-litert, tflite-runtime 2.14) install and run, so a
packaging or numerics difference between the two architectures shows up before a sensor does.

How (needs root, debootstrap, qemu-user-static and binfmt-support):
- the root is built once by `debootstrap --arch=arm64 --foreign` plus the second stage inside the chroot, with two
  venvs holding the daemon's dependencies (ai-edge-litert in one, tflite-runtime 2.14 + numpy<2 in the other); it is
  cached outside git under CUSTOM_ARM64_CACHE (default /var/cache/custom-sensor), keyed by a hash of all that goes
  into it, so changing the recipe or the requirements builds a new one;
- every run mounts the cached root read-only under an overlay in a private mount namespace (`unshare --mount`): the
  cache is never dirtied and a crashed run leaks no mounts; the checkout is copied into the overlay and installed
  there without dependencies, as `pip install` of the package would on a Pi;
- QEMU_CPU=cortex-a72 always (the Pi 4's core; qemu's default CPU is about 13x slower), and a Pi 4 /proc/cpuinfo is
  bound over the chroot's, because ai-edge-litert segfaults reading the host's x86 one.
Timings measured here are emulated, never a Pi figure.
"""

from __future__ import annotations

import configparser
import csv
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .shared import ROOT, shared_dir

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "libsndfile1")
QEMU_CPU = "cortex-a72"  # the Pi 4's core; qemu-aarch64's default ("max") is about 13x slower here
CPUINFO = Path(__file__).with_name("pi4-cpuinfo.txt")  # a Pi 4 (2 Cortex-A72 cores, as the issue measured)
RECIPE_VERSION = 1  # bump when the build steps below change in a way the key cannot see
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TOOLS = ("setuptools>=64", "wheel")  # so the checkout installs with --no-build-isolation (no download per run)
TFLITE214_PINS = ("numpy<2", "tflite-runtime==2.14.0")  # tflite-runtime's last release needs numpy 1.x
LITERT_PACKAGE = "ai-edge-litert"

# The two venvs inside the root: name -> where; each gets the daemon's install_requires adapted to its runtime.
VENVS = {"ai_edge_litert": "/opt/venv-litert", "tflite_runtime": "/opt/venv-tflite214"}
SHARED_MOUNT = "/shared"  # ../shared, bound read-only
BUNDLE_MOUNT = "/bundle"  # a bundle built on the x86 side (building one needs TensorFlow), bound read-only
SOURCE_DIR = "/src"  # the copy of the checkout that is installed
SOURCE_ITEMS = ("setup.cfg", "pyproject.toml", "README.md", "config.yaml", "daemon", "convert", "ingest", "wire")
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Arm64Unavailable(RuntimeError):
    """This machine cannot run the arm64 chroot (not root, a tool missing, no aarch64 binfmt handler)."""


def cache_dir() -> Path:
    return Path(os.environ.get("CUSTOM_ARM64_CACHE", "/var/cache/custom-sensor"))


def daemon_requirements() -> list[str]:
    """What `pip install .[sensor]` pulls (install_requires and the sensor extra of setup.cfg), without environment
    markers (the chroot is aarch64, where all of them apply)."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = [
        *parser["options"]["install_requires"].splitlines(),
        *parser["options.extras_require"]["sensor"].splitlines(),
    ]
    return [line.split(";")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def venv_requirements() -> dict[str, list[str]]:
    """What each venv holds: the daemon's requirements with exactly one TFLite runtime."""
    base = [req for req in daemon_requirements() if not req.startswith(LITERT_PACKAGE)]
    litert = [req for req in daemon_requirements() if req.startswith(LITERT_PACKAGE)]
    return {"ai_edge_litert": [*BUILD_TOOLS, *base, *litert], "tflite_runtime": [*BUILD_TOOLS, *base, *TFLITE214_PINS]}


def recipe() -> dict[str, object]:
    """Everything that decides the cached root's contents; its hash names the cache folder."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": list(DEBIAN_PACKAGES),
        "venvs": {name: [VENVS[name], reqs] for name, reqs in venv_requirements().items()},
    }


def cache_key() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]


def check_host() -> None:
    """Raise Arm64Unavailable naming what is missing, so a test can say why it cannot run."""
    if os.geteuid() != 0:
        raise Arm64Unavailable("needs root (debootstrap, chroot, mounts)")
    for tool in ("debootstrap", "chroot", "unshare", "mount", "qemu-aarch64-static", "update-binfmts"):
        if shutil.which(tool) is None:
            raise Arm64Unavailable(f"{tool} not found: install debootstrap qemu-user-static binfmt-support")
    enable_binfmt()


def enable_binfmt() -> None:
    """Mount binfmt_misc if needed and enable qemu-aarch64, so the kernel runs aarch64 binaries through qemu."""
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)], check=True)
    handler = misc / "qemu-aarch64"
    if not handler.exists() or "enabled" not in handler.read_text():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True)
    if not handler.exists() or "enabled" not in handler.read_text():
        raise Arm64Unavailable("no enabled qemu-aarch64 binfmt handler (update-binfmts --enable qemu-aarch64)")


def chroot_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for processes in the chroot; QEMU_CPU is read by qemu for every aarch64 process."""
    env = {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "QEMU_CPU": QEMU_CPU,
        "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
        "PIP_DEFAULT_TIMEOUT": "180",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    env.update(extra or {})
    return env


def _mount_script(root: str, binds: Sequence[tuple[Path, str]], argv: Sequence[str], env: Mapping[str, str]) -> str:
    """Shell run in a private mount namespace: proc, /dev, the Pi cpuinfo and read-only binds, then the command."""
    lines = [
        "set -e",
        f"mount -t proc proc {root}/proc",
        f"mount --bind {shlex.quote(str(CPUINFO))} {root}/proc/cpuinfo",
        f"mount --bind /dev {root}/dev",
    ]
    for source, target in binds:
        lines += [f"mkdir -p {root}{target}", f"mount -o bind,ro {shlex.quote(str(source))} {root}{target}"]
    command = ["chroot", root, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines)


def _in_namespace(script: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    # --propagation private: nothing mounted here reaches the host, and it all goes away when the command ends
    return subprocess.run(
        ["nice", "-n", "10", "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _build(target: Path, log: Path) -> None:
    """debootstrap + second stage + CA certificates + the two venvs, into `target` (a fresh folder)."""

    def step(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        with log.open("a") as out:
            out.write(f"$ {shlex.join(argv)}\n")
            out.flush()
            subprocess.run(argv, check=True, stdout=out, stderr=subprocess.STDOUT, env=env)

    packages = ",".join(DEBIAN_PACKAGES)
    step(["nice", "-n", "10", "debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
          f"--include={packages}", SUITE, str(target), MIRROR])  # fmt: skip
    step(["nice", "-n", "10", "chroot", str(target), "/debootstrap/debootstrap", "--second-stage"],
         env={**os.environ, "QEMU_CPU": QEMU_CPU})  # fmt: skip
    provision(target, log)


def provision(target: Path, log: Path) -> None:
    """After debootstrap: the host's CA bundle (it may hold a proxy's CA that Debian's lacks) and resolver for
    pip, then the two venvs with the daemon's dependencies."""
    shutil.copyfile(HOST_CA_BUNDLE, target / "etc/ssl/certs/ca-certificates.crt")
    shutil.copyfile("/etc/resolv.conf", target / "etc/resolv.conf", follow_symlinks=True)
    for name, reqs in venv_requirements().items():
        venv = VENVS[name]
        script = " && ".join([f"python3 -m venv {venv}", f"{venv}/bin/pip install -q " + shlex.join(reqs)])
        result = _in_namespace(_mount_script(str(target), [], ["sh", "-c", script], chroot_env()))
        with log.open("a") as out:
            out.write(f"$ {script}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise RuntimeError(f"arm64 root: {script} failed ({result.returncode}); see {log}")


def cached_root() -> Path:
    """The cached arm64 root for the current recipe, built on first use (about 10 min, emulated); never modified."""
    check_host()
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"arm64-{SUITE}-{cache_key()}"
    with (base / f".arm64-{SUITE}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions building the same root wait for one another
        if (final / ".complete").exists():
            return final
        partial = final.with_name(final.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)  # an interrupted build: start over, the steps are not resumable
        partial.mkdir()
        log = base / f"{final.name}.log"
        log.write_text(json.dumps(recipe(), indent=2) + "\n")
        _build(partial, log)
        (partial / ".complete").write_text(json.dumps(recipe(), sort_keys=True) + "\n")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    return final


@dataclass
class Arm64Run:
    """One overlay on the cached root: commands run in it see each other's changes; the cache never does."""

    lower: Path
    scratch: Path
    binds: list[tuple[Path, str]]

    @property
    def upper(self) -> Path:
        return self.scratch / "upper"

    def run(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        merged = self.scratch / "merged"
        options = f"lowerdir={self.lower},upperdir={self.upper},workdir={self.scratch / 'work'}"
        script = f"mount -t overlay overlay -o {shlex.quote(options)} {merged}\n" + _mount_script(
            str(merged), self.binds, argv, chroot_env(env)
        )
        return _in_namespace(script, timeout)

    def install_checkout(self, venv: str) -> subprocess.CompletedProcess[str]:
        """pip install of the checkout copy into one venv: no dependencies (the cached venv has them), no index."""
        pip = f"{VENVS[venv]}/bin/pip"
        return self.run([pip, "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", SOURCE_DIR])

    def command(self, venv: str, name: str = "custom-sensord") -> str:
        return f"{VENVS[venv]}/bin/{name}"


def copy_checkout(upper: Path) -> None:
    """The files `pip install .` needs, into the overlay's upper layer (the checkout itself stays untouched)."""
    target = upper / SOURCE_DIR.lstrip("/")
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for item in SOURCE_ITEMS:
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, target / item, ignore=ignore)
        else:
            shutil.copy2(source, target / item)


@contextmanager
def arm64_run(bundle: Path | None = None, shared: Path | None = None) -> Iterator[Arm64Run]:
    """An overlay on the cached root with the checkout copied in, ../shared and `bundle` bound read-only."""
    lower = cached_root()
    binds = [(shared or shared_dir(), SHARED_MOUNT)]
    if bundle is not None:
        binds.append((bundle, BUNDLE_MOUNT))
    with tempfile.TemporaryDirectory(prefix="arm64-run.", dir=cache_dir()) as tmp:
        scratch = Path(tmp)
        for sub in ("upper", "work", "merged"):
            (scratch / sub).mkdir()
        copy_checkout(scratch / "upper")
        yield Arm64Run(lower, scratch, binds)


def pick_clips(shared: Path, n: int) -> list[str]:
    """n clips across the labels (round-robin over the manifest, sorted): paths relative to data/clips.

    Only clips classify accepts (at least MIN_DURATION_S long); too few of them is an error, not a shorter list."""
    from custom.daemon.classify import MIN_DURATION_S

    with (shared / "data/clips/manifest.csv").open() as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["path"])
    by_label: dict[str, list[str]] = {}
    for row in rows:
        if float(row["duration_s"]) >= MIN_DURATION_S:
            by_label.setdefault(row["label"], []).append(row["path"])
    if sum(map(len, by_label.values())) < n:
        raise ValueError(f"{shared}/data/clips holds fewer than {n} clips of at least {MIN_DURATION_S} s")
    picked: list[str] = []
    while len(picked) < n:
        for paths in by_label.values():
            if paths and len(picked) < n:
                picked.append(paths.pop(0))
    return picked


def scores_by_window(stdout: str, prefix: str) -> dict[tuple[str, float], dict[str, Any]]:
    """classify --json lines keyed by (clip path relative to data/clips, window offset)."""
    events = {}
    for line in stdout.splitlines():
        event = json.loads(line)
        events[(event["file"].removeprefix(prefix), event["window"]["offset_s"])] = event
    return events


def main() -> int:
    """`python -m testing.arm64`: build the cached root if missing, print where it is and how long it took."""
    import time

    start = time.monotonic()
    try:
        root = cached_root()
    except Arm64Unavailable as exc:
        print(f"arm64 root: cannot build here: {exc}", file=sys.stderr)
        return 77
    print(f"arm64 root: {root} (ready in {time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
