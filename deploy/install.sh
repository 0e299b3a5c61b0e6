#!/usr/bin/env bash
# Install (or remove) custom-sensor on Raspberry Pi OS / Debian bookworm: aarch64, amd64; armhf only where a TFLite
# runtime wheel exists (see deploy/OPERATING.md).
#
# Idempotent: run it again to upgrade the code or the bundle. An edited /etc/custom-sensor/config.yaml is never
# overwritten; the new default lands beside it as config.yaml.dist.
#
# --root DIR installs into a tree instead of the running system (image building, tests): no apt, no systemctl
# against the host, no host users. The user and directories are described the systemd-native way (sysusers.d,
# tmpfiles.d snippets), applied to DIR with `systemd-sysusers --root` and `systemctl --root` where those exist.
set -euo pipefail

readonly NAME=custom-sensor
readonly PREFIX=/opt/custom-sensor
readonly VENV=$PREFIX/venv
readonly ETC_DIR=/etc/custom-sensor
readonly STATE_DIR=/var/lib/custom-sensor
readonly UNIT_PATH=/etc/systemd/system/$NAME.service
readonly SYSUSERS_PATH=/usr/lib/sysusers.d/$NAME.conf
readonly TMPFILES_PATH=/usr/lib/tmpfiles.d/$NAME.conf
readonly EX_USAGE=64 EX_UNAVAILABLE=69 EX_CONFIG=78

# Runtime libraries for sounddevice/soundfile, the build chain for systemd-python, and tools the troubleshooting
# guide uses (arecord, mosquitto_sub).
readonly APT_PACKAGES=(python3 python3-venv python3-dev gcc pkg-config libsystemd-dev libportaudio2 libsndfile1
    alsa-utils ca-certificates mosquitto-clients)

ROOT=""
BUNDLE=""
CONFIG=""
MQTT_PASSWORD=""
FROM="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
START=1
WITH_VENV=""
UNINSTALL=0
PURGE=0
BUILD_DEFAULT_BUNDLE=0
ARCH=""

usage() {
    cat <<EOF
usage: $0 [options]
  --root DIR       install into DIR instead of / (no apt, no systemctl on the host, no host users)
  --bundle PATH    model bundle folder to install as $STATE_DIR/bundle
  --default-bundle assemble the default bundle (the committed models/default head + manifest and the backbone(s)
                   in \$CUSTOM_SHARED/models, default ../shared, each checked by sha256; no TensorFlow) and install it
  --config PATH    config file to install (default: the project's config.yaml)
  --mqtt-password FILE  the broker password (make-sensor-credentials.sh's SENSOR_ID.password) to install as
                   $ETC_DIR/mqtt-password, root:$NAME mode 0640 (other local users cannot read it)
  --from PATH      package source (default: $FROM)
  --no-start       install and enable, but do not (re)start the service
  --with-venv      with --root: also build the venv inside DIR (slow; always done without --root)
  --arch ARCH      override the detected Debian architecture (amd64, arm64, armhf)
  --uninstall      remove the service, venv and unit; keep config and spool
  --purge          with --uninstall: also remove $ETC_DIR, $STATE_DIR and the $NAME user
EOF
}

say() { printf '%s: %s\n' "$NAME" "$*"; }
die() {
    local code=$1
    shift
    printf '%s: error: %s\n' "$NAME" "$*" >&2
    exit "$code"
}
# Path inside the target tree.
r() { printf '%s%s' "$ROOT" "$1"; }
live() { [[ -z $ROOT ]]; }

parse_args() {
    while (($#)); do
        case $1 in
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --root=*) ROOT=${1#*=} ;;
        --bundle) BUNDLE=${2:?--bundle needs a path}; shift ;;
        --bundle=*) BUNDLE=${1#*=} ;;
        --config) CONFIG=${2:?--config needs a path}; shift ;;
        --config=*) CONFIG=${1#*=} ;;
        --mqtt-password) MQTT_PASSWORD=${2:?--mqtt-password needs a file}; shift ;;
        --mqtt-password=*) MQTT_PASSWORD=${1#*=} ;;
        --from) FROM=${2:?--from needs a path}; shift ;;
        --from=*) FROM=${1#*=} ;;
        --arch) ARCH=${2:?--arch needs a value}; shift ;;
        --arch=*) ARCH=${1#*=} ;;
        --no-start) START=0 ;;
        --default-bundle) BUILD_DEFAULT_BUNDLE=1 ;;
        --with-venv) WITH_VENV=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die $EX_USAGE "unknown option: $1" ;;
        esac
        shift
    done
    if [[ -n $ROOT ]]; then
        mkdir -p "$ROOT"
        ROOT="$(cd "$ROOT" && pwd)"
        [[ $ROOT == / ]] && ROOT=""
    fi
    if live; then
        WITH_VENV=1
        [[ $EUID -eq 0 ]] || die $EX_USAGE "run as root (sudo $0 ...), or use --root DIR"
    fi
    ((PURGE == 0 || UNINSTALL == 1)) || die $EX_USAGE "--purge only goes with --uninstall"
    [[ -f $FROM/setup.cfg && -f $FROM/deploy/$NAME.service ]] || die $EX_USAGE "$FROM is not a custom-sensor source tree"
}

detect_arch() {
    if [[ -z $ARCH ]]; then
        if command -v dpkg >/dev/null; then ARCH=$(dpkg --print-architecture); else ARCH=$(uname -m); fi
    fi
    case $ARCH in
    amd64 | x86_64) ARCH=amd64 ;;
    arm64 | aarch64) ARCH=arm64 ;;
    armhf | armv7l | armv6l) ARCH=armhf ;;
    *) die $EX_UNAVAILABLE "unsupported architecture $ARCH: use Raspberry Pi OS 64-bit (arm64) or Debian amd64" ;;
    esac
}

# --------------------------------------------------------------------------------------------------- system parts

install_apt_packages() {
    local missing=() pkg
    if ! live; then
        say "would install apt packages: ${APT_PACKAGES[*]}"
        return
    fi
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing apt packages: ${missing[*]}"
        # Wait for the dpkg/apt locks (unattended-upgrades often holds them on a Pi's first boot) instead of failing.
        apt-get -o DPkg::Lock::Timeout=600 update -q
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
    fi
}

write_system_snippets() {
    install -d -m 0755 "$(r /usr/lib/sysusers.d)" "$(r /usr/lib/tmpfiles.d)"
    # The service user owns the spool; membership in audio lets `sudo -u custom-sensor arecord` reproduce what the
    # service sees (the unit adds audio as a supplementary group as well).
    cat >"$(r "$SYSUSERS_PATH")" <<EOF
# custom-sensor service user (written by deploy/install.sh)
u $NAME - "custom-sensor daemon" $STATE_DIR /usr/sbin/nologin
m $NAME audio
EOF
    # The config holds the broker user name and the path to its password: readable by the service group only.
    cat >"$(r "$TMPFILES_PATH")" <<EOF
# custom-sensor directories (written by deploy/install.sh)
d $ETC_DIR 0750 root $NAME -
z $ETC_DIR/config.yaml 0640 root $NAME -
z $ETC_DIR/mqtt-password 0640 root $NAME -
z $ETC_DIR/*.key 0640 root $NAME -
d $STATE_DIR 0750 $NAME $NAME -
Z $STATE_DIR/bundle - $NAME $NAME -
EOF
    chmod 0644 "$(r "$SYSUSERS_PATH")" "$(r "$TMPFILES_PATH")"
}

create_user() {
    if live; then
        if command -v systemd-sysusers >/dev/null; then
            systemd-sysusers "$SYSUSERS_PATH"
        elif ! getent passwd "$NAME" >/dev/null; then
            useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
                --user-group --groups audio "$NAME"
        fi
    elif command -v systemd-sysusers >/dev/null; then
        # Writes DIR/etc/passwd and group, never the host's.
        mkdir -p "$(r /etc)"
        systemd-sysusers --root="$ROOT" "$(r "$SYSUSERS_PATH")" >/dev/null
    else
        say "systemd-sysusers not found: the user is described in $SYSUSERS_PATH only"
    fi
}

make_dirs() {
    install -d -m 0750 "$(r "$ETC_DIR")" "$(r "$STATE_DIR")"
}

# Ownership and modes come from the tmpfiles.d snippet, in both modes: with --root, systemd-tmpfiles resolves the
# user from DIR/etc/passwd, so the tree gets the ids the image will have.
apply_tmpfiles() {
    if command -v systemd-tmpfiles >/dev/null; then
        if live; then
            systemd-tmpfiles --create "$TMPFILES_PATH"
        elif [[ -f $(r /etc/passwd) ]] && grep -q "^$NAME:" "$(r /etc/passwd)"; then
            systemd-tmpfiles --root="$ROOT" --create "$(r "$TMPFILES_PATH")"
        fi
    elif live; then
        chown root:"$NAME" "$ETC_DIR" "$ETC_DIR/config.yaml"
        chmod 0750 "$ETC_DIR"
        chown -R "$NAME:$NAME" "$STATE_DIR"
    fi
}

# ----------------------------------------------------------------------------------------------------- python

install_venv() {
    if [[ -z $WITH_VENV ]]; then
        say "skipping the venv (use --with-venv to build it inside $ROOT)"
        return
    fi
    local venv python
    venv=$(r "$VENV")
    python=$venv/bin/python
    [[ -x $python ]] || python3 -m venv "$venv"
    "$python" -m pip install --quiet --upgrade pip
    "$python" -m pip install --quiet "${FROM}[sensor,systemd,fastfft]"
    if [[ $ARCH == armhf ]]; then
        # ai-edge-litert has no armv7 wheels; tflite-runtime does only where a wheel was built for this Python
        # (PyPI: cp39 and older; Raspberry Pi OS also asks piwheels). It needs numpy<2.
        if ! "$python" -m pip install --quiet --only-binary=:all: tflite-runtime "numpy<2"; then
            die $EX_UNAVAILABLE "no TFLite runtime wheel for armhf with $("$python" -V): this platform is" \
                "unsupported; install Raspberry Pi OS 64-bit (arm64) instead"
        fi
    fi
    "$python" -c "from custom.daemon.model.runtime import runtime_name; print('TFLite runtime:', runtime_name())" ||
        die $EX_UNAVAILABLE "the venv has no working TFLite runtime (see deploy/OPERATING.md)"
}

# ---------------------------------------------------------------------------------------------- config, bundle

default_config() {
    local candidate
    for candidate in "$FROM/config.yaml" "$FROM/deploy/config.yaml"; do
        [[ -f $candidate ]] && { printf '%s' "$candidate"; return; }
    done
    return 1
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Like a Debian conffile: replace the config only while it is still the default we installed last time.
install_config() {
    local src dest stamp
    if [[ -n $CONFIG ]]; then
        src=$CONFIG
    else
        src=$(default_config) || die $EX_CONFIG "no default config.yaml in $FROM: pass --config PATH"
    fi
    [[ -f $src ]] || die $EX_CONFIG "config not found: $src"
    dest=$(r "$ETC_DIR/config.yaml")
    # Beside the config, so it survives --uninstall (which keeps the config) and goes with --purge.
    stamp=$(r "$ETC_DIR/.config.yaml.installed.sha256")
    if [[ ! -e $dest ]] || { [[ -f $stamp ]] && [[ $(sha256_of "$dest") == "$(cat "$stamp")" ]]; }; then
        install -m 0640 "$src" "$dest"
        sha256_of "$dest" >"$stamp"
        rm -f "$dest.dist"
        say "config: $ETC_DIR/config.yaml"
    elif cmp -s "$src" "$dest"; then
        sha256_of "$dest" >"$stamp"
    else
        install -m 0640 "$src" "$dest.dist"
        say "config: kept your edited $ETC_DIR/config.yaml; the new default is $ETC_DIR/config.yaml.dist"
    fi
}

# The broker password: written 0640 from the start (never briefly world-readable); owner and group from tmpfiles.
install_password() {
    [[ -n $MQTT_PASSWORD ]] || return 0
    [[ -f $MQTT_PASSWORD ]] || die $EX_CONFIG "mqtt password file not found: $MQTT_PASSWORD"
    (umask 077 && install -m 0640 "$MQTT_PASSWORD" "$(r "$ETC_DIR/mqtt-password")")
    say "mqtt password: $ETC_DIR/mqtt-password"
}

# Refuse a corrupt or foreign bundle here, not at the first start: the same checks the daemon makes on the
# manifest format and every file's sha256.
check_bundle() {
    python3 - "$1" <<'EOF'
import hashlib, json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
try:
    manifest = json.loads((folder / "manifest.json").read_text())
except (OSError, ValueError) as exc:
    sys.exit(f"{folder}: no readable manifest.json ({exc})")
if manifest.get("format") != "custom-sensor-bundle":
    sys.exit(f"{folder}: manifest.json is not a custom-sensor bundle")
for name, entry in manifest.get("files", {}).items():
    path = folder / name
    if not path.is_file():
        sys.exit(f"{folder}: {name} is missing")
    if hashlib.sha256(path.read_bytes()).hexdigest() != entry.get("sha256"):
        sys.exit(f"{folder}: {name} does not match its sha256 in manifest.json")
EOF
}

# --default-bundle: the committed head + manifest (models/default, made by custom-convert default-bundle --commit-dir)
# plus the published backbone(s), assembled with the sensor's own package: no TensorFlow, no training. A backbone
# whose sha256 is not the manifest's stops the install with the assembler's one line and its exit status (78).
build_default_bundle() {
    local sensord out
    for sensord in "$(r "$VENV")/bin/custom-sensord" "$FROM/.venv/bin/custom-sensord" \
        "$(command -v custom-sensord || true)" ""; do
        [[ -x $sensord ]] && "$sensord" bundle assemble --help >/dev/null 2>&1 && break
    done
    [[ -n $sensord ]] || die $EX_CONFIG "--default-bundle needs the sensor's package (use --with-venv, or a .venv in $FROM)"
    out=$(mktemp -d)/bundle
    "$sensord" bundle assemble --prebuilt "$FROM/models/default" \
        --shared "${CUSTOM_SHARED:-$FROM/../shared}" --out "$out" || exit
    BUNDLE=$out
}

install_bundle() {
    local dest staging
    dest=$(r "$STATE_DIR/bundle")
    ((BUILD_DEFAULT_BUNDLE)) && build_default_bundle
    if [[ -z $BUNDLE ]]; then
        [[ -f $dest/manifest.json ]] || say "no model bundle installed: pass --bundle PATH (the service exits 78 without one)"
        return
    fi
    [[ -d $BUNDLE ]] || die $EX_CONFIG "bundle folder not found: $BUNDLE"
    check_bundle "$BUNDLE" || die $EX_CONFIG "refusing bad bundle $BUNDLE"
    # Copy beside the old bundle, then swap: a running daemon never sees a half-copied folder.
    staging=$(mktemp -d "$(r "$STATE_DIR")/.bundle.XXXXXX")
    cp -R "$BUNDLE"/. "$staging"/
    chmod -R u=rwX,g=rX,o= "$staging"
    rm -rf "$dest.old"
    [[ -e $dest ]] && mv "$dest" "$dest.old"
    mv "$staging" "$dest"
    rm -rf "$dest.old"
    say "bundle: $STATE_DIR/bundle"
}

# ------------------------------------------------------------------------------------------------ unit, service

install_files() {
    install -d -m 0755 "$(r /etc/systemd/system)" "$(r "$PREFIX/share/mosquitto")"
    install -m 0644 "$FROM/deploy/$NAME.service" "$(r "$UNIT_PATH")"
    install -m 0644 "$FROM/deploy/OPERATING.md" "$(r "$PREFIX/share/OPERATING.md")"
    install -m 0644 "$FROM/deploy/mosquitto/mosquitto.conf" "$FROM/deploy/mosquitto/acl" "$(r "$PREFIX/share/mosquitto")"
    install -m 0755 "$FROM/deploy/mosquitto/make-sensor-credentials.sh" "$(r "$PREFIX/share/mosquitto")"
}

enable_service() {
    if ! live; then
        if command -v systemctl >/dev/null; then
            systemctl --root="$ROOT" enable "$NAME.service" 2>/dev/null
        else
            install -d "$(r /etc/systemd/system/multi-user.target.wants)"
            ln -sfn "$UNIT_PATH" "$(r "/etc/systemd/system/multi-user.target.wants/$NAME.service")"
        fi
        return
    fi
    systemctl daemon-reload
    systemctl enable "$NAME.service"
    if ((START == 0)); then
        say "enabled; not started (--no-start)"
    elif [[ ! -f $STATE_DIR/bundle/manifest.json ]]; then
        say "enabled; not started: no model bundle yet"
    else
        # restart, not start: a re-install must run the new code.
        systemctl restart "$NAME.service"
        say "started: systemctl status $NAME; journalctl -u $NAME -f"
    fi
}

# -------------------------------------------------------------------------------------------------- uninstall

uninstall() {
    if live; then
        systemctl disable --now "$NAME.service" 2>/dev/null || true
    elif command -v systemctl >/dev/null && [[ -f $(r "$UNIT_PATH") ]]; then
        systemctl --root="$ROOT" disable "$NAME.service" 2>/dev/null || true
    fi
    rm -f "$(r "/etc/systemd/system/multi-user.target.wants/$NAME.service")"
    rm -f "$(r "$UNIT_PATH")" "$(r "$TMPFILES_PATH")"
    rm -rf "$(r "$PREFIX")"
    live && systemctl daemon-reload
    if ((PURGE)); then
        rm -rf "$(r "$ETC_DIR")" "$(r "$STATE_DIR")" "$(r "$SYSUSERS_PATH")"
        remove_user
        say "removed, with config, spool and user"
    else
        say "removed; kept $ETC_DIR, $STATE_DIR and the $NAME user (--purge removes them)"
    fi
}

remove_user() {
    local f
    if live; then
        getent passwd "$NAME" >/dev/null && userdel "$NAME"
        getent group "$NAME" >/dev/null && groupdel "$NAME"
        return 0
    fi
    for f in passwd shadow; do
        [[ -f $(r /etc/$f) ]] && sed -i "/^$NAME:/d" "$(r /etc/$f)"
    done
    for f in group gshadow; do
        [[ -f $(r /etc/$f) ]] || continue
        # Drop the group's own line and the user from other groups' member lists (the last field).
        awk -v name="$NAME" 'BEGIN { FS = OFS = ":" }
            $1 == name { next }
            { n = split($NF, m, ","); out = ""
              for (i = 1; i <= n; i++) if (m[i] != name) out = out (out == "" ? "" : ",") m[i]
              $NF = out; print }' "$(r /etc/$f)" >"$(r /etc/$f).new"
        chmod --reference="$(r /etc/$f)" "$(r /etc/$f).new"
        mv "$(r /etc/$f).new" "$(r /etc/$f)"
    done
    return 0
}

main() {
    parse_args "$@"
    if ((UNINSTALL)); then
        uninstall
        return
    fi
    detect_arch
    install_apt_packages
    write_system_snippets
    create_user
    make_dirs
    install_venv
    install_files
    install_config
    install_password
    install_bundle
    apply_tmpfiles
    enable_service
    say "installed into ${ROOT:-/} ($ARCH)"
}

main "$@"
