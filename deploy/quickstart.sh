#!/usr/bin/env bash
# From a fresh Debian machine to a running sensor that publishes to a local MQTT broker, in one command:
#   bash deploy/quickstart.sh                # runs until Ctrl-C, printing every event it publishes
#   bash deploy/quickstart.sh --for 60       # stop by itself after 60 s
#   bash deploy/quickstart.sh --input my.wav # replay a recording instead of the microphone
# It installs the system packages (only if one is missing), a venv in .venv with the sensor alone (no TensorFlow;
# scipy for the fast FFT, as deploy/install.sh),
# assembles the default model bundle into .quickstart/bundle from the committed head in models/default plus the
# published backbone(s) in ../shared/models, each checked by sha256 (custom-sensord bundle assemble; a
# mismatch stops it with exit 78), starts a loopback broker if none listens on 127.0.0.1:1883, and runs
# `custom-sensord run`. Without a microphone it replays a siren recording in a loop.
# For a real deployment under systemd use deploy/install.sh (see deploy/OPERATING.md).
set -euo pipefail
# Needs root (apt-get, a system broker). As root (a fresh Debian has no sudo) it runs as is; as a user it runs itself
# again through sudo, keeping the settings it reads from the environment.
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "quickstart: needs root, and sudo is not installed: run it as root" >&2; exit 77; }
  exec sudo --preserve-env=CUSTOM_SHARED bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SHARED=${CUSTOM_SHARED:-$ROOT/../shared}
WORK=$ROOT/.quickstart
VENV=$ROOT/.venv
INPUT=""
DURATION=""

while (($#)); do
    case $1 in
    --input) INPUT=${2:?--input needs an audio file}; shift ;;
    --for) DURATION=${2:?--for needs seconds}; shift ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "quickstart: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ -d $SHARED/models ]] || { echo "quickstart: $SHARED/models not found: set CUSTOM_SHARED to the folder holding models/" >&2; exit 66; }

echo "== system packages"
export DEBIAN_FRONTEND=noninteractive
PACKAGES=(python3-venv libportaudio2 libsndfile1 mosquitto mosquitto-clients)
# Only when one is missing: apt-get update alone takes tens of seconds. Wait for the dpkg/apt locks
# (unattended-upgrades often holds them on a Pi's first boot) instead of failing at once.
missing=$(dpkg-query -W -f='${db:Status-Status} ${Package}\n' "${PACKAGES[@]}" 2>&1 | grep -v '^installed ' || true)
if [[ -z $missing ]]; then
    echo "(all installed)"
else
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

echo "== python environment ($VENV)"
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# fastfft (scipy's float32 FFT): the front end and level meter as deploy/install.sh sets a sensor up, 3x faster
"$VENV/bin/pip" install -q -e ".[sensor,fastfft]"
mkdir -p "$WORK"

echo "== default model bundle ($WORK/bundle, from models/default + $SHARED/models)"
# The committed head and manifest plus the published backbone(s), each checked against the sha256 in the manifest;
# no TensorFlow, no training (custom-convert default-bundle --commit-dir models/default made models/default).
if ! cmp -s "$ROOT/models/default/manifest.json" "$WORK/bundle/manifest.json" ||
    ! "$VENV/bin/python" -c "from custom.daemon.model.bundle import load_bundle; load_bundle('$WORK/bundle')" 2>/dev/null; then
    "$VENV/bin/custom-sensord" bundle assemble --prebuilt "$ROOT/models/default" --shared "$SHARED" --out "$WORK/bundle"
fi

echo "== local broker (127.0.0.1:1883)"
BROKER_PID=""
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' >"$WORK/mosquitto.conf"
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
fi

cat >"$WORK/config.yaml" <<CONF
# quickstart config: see config.yaml in the repo for every key
sensor_id: quickstart
model:
  bundle: $WORK/bundle
mqtt:
  host: 127.0.0.1
  port: 1883
spool:
  path: $WORK/spool.sqlite
health_interval_s: 30
CONF
"$VENV/bin/custom-sensord" check-config --config "$WORK/config.yaml"

run_args=(run --config "$WORK/config.yaml")
if [[ -n $INPUT ]]; then
    run_args+=(--input "$INPUT" --loop)
elif ! "$VENV/bin/custom-sensord" devices >/dev/null 2>&1; then
    echo "== no microphone found: replaying a siren recording instead (use --input FILE for your own)"
    run_args+=(--input "$SHARED/data/clips/siren/us8k_102871-8-0-8.flac" --loop)
fi

echo "== events on custom/quickstart/events (one every 10 s; Ctrl-C stops)"
mosquitto_sub -h 127.0.0.1 -p 1883 -t 'custom/quickstart/#' -v &
SUB_PID=$!
cleanup() {
    kill "$SUB_PID" 2>/dev/null || true
    if [[ -n $BROKER_PID ]]; then kill "$BROKER_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
if [[ -n $DURATION ]]; then
    "$VENV/bin/custom-sensord" "${run_args[@]}" &
    DAEMON_PID=$!
    sleep "$DURATION"
    kill -TERM "$DAEMON_PID"
    wait "$DAEMON_PID"
else
    "$VENV/bin/custom-sensord" "${run_args[@]}"
fi
