"""`custom-ingest`: store a sensor fleet's MQTT events in PostgreSQL/PostGIS, exactly once.

Five commands: `migrate` (create or upgrade the schema), `run` (the long-running ingest), `retention` (drop
event partitions older than N days), `serve` (the read-only web dashboard, behind a login) and `user` (who may log
in). Bad settings exit 78 with one line naming the key; an unreachable database at `migrate`/`retention`/`serve`
exits 69.
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
from pathlib import Path

import psycopg

from custom.wire import exitcodes
from custom.wire.settings import ConfigError

from .config import IngestConfig, load_config
from .migrate import MissingRight, migrate, pending
from .records import Judge
from .store import connect, drop_old_partitions

DESCRIPTION = """\
Store every sensor's events in PostgreSQL, exactly once, at fleet scale.

The ingest subscribes to $share/<group>/<prefix>/+/events (and .../summary) with MQTT 5, QoS 1 and a persistent
session, writes messages in batched transactions and acknowledges each message to the broker only after its row is
committed: kill it at any moment and restart it with the same --client-id, and nothing is lost or duplicated.
Run several ingests with the same --group and different --client-id to split the load (MQTT 5 shared subscription).

  custom-ingest migrate --dsn "host=127.0.0.1 dbname=custom user=custom"
  custom-ingest run --dsn "host=127.0.0.1 dbname=custom user=custom" --mqtt-host 127.0.0.1 --client-id ingest-a
  custom-ingest user add alice                 # who may log in to the dashboard (asks for a password)
  custom-ingest serve --dsn "host=127.0.0.1 dbname=custom user=dashboard" --port 8080

Exceedance alert rules (alerts: in the config file) are evaluated by `run` and shown by `serve`.
Settings may also come from a YAML file (--config; top-level keys or an `ingest:` section); see ingest/README.md.
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML settings file (command-line options override it)")
    common.add_argument(
        "--dsn", help="PostgreSQL connection string or URI (database.dsn; with serve also dashboard.dsn)"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log every batch")
    parser = argparse.ArgumentParser(
        prog="custom-ingest", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{migrate,run,retention,serve,user}")
    sub.add_parser("migrate", parents=[common], help="apply the SQL migrations not yet applied, in order")
    run = sub.add_parser("run", parents=[common], help="consume the fleet's events until SIGTERM")
    run.add_argument("--mqtt-host", help="broker host (mqtt.host)")
    run.add_argument("--mqtt-port", type=int, help="broker port (mqtt.port)")
    run.add_argument("--topic-prefix", help="topic prefix the sensors publish under (mqtt.topic_prefix)")
    run.add_argument("--group", help="shared-subscription group; ingests in one group split the load (mqtt.group)")
    run.add_argument("--client-id", help="this ingest's MQTT client id: unique, and the same after a restart")
    run.add_argument("--batch-rows", type=int, help="most messages per transaction (batch_rows)")
    run.add_argument("--batch-wait", type=float, help="longest wait in s for a batch to fill (batch_wait_s)")
    ret = sub.add_parser("retention", parents=[common], help="drop event partitions older than --days days")
    ret.add_argument("--days", type=int, help="days of events to keep (retention_days)")
    web = sub.add_parser("serve", parents=[common], help="the web dashboard (read-only; map, charts, alerts)")
    web.add_argument("--host", help="address to listen on (dashboard.host; default 127.0.0.1)")
    web.add_argument("--port", type=int, help="TCP port (dashboard.port; default 8080)")
    web.add_argument("--tile-url", help="basemap tile URL template, {z}/{x}/{y} (dashboard.tile_url; default none)")
    web.add_argument("--basemap", help="raster MBTiles file to serve the basemap from (dashboard.basemap_mbtiles)")
    web.add_argument("--outline", help="GeoJSON file of districts or streets to draw (dashboard.outline_geojson)")
    web.add_argument("--users-file", help="who may log in (dashboard.users_file; `custom-ingest user add`)")
    web.add_argument("--cert", help="serve HTTPS with this PEM certificate (dashboard.tls_cert; needs --key)")
    web.add_argument("--key", help="its PEM private key (dashboard.tls_key)")
    user = sub.add_parser("user", help="who may log in to the dashboard: add, remove, list (dashboard.users_file)")
    user.add_argument("--config", type=Path, help="YAML settings file (for dashboard.users_file)")
    user.add_argument("--users-file", help="the users file (dashboard.users_file; default /etc/custom-ingest/...)")
    actions = user.add_subparsers(dest="action", required=True, metavar="{add,remove,list}")
    add = actions.add_parser("add", help="add a user, or set a user's new password (asked twice)")
    add.add_argument("name", help="user name: 1-64 of letters, digits, '_', '.', '@', '-'")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    actions.add_parser("remove", help="remove a user (their sessions end at once)").add_argument("name")
    actions.add_parser("list", help="the user names, one a line")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "database.dsn": getattr(args, "dsn", None),
        "mqtt.host": getattr(args, "mqtt_host", None),
        "mqtt.port": getattr(args, "mqtt_port", None),
        "mqtt.topic_prefix": getattr(args, "topic_prefix", None),
        "mqtt.group": getattr(args, "group", None),
        "mqtt.client_id": getattr(args, "client_id", None),
        "batch_rows": getattr(args, "batch_rows", None),
        "batch_wait_s": getattr(args, "batch_wait", None),
        "retention_days": getattr(args, "days", None),
        "dashboard.dsn": args.dsn if args.command == "serve" else None,
        "dashboard.host": getattr(args, "host", None),
        "dashboard.port": getattr(args, "port", None),
        "dashboard.tile_url": getattr(args, "tile_url", None),
        "dashboard.basemap_mbtiles": getattr(args, "basemap", None),
        "dashboard.outline_geojson": getattr(args, "outline", None),
        "dashboard.users_file": getattr(args, "users_file", None),
        "dashboard.tls_cert": getattr(args, "cert", None),
        "dashboard.tls_key": getattr(args, "key", None),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="custom-ingest: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"custom-ingest: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    if args.command == "run":
        return _run(config)
    if args.command == "serve":
        return _serve(config)
    if args.command == "user":
        return _user(args, Path(config.dashboard.users_file))
    conn = _connect(config)
    if conn is None:
        return exitcodes.UNAVAILABLE
    with conn:
        if args.command == "migrate":
            try:
                done = migrate(conn)
            except MissingRight as exc:
                print(f"custom-ingest: {exc}", file=sys.stderr)
                return exitcodes.CONFIG
            print(f"custom-ingest: applied {', '.join(done)}" if done else "custom-ingest: schema up to date")
            return exitcodes.OK
        if config.retention_days < 1:
            print("custom-ingest: retention_days: give --days N (N >= 1)", file=sys.stderr)
            return exitcodes.CONFIG
        dropped = drop_old_partitions(conn, config.retention_days)
        print(f"custom-ingest: dropped {len(dropped)} partition(s) {' '.join(dropped)}".rstrip())
        return exitcodes.OK


def _connect(config: IngestConfig) -> psycopg.Connection | None:
    """The database, or None after one line naming the setting (the ingest cannot work without it)."""
    try:
        return connect(config.database.dsn)
    except psycopg.Error as exc:
        print(f"custom-ingest: database.dsn: cannot connect ({_first_line(exc)})", file=sys.stderr)
        return None


def _run(config: IngestConfig) -> int:
    from .consumer import Ingest

    conn = _connect(config)
    if conn is None:
        return exitcodes.UNAVAILABLE
    with conn:
        missing = pending(conn)
    if missing:
        print(f"custom-ingest: database schema is behind ({', '.join(missing)}): run `custom-ingest migrate`",
              file=sys.stderr)  # fmt: skip
        return exitcodes.CONFIG
    try:
        ingest = Ingest(config, Judge(prefix=config.mqtt.topic_prefix))
    except (OSError, ssl.SSLError) as exc:  # the password file or the CA certificate
        print(f"custom-ingest: mqtt.password_file / mqtt.tls_ca: cannot use it ({_first_line(exc)})", file=sys.stderr)
        return exitcodes.CONFIG
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: ingest.stop())
    logging.getLogger("custom.ingest").info(
        "consuming %s and %s from %s:%d as %s",
        config.event_topic, config.summary_topic, config.mqtt.host, config.mqtt.port, config.mqtt.client_id,
    )  # fmt: skip
    return ingest.run()


def _user(args: argparse.Namespace, path: Path) -> int:
    from .users import UsersError, add_user, load_users, remove_user

    try:
        if args.action == "list":
            print("\n".join(sorted(load_users(path))) or f"custom-ingest: no users in {path}")
            return exitcodes.OK
        if args.action == "remove":
            if not remove_user(path, args.name):
                print(f"custom-ingest: no user {args.name!r} in {path}", file=sys.stderr)
                return exitcodes.DATA_ERROR
            print(f"custom-ingest: removed {args.name!r} from {path}")
            return exitcodes.OK
        password = _new_password(args.password_stdin)
        if password is None:
            return exitcodes.DATA_ERROR
        added = add_user(path, args.name, password)
        print(f"custom-ingest: {'added' if added else 'new password for'} {args.name!r} in {path}")
        return exitcodes.OK
    except UsersError as exc:
        print(f"custom-ingest: {exc}", file=sys.stderr)
        return exitcodes.DATA_ERROR
    except OSError as exc:
        print(f"custom-ingest: {path}: cannot write ({_first_line(exc)})", file=sys.stderr)
        return exitcodes.CANT_CREATE


def _new_password(from_stdin: bool) -> str | None:
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        print("custom-ingest: the two passwords differ", file=sys.stderr)
        return None
    return first


def _door_refusal(config: IngestConfig) -> str | None:
    """Why `serve` must not start with these users and TLS files (one line), or None."""
    from .door import is_loopback
    from .users import UsersError, load_users

    web = config.dashboard
    try:
        users = load_users(Path(web.users_file))
    except UsersError as exc:
        return f"dashboard.users_file: {exc}"
    if not users and not is_loopback(web.host):
        return (f"dashboard.users_file: no user in {web.users_file} and dashboard.host {web.host} is not loopback: "
                "add one (custom-ingest user add NAME) before serving the fleet to the network")  # fmt: skip
    if not users:
        logging.getLogger("custom.ingest").warning(
            "no dashboard user in %s: nobody can log in until `custom-ingest user add NAME`", web.users_file
        )
    if web.tls_cert and web.tls_key:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(web.tls_cert, web.tls_key)
        except (OSError, ssl.SSLError) as exc:
            return f"dashboard.tls_cert / dashboard.tls_key: cannot use them ({_first_line(exc)})"
    return None


def _serve(config: IngestConfig) -> int:
    from psycopg_pool import PoolTimeout

    from .serve import serve

    refusal = _door_refusal(config)
    if refusal:
        print(f"custom-ingest: {refusal}", file=sys.stderr)
        return exitcodes.CONFIG
    dsn = config.dashboard.dsn or config.database.dsn
    key = "dashboard.dsn" if config.dashboard.dsn else "database.dsn"
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            missing = pending(conn)
    except psycopg.Error as exc:
        print(f"custom-ingest: {key}: cannot connect ({_first_line(exc)})", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    if missing:
        print(f"custom-ingest: database schema is behind ({', '.join(missing)}): run `custom-ingest migrate`",
              file=sys.stderr)  # fmt: skip
        return exitcodes.CONFIG
    try:
        return serve(config)
    except ConfigError as exc:  # the basemap files, checked as the app is built
        print(f"custom-ingest: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except PoolTimeout as exc:
        print(f"custom-ingest: {key}: cannot connect ({_first_line(exc)})", file=sys.stderr)
        return exitcodes.UNAVAILABLE


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
