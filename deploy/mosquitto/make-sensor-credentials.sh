#!/usr/bin/env bash
# Make the broker credentials for one sensor (or reader): a random password added to the broker's password file,
# the password written to a file to copy to the sensor, and the config.yaml snippet that uses it. Optionally a
# client certificate signed by your CA, for brokers with require_certificate true.
#
# The user name is the sensor_id: the ACL (deploy/mosquitto/acl) lets user X write only custom/X/#.
set -euo pipefail

usage() {
    cat <<EOF
usage: $0 SENSOR_ID [options]
  --passwd FILE     broker password file to add the user to (default: /etc/mosquitto/custom-sensor/passwd)
  --out DIR         where to write SENSOR_ID.password (and .crt/.key) (default: current directory)
  --host NAME       broker host name for the printed snippet (default: broker.example)
  --port N          broker TLS port for the printed snippet (default: 8883)
  --ca-cert FILE    CA certificate the sensor should trust (named in the snippet)
  --ca-key FILE     with --ca-cert: also make a client certificate (CN=SENSOR_ID) signed by this CA key
  --days N          client certificate lifetime (default: 825)
EOF
}

die() {
    printf 'make-sensor-credentials: error: %s\n' "$*" >&2
    exit 64
}

(($#)) || { usage >&2; exit 64; }
case $1 in -h | --help) usage; exit 0 ;; esac
SENSOR_ID=$1
shift
PASSWD=/etc/mosquitto/custom-sensor/passwd
OUT=.
HOST=broker.example
PORT=8883
CA_CERT=""
CA_KEY=""
DAYS=825
while (($#)); do
    case $1 in
    --passwd) PASSWD=${2:?}; shift ;;
    --out) OUT=${2:?}; shift ;;
    --host) HOST=${2:?}; shift ;;
    --port) PORT=${2:?}; shift ;;
    --ca-cert) CA_CERT=${2:?}; shift ;;
    --ca-key) CA_KEY=${2:?}; shift ;;
    --days) DAYS=${2:?}; shift ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

# The same rule as the daemon's sensor_id; it also keeps the name a single topic level for the ACL's %u.
[[ $SENSOR_ID =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die "sensor id must be 1-64 of letters, digits, '_', '-', '.'"
# A leading '_' is the fleet's (custom/_ingest/, custom/_alerts/): a sensor named so could write there.
[[ $SENSOR_ID != _* ]] || die "sensor id must not start with '_' (reserved for the fleet's own topics)"
[[ -z $CA_KEY || -n $CA_CERT ]] || die "--ca-key needs --ca-cert"
command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd not found (apt install mosquitto)"

mkdir -p "$OUT" "$(dirname "$PASSWD")"
umask 077
password_file=$OUT/$SENSOR_ID.password
# 24 random bytes, URL-safe: no quoting trouble in YAML or shell.
password=$(openssl rand -base64 24 | tr '+/' '-_' | tr -d '=\n')
printf '%s\n' "$password" >"$password_file"

if [[ -f $PASSWD ]]; then
    mosquitto_passwd -b "$PASSWD" "$SENSOR_ID" "$password"
else
    mosquitto_passwd -c -b "$PASSWD" "$SENSOR_ID" "$password"
fi

if [[ -n $CA_KEY ]]; then
    openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$SENSOR_ID" \
        -keyout "$OUT/$SENSOR_ID.key" -out "$OUT/$SENSOR_ID.csr" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >"$OUT/$SENSOR_ID.ext"
    openssl x509 -req -in "$OUT/$SENSOR_ID.csr" -CA "$CA_CERT" -CAkey "$CA_KEY" -CAcreateserial \
        -days "$DAYS" -extfile "$OUT/$SENSOR_ID.ext" -out "$OUT/$SENSOR_ID.crt" 2>/dev/null
    rm -f "$OUT/$SENSOR_ID.csr" "$OUT/$SENSOR_ID.ext"
fi

cat >&2 <<EOF
Added '$SENSOR_ID' to $PASSWD; reload the broker (systemctl reload mosquitto).
Copy to the sensor: $password_file -> /etc/custom-sensor/mqtt-password (root:custom-sensor, mode 0640)${CA_CERT:+,
  $CA_CERT -> /etc/custom-sensor/ca.crt}${CA_KEY:+, $OUT/$SENSOR_ID.crt and .key -> /etc/custom-sensor/}
Then put this in /etc/custom-sensor/config.yaml (sensor_id must be '$SENSOR_ID'):
EOF
ca_line=null cert_line=null key_line=null
[[ -n $CA_CERT ]] && ca_line=/etc/custom-sensor/ca.crt
[[ -n $CA_KEY ]] && cert_line=/etc/custom-sensor/$SENSOR_ID.crt key_line=/etc/custom-sensor/$SENSOR_ID.key
cat <<EOF
sensor_id: $SENSOR_ID
mqtt:
  host: $HOST
  port: $PORT
  username: $SENSOR_ID
  password_file: /etc/custom-sensor/mqtt-password
  tls:
    enabled: true
    ca: $ca_line
    cert: $cert_line
    key: $key_line
EOF
