"""The ingest loop: MQTT 5 shared subscription in, batched transactions out, acknowledgements only after commit.

Exactly once, piece by piece:
- QoS 1, a persistent session (clean start false, session expiry) and manual acknowledgement: the broker keeps every
  message until we PUBACK it, across our crashes and restarts, and we PUBACK only after its row is committed.
- `event_id` is the key and inserts are ON CONFLICT DO NOTHING: what the broker redelivers after a crash between
  commit and PUBACK is dropped by the database.
- A message received on an earlier connection is never acknowledged on a later one (the broker re-sends it anyway,
  and its packet id may by then name a different message).
- The database going away pauses the loop: the batch is retried until it commits, nothing is acknowledged meanwhile,
  so the broker stops sending once `receive_maximum` messages are unacknowledged and holds the rest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from custom.wire.backoff import Backoff
from custom.wire.settings import one_line
from custom.wire.timestamps import iso_utc
from custom.wire.topics import sensor_topic

from .alerts import Alerts
from .config import IngestConfig
from .records import EventRow, Judge, Rejection, SummaryRow, rejection
from .store import Store, connect, drop_old_partitions

log = logging.getLogger("custom.ingest")

RETENTION_EVERY_S = 3600.0
REPUBLISH_CLOSED_S = 24 * 3600  # alert episodes closed this recently are republished when an ingest starts


@dataclass
class Incoming:
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes


@dataclass
class Counters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    wrong_sensor: int = 0  # of `rejected`: not a sensor's topic, or a payload in another sensor's name
    summaries: int = 0
    batches: int = 0
    db_errors: int = 0
    db_up: bool = False
    mqtt_up: bool = False
    last_commit: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {k: v for k, v in self.__dict__.items() if k != "lock"}


class Ingest:
    """One ingest process: `run()` until `stop()`; safe to kill -9 at any point."""

    def __init__(self, config: IngestConfig, judge: Judge) -> None:
        self.config = config
        self.judge = judge
        self.counters = Counters()
        self.alerts = Alerts(config.alerts, config.timezone, config.mqtt.topic_prefix)
        self._inbox: queue.Queue[Incoming] = queue.Queue()
        self._stop = threading.Event()
        self._generation = 0
        self._client = self._new_client()

    # ---- MQTT side (paho's network thread)
    def _new_client(self) -> mqtt.Client:
        m = self.config.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=m.client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        if m.username:
            password = open(m.password_file).read().strip() if m.password_file else None  # noqa: SIM115
            client.username_pw_set(m.username, password)
        if m.tls_ca:
            client.tls_set(ca_certs=m.tls_ca)  # checks the certificate and the host name against mqtt.host
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(0.2, 5.0)  # type: ignore[arg-type]  # paho takes float seconds; its hint says int
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        props.SessionExpiryInterval = self.config.mqtt.session_expiry_s
        props.ReceiveMaximum = self.config.mqtt.receive_maximum
        return props

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT connect refused: %s", reason)
            return
        self._generation += 1
        with self.counters.lock:
            self.counters.mqtt_up = True
        client.subscribe([(self.config.event_topic, 1), (self.config.summary_topic, 1)])
        log.info("MQTT connected (session present: %s)", getattr(flags, "session_present", "?"))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        """Only after the broker's SUBACK is anything queued for this session: the line says when consuming begins,
        and a subscription the broker refuses (an ACL) is said once instead of the ingest waiting silently."""
        topics = f"{self.config.event_topic} and {self.config.summary_topic}"
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("MQTT subscription to %s refused by the broker: %s", topics, ", ".join(refused))
        else:
            log.info("MQTT subscribed to %s", topics)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._generation += 1  # nothing received before this may be acknowledged any more
        with self.counters.lock:
            self.counters.mqtt_up = False
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(Incoming(self._generation, msg.mid, msg.qos, msg.topic, bytes(msg.payload)))

    # ---- database side (the caller's thread)
    def run(self) -> int:
        m = self.config.mqtt
        self._client.connect_async(
            m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=self._connect_properties()
        )
        self._client.loop_start()
        store: Store | None = None
        pending: list[Incoming] = []
        next_health = time.monotonic()
        next_retention = time.monotonic()
        next_silent_check = time.monotonic()
        republish = bool(self.config.alerts.rules)
        backoff = Backoff(self.config.database.reconnect_min_s, self.config.database.reconnect_max_s)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_health:
                    self._publish_health()
                    next_health = now + self.config.health_interval_s
                if not pending:
                    pending = self._gather()
                if store is None:
                    store = self._open_store(backoff)
                    if store is None:
                        continue
                    backoff.reset()
                if self.config.retention_days and now >= next_retention:
                    dropped = drop_old_partitions(store.conn, self.config.retention_days)
                    if dropped:
                        log.info("retention: dropped %s", ", ".join(dropped))
                    next_retention = now + RETENTION_EVERY_S
                try:
                    if republish:
                        since = datetime.now(UTC) - timedelta(seconds=REPUBLISH_CLOSED_S)
                        self._publish_alerts(store, self.alerts.recent(store.conn, since))
                        republish = False
                    if now >= next_silent_check:
                        self._publish_alerts(store, self.alerts.on_timer(store.conn))
                        next_silent_check = now + self.config.alerts.check_s
                    if pending:
                        changed = self._commit(store, pending)
                        pending = []  # acknowledged: never retried (its packet ids may name other messages now)
                        self._publish_alerts(store, changed)
                except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.DeadlockDetected) as exc:
                    republish = bool(self.config.alerts.rules)  # a change may have been committed, not published
                    self._db_failed(exc)
                    _close_quietly(store)
                    store = None
        finally:
            self._publish_health()
            self._client.disconnect()
            self._client.loop_stop()
            _close_quietly(store)
        return 0

    def stop(self) -> None:
        self._stop.set()

    def _gather(self) -> list[Incoming]:
        """Up to batch_rows messages, waiting at most batch_wait_s after the first (or a short idle tick)."""
        try:
            first = self._inbox.get(timeout=min(0.2, self.config.health_interval_s))
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.config.batch_wait_s
        while len(batch) < self.config.batch_rows:
            left = deadline - time.monotonic()
            try:
                batch.append(self._inbox.get(timeout=left) if left > 0 else self._inbox.get_nowait())
            except queue.Empty:
                break
        with self.counters.lock:
            self.counters.received += len(batch)
        return batch

    def _open_store(self, backoff: Backoff) -> Store | None:
        try:
            store = Store(connect(self.config.database.dsn))
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._db_failed(exc)
            backoff.wait(self._stop)  # the daemon's jittered rule: a fleet of ingest workers does not retry in step
            return None
        with self.counters.lock:
            was_down = not self.counters.db_up and self.counters.db_errors > 0
            self.counters.db_up = True
        if was_down:
            log.info("database back: resuming")
        return store

    def _db_failed(self, exc: BaseException) -> None:
        with self.counters.lock:
            first = self.counters.db_up or self.counters.db_errors == 0
            self.counters.db_up = False
            self.counters.db_errors += 1
        if first:
            log.warning("database unavailable, pausing (nothing is acknowledged): %s", _reason(exc))

    def _commit(self, store: Store, batch: list[Incoming]) -> set[str]:
        """Store, evaluate the alert rules, acknowledge; returns the sensors whose alert episodes changed."""
        events: list[EventRow] = []
        summaries: list[SummaryRow] = []
        rejections: list[Rejection] = []
        for item in batch:
            judged = self.judge.judge(item.topic, item.payload)
            if isinstance(judged, EventRow):
                events.append(judged)
            elif isinstance(judged, SummaryRow):
                summaries.append(judged)
            else:
                rejections.append(judged)
        try:
            inserted = store.write(events, summaries, rejections)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
            inserted = self._commit_one_by_one(store, events, summaries, rejections)
        changed = self.alerts.on_commit(store.conn, events)
        generation = self._generation
        for item in batch:
            if item.qos > 0 and item.generation == generation:
                self._client.ack(item.mid, item.qos)
        with self.counters.lock:
            c = self.counters
            c.stored += inserted
            c.duplicates += len(events) - inserted
            c.rejected += len(rejections)
            c.wrong_sensor += sum(r.identity for r in rejections)
            c.summaries += len(summaries)
            c.batches += 1
            c.last_commit = iso_utc(time.time())
        if rejections:
            log.warning(
                "rejected %d message(s), e.g. %s: %s", len(rejections), rejections[0].topic, rejections[0].reason
            )
        return changed

    def _commit_one_by_one(
        self, store: Store, events: list[EventRow], summaries: list[SummaryRow], rejections: list[Rejection]
    ) -> int:
        """A batch PostgreSQL refused as data (a NUL in a string, a 30 February...): store what it accepts, reject
        the rest with the database's reason, so one bad message never blocks the queue behind it."""
        inserted = 0
        rows: list[EventRow | SummaryRow] = [*events, *summaries]
        for row in rows:
            try:
                if isinstance(row, EventRow):
                    inserted += store.write([row], [], [])
                else:
                    store.write([], [row], [])
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                if isinstance(row, EventRow):
                    topic, payload = row.topic, row.payload.encode()
                else:
                    topic = sensor_topic(self.config.mqtt.topic_prefix, row.sensor_id, "summary")
                    payload = row.payload.encode()
                rejections.append(rejection(topic, payload, f"database refused it: {_reason(exc)}"))
        store.write([], [], rejections)
        return inserted

    def _publish_alerts(self, store: Store, sensors: set[str] | list[str]) -> None:
        """Each sensor's open episodes, retained on <prefix>/_alerts/<sensor>, after the change is committed."""
        if not sensors:
            return
        for topic, payload in self.alerts.states(store.conn, sorted(sensors)):
            log.info("alerts: %s %s", topic, payload)
            self._client.publish(topic, payload, qos=1, retain=True)

    def _publish_health(self) -> None:
        health = self.counters.snapshot()
        health["queued"] = self._inbox.qsize()
        health["client_id"] = self.config.mqtt.client_id
        self._client.publish(self.config.health_topic, json.dumps(health), qos=0, retain=True)


def _close_quietly(store: Store | None) -> None:
    if store is None:
        return
    with contextlib.suppress(Exception):  # a broken connection may fail to close in many ways; it is gone anyway
        store.conn.close()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"
