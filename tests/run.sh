#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian 12 machine and run them, as root (CI does) or via sudo:
#   bash tests/run.sh            # the default suite (what CI runs)
#   bash tests/run.sh -m slow    # the long checks kept out of CI (full-size VGGish conversion, ...)
#   bash tests/run.sh -m "not slow and not systemd"   # without the systemd tier (booted Debian 12 container)
#   bash tests/run.sh -m fleet   # deploy/ansible over SSH against three Debian 12 containers (about 9 min)
#   bash tests/run.sh -m arm64   # the Pi userland tier, kept out of CI: an arm64 Debian 12 chroot under qemu-user
#                                # (first build ~10 min, emulated; both runtimes), classify vs x86 on 20 clips
# Extra arguments go to pytest. Real parts only: mosquitto and a PulseAudio virtual microphone are started by the
# test fixtures themselves (each test gets its own broker port and audio server); ../shared must sit beside the
# repo (or set CUSTOM_SHARED).
set -euo pipefail
# Needs root (apt-get, a system broker). As root (a fresh Debian has no sudo) it runs as is; as a user it runs itself
# again through sudo, keeping the settings it reads from the environment.
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "tests/run.sh: needs root, and sudo is not installed: run it as root" >&2; exit 77; }
  exec sudo --preserve-env=CUSTOM_SHARED,CUSTOM_VENV,CUSTOM_TFLITE214_VENV,CUSTOM_NSPAWN_CACHE,CUSTOM_ARM64_CACHE \
    bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CUSTOM_SHARED=${CUSTOM_SHARED:-$ROOT/../shared}
VENV=${CUSTOM_VENV:-$ROOT/.venv}
TFLITE214_VENV=${CUSTOM_TFLITE214_VENV:-$ROOT/.venv-tflite214}

if [ ! -d "$CUSTOM_SHARED/models" ]; then
  echo "tests/run.sh: $CUSTOM_SHARED has no models/: put ../shared beside the repo or set CUSTOM_SHARED" >&2
  exit 2
fi

echo "== system packages"
export DEBIAN_FRONTEND=noninteractive
# Wait for the dpkg/apt locks (unattended-upgrades often holds them on a Pi's first boot) instead of failing at once.
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
  python3-venv python3-dev gcc pkg-config libsystemd-dev systemd \
  mosquitto mosquitto-clients \
  pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins libsndfile1 \
  openssl sox shellcheck openssh-client \
  systemd-container debootstrap qemu-user-static binfmt-support \
  postgresql postgresql-15-postgis-3 \
  chromium nginx >/dev/null  # ingest: a throwaway PostgreSQL per session (testing/postgres.py); the dashboard in
# Chromium; nginx: the dashboard's reverse-proxy recipe (ingest/README.md), run by tests/test_dashboard_door.py
# systemd-container + debootstrap: the systemd tier (tests/test_systemd.py) boots a Debian 12 root with systemd-nspawn

echo "== python environment ($VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e ".[convert,systemd,test,bench,ingest,ansible]"

echo "== tflite-runtime 2.14 environment ($TFLITE214_VENV; needs numpy<2)"
[ -x "$TFLITE214_VENV/bin/python" ] || python3 -m venv "$TFLITE214_VENV"
"$TFLITE214_VENV/bin/pip" install -q "numpy<2" "tflite-runtime==2.14.0"
export CUSTOM_TFLITE214_PYTHON="$TFLITE214_VENV/bin/python"

if [[ " $* " == *arm64* ]]; then
  echo "== arm64 Debian 12 root (testing/arm64.py; cached under ${CUSTOM_ARM64_CACHE:-/var/cache/custom-sensor})"
  # Built once (debootstrap + second stage + the daemon's dependencies, emulated: about 10 min), then reused by
  # tests/test_arm64.py through an overlay per run; building it here keeps that time out of a test's.
  "$VENV/bin/python" -m testing.arm64 ||
    echo "tests/run.sh: arm64 root not built (above); tests/test_arm64.py will say why" >&2
fi

echo "== lint"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

echo "== types (mypy --strict on custom.wire, custom.daemon and custom.ingest)"
# setup.cfg maps custom.daemon -> daemon/, custom.ingest -> ingest/ and custom.wire -> wire/; mypy cannot read that
# from the editable install's import hook, so it checks them through a throwaway custom/ folder of links.
types_root=$(mktemp -d)
mkdir "$types_root/custom"
ln -s "$PWD/daemon" "$types_root/custom/daemon"
ln -s "$PWD/ingest" "$types_root/custom/ingest"
ln -s "$PWD/wire" "$types_root/custom/wire"
MYPYPATH="$types_root" "$VENV/bin/mypy" --config-file pyproject.toml --cache-dir "$types_root/.mypy_cache" \
  -p custom.wire -p custom.daemon -p custom.ingest
rm -rf "$types_root"

echo "== tests"
set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "tests/run.sh: pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
