"""`custom-ingest`: store a sensor fleet's MQTT events in PostgreSQL/PostGIS, exactly once.

Four commands: `migrate` (create or upgrade the schema), `run` (the long-running ingest), `retention` (drop
event partitions older than N days) and `serve` (the read-only web dashboard). Bad settings exit 78 with one line
naming the key; an unreachable database at `migrate`/`retention`/`serve` exits 69.
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
from pathlib import Path

import psycopg

from custom.daemon import exitcodes

from .config import ConfigError, IngestConfig, load_config
from .migrate import migrate, pending
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{migrate,run,retention,serve}")
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
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "database.dsn": args.dsn,
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
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="custom-ingest: %(message)s", stream=sys.stderr
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
    conn = _connect(config)
    if conn is None:
        return exitcodes.UNAVAILABLE
    with conn:
        if args.command == "migrate":
            done = migrate(conn)
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


def _serve(config: IngestConfig) -> int:
    from psycopg_pool import PoolTimeout

    from .serve import serve

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
    except PoolTimeout as exc:
        print(f"custom-ingest: {key}: cannot connect ({_first_line(exc)})", file=sys.stderr)
        return exitcodes.UNAVAILABLE


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
