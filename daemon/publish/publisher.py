"""MQTT publisher: sends spooled events in order, keeps the sensor's availability retained, never loses an event.

One thread owns the network. Each connection attempt uses a fresh paho client, so nothing paho queued on a dead
connection is ever re-sent behind our back: the spool is the only record of what is still owed, and after every
(re)connect the thread re-sends every unacknowledged row from the oldest, strictly in spool id order, at most
`max_inflight` unacknowledged at a time and at most `drain_per_s` per second. A row leaves the spool only on PUBACK
(QoS 1). Duplicates are possible only where QoS 1 allows them (a row sent, its PUBACK lost with the connection) and
are counted as `resent`.

Availability (same convention as Frigate): the last will sets `<prefix>/<id>/status` to `offline` (retained) if the
connection dies; `online` (retained) is published on every connect; a clean `stop()` publishes `offline` itself.

The broker being down is a normal state: each distinct problem is logged once (WARNING) with its cause in words,
repeats go to DEBUG, and reconnects back off by the shared rule (custom.wire.backoff) up to `mqtt.reconnect_max_s`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from custom.wire.backoff import Backoff
from custom.wire.settings import ConfigError, one_line
from custom.wire.topics import Topics

from ..config import MqttConfig, TlsConfig
from .spool import Spool

log = logging.getLogger(__name__)

LOOP_S = 0.1  # network loop tick: how soon a new spool row is noticed
CONNACK_TIMEOUT_S = 10.0  # TCP up but no CONNACK: give up on this attempt
CONNECT_TIMEOUT_S = 10.0  # TCP connect and TLS handshake
STABLE_S = 30.0  # a connection that lasted this long resets the backoff
OUTBOX_MAX = 100  # misc messages (health, discovery) queued for the network thread
DEFAULT_DRAIN_PER_S = 20.0

StateCallback = Callable[[bool, str], None]
MessageCallback = Callable[[bytes], None]


class TokenBucket:
    """Rate limit for draining a backlog: `rate_per_s` on average, bursts up to `capacity`.

    Keeps a day's backlog from hitting the broker (and the Pi's CPU) as one burst after an outage, while a single new
    event still goes out at once. The clock is injectable so the arithmetic can be tested without sleeping.
    """

    def __init__(self, rate_per_s: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = float(capacity)
        self._clock = clock
        self._tokens = float(capacity)
        self._at = clock()

    def available(self) -> int:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        return int(self._tokens)

    def take(self, n: int) -> None:
        self._tokens -= n


@dataclass
class _Session:
    """State of one connection; thrown away with it."""

    connected: bool = False
    refused: str | None = None
    inflight: dict[int, int] = field(default_factory=dict)  # paho mid -> spool row id
    early: set[int] = field(default_factory=set)  # mids whose on_publish fired before publish() returned (QoS 0)
    misc_mids: set[int] = field(default_factory=set)
    cursor: int = 0  # highest spool row id sent on this connection
    status_mid: int | None = None
    status_acked: bool = False


class Publisher:
    """Spool-backed MQTT publisher for one sensor. Thread-safe: call from any thread; one thread does the network."""

    def __init__(
        self,
        mqtt_config: MqttConfig,
        topics: Topics,
        spool: Spool,
        on_state: StateCallback | None = None,
        drain_per_s: float = DEFAULT_DRAIN_PER_S,
        subscriptions: Mapping[str, MessageCallback] | None = None,
    ) -> None:
        """Reads the password and TLS files now, so an unusable one is a ConfigError naming its key before any thread
        starts. `subscriptions`: topic -> callback(payload), subscribed on every connect, called on the network thread
        (keep them short: they may only queue messages with `send_if_connected`)."""
        self.config = mqtt_config
        self.topics = topics
        self.spool = spool
        self.on_state = on_state
        self.drain_per_s = drain_per_s
        self.subscriptions = dict(subscriptions or {})
        self.client_id = mqtt_config.effective_client_id(topics.sensor_id)
        self._password, self._tls = read_credentials(mqtt_config)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stop_deadline = 0.0
        self._connected = threading.Event()
        self._lock = threading.Lock()  # counters and the outbox
        self._progress = threading.Condition(self._lock)  # notified on every ack, for wait_drained()
        self._outbox: collections.deque[tuple[str, bytes, int, bool]] = collections.deque(maxlen=OUTBOX_MAX)
        self._session = _Session()
        self._max_sent_id = 0  # highest row id ever sent by this process: re-sending one at or below it is a resend
        self._rate = TokenBucket(drain_per_s, capacity=max(1, mqtt_config.max_inflight))
        self._last_error: str | None = None
        self._logged_error: str | None = None
        self._counts = {"published": 0, "acked": 0, "resent": 0, "connects": 0, "attempts": 0}

    # ------------------------------------------------------------------------------------------------------ public

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("publisher already started")
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish retained `offline`, wait (bounded) for in-flight acks, disconnect cleanly. Leaves the spool open."""
        self._stop_deadline = time.monotonic() + timeout * 0.8
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("MQTT thread did not stop within %.1f s", timeout)

    def deliver(self, topic: str, message: Mapping[str, Any]) -> int:
        """The one way to send what the sensor owes (events, summaries): spooled first, so it survives outages and
        restarts, then sent by the network thread in spool order. Returns the spool row id."""
        return self.spool.put(topic, encode(message))

    def send_if_connected(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        """Best effort for what a later message supersedes (health, Home Assistant discovery): queued if connected,
        dropped (False) if not. Retained messages that must exist on the broker (discovery) are re-sent from
        `on_state(True, ...)`, which runs on every connect."""
        if not self._connected.is_set():
            return False
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        with self._lock:
            self._outbox.append((topic, data, qos, retain))
        return True

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the spool is empty (everything acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while self.spool.depth() > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(min(left, 0.5))
        return True

    def stats(self) -> dict[str, Any]:
        """For the health message."""
        with self._lock:
            counts = dict(self._counts)
            inflight = len(self._session.inflight)
        return {
            "connected": self._connected.is_set(),
            "last_error": self._last_error,
            "inflight": inflight,
            "backlog": self.spool.depth(),
            **counts,
        }

    # ------------------------------------------------------------------------------------------------ setup parts

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,  # the spool, not a broker session, remembers what is owed
            protocol=mqtt.MQTTv311,
        )
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(0)  # we bound in-flight events ourselves; paho must not queue
        client.max_queued_messages_set(0)
        client.will_set(self.topics.status, self.topics.OFFLINE, qos=1, retain=True)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self._password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # ---------------------------------------------------------------------------------------------- network thread

    def _run(self) -> None:
        backoff = Backoff(self.config.reconnect_min_s, self.config.reconnect_max_s)
        while not self._stop.is_set():
            try:
                connected_for = self._run_session()
            except Exception as exc:  # a bug or an unexpected paho error must not kill the only sender
                if self._problem(f"unexpected error: {one_line(exc)}"):
                    log.exception("MQTT session failed unexpectedly")
                connected_for = 0.0
            self._set_disconnected()
            if self._stop.is_set():
                break
            if connected_for >= STABLE_S:
                backoff.reset()
            attempt = backoff.failures + 2  # the one that failed was attempt failures + 1
            delay = backoff.delay_s()
            log.debug("MQTT reconnect in %.1f s (attempt %d)", delay, attempt)
            self._stop.wait(delay)

    def _run_session(self) -> float:
        """Connect once and serve the connection until it ends; returns how long it was up (0 if it never was)."""
        client = self._new_client()
        with self._lock:
            self._session = _Session()
            self._counts["attempts"] += 1
        try:
            client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        except OSError as exc:  # includes refused, unreachable, DNS, timeouts and every ssl.SSLError
            self._problem(_describe_connect_error(exc, tls=self._tls is not None))
            _close_socket(client)
            return 0.0
        connack_deadline = time.monotonic() + CONNACK_TIMEOUT_S
        connected_at: float | None = None
        session = self._session
        try:
            while True:
                rc = client.loop(timeout=LOOP_S)
                if rc != mqtt.MQTT_ERR_SUCCESS or session.refused is not None:
                    break
                if session.connected:
                    if connected_at is None:
                        connected_at = time.monotonic()
                    if self._stop.is_set():
                        self._flush_outbox(client, session)  # e.g. discovery removals queued just before stop
                        self._goodbye(client, session)
                        break
                    self._flush_outbox(client, session)
                    self._send_rows(client, session)
                elif self._stop.is_set():
                    break
                elif time.monotonic() > connack_deadline:
                    self._problem(f"no CONNACK within {CONNACK_TIMEOUT_S:.0f} s (is this an MQTT port?)")
                    break
        finally:
            _close_socket(client)
        return 0.0 if connected_at is None else time.monotonic() - connected_at

    def _send_rows(self, client: mqtt.Client, session: _Session) -> None:
        """Send spool rows after the cursor, oldest first, within the in-flight and rate budgets."""
        room = min(self.config.max_inflight - len(session.inflight), self._rate.available())
        if room <= 0:
            return
        for row in self.spool.pending(session.cursor, room):
            info = client.publish(row.topic, row.payload, qos=self.config.qos, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # the connection just went; the loop will notice
                return
            session.cursor = row.row_id
            self._rate.take(1)
            with self._lock:
                self._counts["published"] += 1
                if row.row_id <= self._max_sent_id:
                    self._counts["resent"] += 1
                self._max_sent_id = max(self._max_sent_id, row.row_id)
                early = info.mid in session.early
                if early:
                    session.early.discard(info.mid)
                else:
                    session.inflight[info.mid] = row.row_id
            if early:
                self._acked(row.row_id)

    def _flush_outbox(self, client: mqtt.Client, session: _Session) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                topic, payload, qos, retain = self._outbox.popleft()
            info = client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                continue
            with self._lock:  # QoS 0 may be "acked" (written) before publish() returned
                if info.mid in session.early:
                    session.early.discard(info.mid)
                else:
                    session.misc_mids.add(info.mid)

    def _goodbye(self, client: mqtt.Client, session: _Session) -> None:
        """Clean stop: retained offline, bounded wait for PUBACKs (events, queued discovery), DISCONNECT (so the
        broker does not fire the will)."""
        info = client.publish(self.topics.status, self.topics.OFFLINE, qos=1, retain=True)
        session.status_mid = info.mid
        session.status_acked = False
        while time.monotonic() < self._stop_deadline:
            if session.status_acked and not session.inflight and not session.misc_mids:
                break
            if client.loop(timeout=LOOP_S) != mqtt.MQTT_ERR_SUCCESS:
                return
        client.disconnect()
        log.info("MQTT disconnected cleanly (status offline)")

    # --------------------------------------------------------------------------------- paho callbacks (our thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        session = self._session
        if reason.is_failure:
            text = str(reason)
            hint = " (check mqtt.username / mqtt.password_file)" if _is_auth_failure(text) else ""
            session.refused = text
            self._problem(f"broker refused the connection: {text}{hint}")
            return
        session.connected = True
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        info = client.publish(self.topics.status, self.topics.ONLINE, qos=1, retain=True)
        session.status_mid = info.mid
        with self._lock:
            self._counts["connects"] += 1
            backlog = self.spool.depth()
        was_failing = self._logged_error is not None
        self._logged_error = None
        self._last_error = None
        log.info(
            "MQTT connected to %s:%d as %s%s; %d event(s) to send",
            self.config.host,
            self.config.port,
            self.client_id,
            " (recovered)" if was_failing else "",
            backlog,
        )
        self._connected.set()
        self._notify_state(True, "connected")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        session = self._session
        if session.connected:
            if not self._stop.is_set():
                detail = "" if str(reason) in ("Unspecified error", "Success") else f" ({reason})"
                self._problem(f"connection lost{detail}; events are spooled until the broker is back")
        elif session.refused is None and not self._stop.is_set():
            self._problem(
                "connection closed by the broker before it answered (TLS port without mqtt.tls.enabled, "
                "or client id / protocol rejected?)"
            )

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        session = self._session
        if mid == session.status_mid:
            session.status_acked = True
            return
        with self._lock:
            row_id = session.inflight.pop(mid, None)
            if row_id is None:
                if mid in session.misc_mids:
                    session.misc_mids.discard(mid)
                else:
                    session.early.add(mid)
                return
        self._acked(row_id)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        callback = self.subscriptions.get(message.topic)
        if callback is None:
            return
        try:
            callback(bytes(message.payload))
        except Exception:
            log.exception("handler for %s failed", message.topic)

    # --------------------------------------------------------------------------------------------------- helpers

    def _acked(self, row_id: int) -> None:
        with self._progress:  # ack and count together: wait_drained() must never see the row gone but uncounted
            self.spool.ack(row_id)
            self._counts["acked"] += 1
            self._progress.notify_all()

    def _set_disconnected(self) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        with self._lock:
            self._outbox.clear()
            self._session.inflight.clear()
        if was:
            self._notify_state(False, self._last_error or "stopped")

    def _problem(self, text: str) -> bool:
        """Record a connection problem; log it once (WARNING) until it changes or a connect succeeds."""
        self._last_error = text
        where = f"{self.config.host}:{self.config.port}"
        if text == self._logged_error:
            log.debug("MQTT %s: %s (still)", where, text)
            return False
        self._logged_error = text
        log.warning("MQTT %s: %s; retrying with backoff up to %g s", where, text, self.config.reconnect_max_s)
        return True

    def _notify_state(self, connected: bool, detail: str) -> None:
        if self.on_state is None:
            return
        try:
            self.on_state(connected, detail)
        except Exception:
            log.exception("on_state callback failed")


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON: the wire format of every message the sensor sends."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def read_credentials(mqtt_config: MqttConfig) -> tuple[str | None, ssl.SSLContext | None]:
    """The password (first line of `mqtt.password_file`) and TLS context; ConfigError naming the key if unusable.
    Also called on reload before the running connection is touched, so a bad new file is refused, not fatal."""
    return _read_password(mqtt_config.password_file), _make_tls_context(mqtt_config.tls)


def _read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("mqtt.password_file", f"cannot read {path}: {getattr(exc, 'strerror', exc)}") from None
    if not lines or not lines[0]:
        raise ConfigError("mqtt.password_file", f"{path} is empty (the password is its first line)")
    return lines[0]


def _make_tls_context(tls: TlsConfig) -> ssl.SSLContext | None:
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    loaders: tuple[tuple[str, Callable[[], None]], ...] = (
        ("mqtt.tls.ca", lambda: context.load_verify_locations(cafile=str(tls.ca)) if tls.ca else None),
        ("mqtt.tls.cert", lambda: context.load_cert_chain(str(tls.cert), str(tls.key)) if tls.cert else None),
    )
    for key, load in loaders:
        try:
            load()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(key, f"cannot load: {one_line(exc)}") from None
    return context


def _describe_connect_error(exc: OSError, tls: bool) -> str:
    """A connect failure in words a field technician can act on."""
    if tls and isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return "TLS handshake failed: the broker reset the connection (is this a TLS port? check mqtt.port/mqtt.tls)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate check failed: {exc.verify_message} (check mqtt.tls.ca and mqtt.host)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or one_line(exc)} (is this a TLS port? check mqtt.tls)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (broker not running, or wrong mqtt.port)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve mqtt.host: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:.0f} s (network down or firewall?)"
    return f"cannot connect: {exc.strerror or one_line(exc)}"


def _is_auth_failure(text: str) -> bool:
    text = text.lower()
    return "not authori" in text or "user name or password" in text or "bad user" in text


def _close_socket(client: mqtt.Client) -> None:
    """Drop the connection without DISCONNECT (the will stands unless _goodbye already sent one)."""
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
