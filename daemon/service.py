"""`custom-sensord run`: the always-on sensor. capture -> ring -> window -> front end -> model -> event -> spool/MQTT.

One thread owns the pipeline (this module's main loop); capture and MQTT each run their own supervised thread and
never block it. Signals only set flags: SIGTERM/SIGINT stop, SIGHUP reloads config and bundle. Shutdown runs in one
order: stop capture, finish the window in flight, publish `offline`, close the spool.

The systemd watchdog is fed only while windows really complete (or while the microphone is known to be down and
being reopened, which a restart would not fix), so a hung pipeline gets restarted by systemd.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import exitcodes
from .bundle import BundleError, load_bundle
from .capture import FileSource, MicCapture
from .clock import ClockProbe
from .config import Config, ConfigError, load_config
from .event import EventContext
from .frontend import resample
from .levels import LevelMeter
from .micstatus import describe_mic, mic_down_since, mic_state
from .model import Model
from .notify import Notifier, setup_logging
from .publisher import Publisher
from .ringbuffer import RingBuffer
from .runtime import RuntimeMissingError
from .spool import Spool
from .summary import HourlySummary, summary_period_s, summary_topic
from .windows import Window, Windower

log = logging.getLogger("custom.daemon.service")

RING_WINDOWS = 3  # seconds of audio kept = 3 windows: room for one slow inference without skipping
LATENCY_SAMPLES = 100  # inference times kept for p50/p95 in health
STALL_MARGIN_S = 15.0  # beyond the expected window period before the pipeline counts as stalled
SHUTDOWN_DRAIN_S = 2.0  # on stop, how long the last spooled rows (the partial summary) may take to go out
# Test-only fault injection: stop processing after N windows, to prove the watchdog stops (no real way to hang
# TFLite on demand). Read once at start; never set in the shipped unit.
FAULT_STALL_ENV = "CUSTOM_SENSORD_FAULT_STALL_AFTER"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("custom-sensor")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "unknown"


@dataclass(frozen=True)
class Pipeline:
    """Everything that depends on config + bundle and is swapped as a whole on reload."""

    config: Config
    model: Model
    context: EventContext
    meter: LevelMeter


def build_pipeline(config: Config) -> Pipeline:
    """Load the bundle and check config against it; ConfigError/BundleError name what is wrong (exit 78)."""
    try:
        bundle = load_bundle(config.model.bundle)
        model = Model(bundle, threads=config.model.threads)  # the runtime checks the file and tensor shapes
    except BundleError as exc:
        raise ConfigError("model.bundle", str(exc)) from None
    unknown = sorted(set(config.model.thresholds) - set(bundle.class_names))
    if unknown:
        raise ConfigError(
            f"model.thresholds.{unknown[0]}",
            f"not a class of bundle {bundle.bundle_id} (classes: {', '.join(bundle.class_names)})",
        )
    thresholds = tuple(config.model.thresholds.get(c.name, c.threshold) for c in bundle.classes)
    calibrated = config.audio.calibration_db is not None
    context = EventContext(
        sensor_id=config.sensor_id,
        location=config.location.to_event(),
        class_names=bundle.class_names,
        thresholds=thresholds,
        bundle_id=bundle.bundle_id,
        bundle_sha256=bundle.sha256,
        level_unit="dB(A)" if calibrated else "dBFS",
    )
    meter = LevelMeter(config.audio.calibration_db)
    return Pipeline(config, model, context, meter)


class Service:
    def __init__(self, config_path: Path, input_file: Path | None = None, realtime: bool = True, loop: bool = False):
        self.config_path = config_path
        self.input_file = input_file
        self.realtime = realtime
        self.loop = loop
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self.notifier = Notifier()
        self.started_mono = time.monotonic()
        self.windows_done = 0
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.last_progress_mono = time.monotonic()
        self._next_health = 0.0
        self._next_watchdog = 0.0
        fault = os.environ.get(FAULT_STALL_ENV)
        self._stall_after = int(fault) if fault and fault.isdigit() else None
        self.pipeline: Pipeline | None = None
        self.spool: Spool | None = None
        self.publisher: Publisher | None = None
        self.source: MicCapture | FileSource | None = None
        self.windower: Windower | None = None
        self.clock = ClockProbe()
        self.summary: HourlySummary | None = None
        self._mic_status: str | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    def start(self, config: Config) -> None:
        """Bundle first (the likeliest thing to be wrong), then spool and MQTT, then audio."""
        self.pipeline = build_pipeline(config)
        self.summary = HourlySummary(
            config.sensor_id, self.pipeline.context.location, self.pipeline.context.class_names, summary_period_s(),
            grace_s=config.window.length_s + STALL_MARGIN_S,
        )  # fmt: skip
        self._start_transport(config)
        self._start_audio(config)

    def _start_transport(self, config: Config) -> None:
        self.spool = Spool(config.spool.path, config.spool.max_rows, config.spool.max_bytes, config.spool.memory_rows)
        self.publisher = Publisher(
            config.mqtt,
            config.sensor_id,
            self.spool,
            on_state=self._on_mqtt_state,
            drain_per_s=config.spool.drain_per_s,
        )
        self.publisher.start()

    def _stop_transport(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def _start_audio(self, config: Config) -> None:
        seconds = RING_WINDOWS * max(config.window.length_s, config.window.hop_s)
        ring = RingBuffer.for_duration(seconds, max_rate_hz=max(48000, config.audio.sample_rate_hz or 0))
        if self.input_file is not None:
            self.source = FileSource(
                self.input_file, ring, realtime=self.realtime, gain_db=config.audio.gain_db, loop=self.loop,
                backpressure=None if self.realtime else self._reader_behind,
            )  # fmt: skip
        else:
            self.source = MicCapture(
                ring,
                device=config.audio.device,
                sample_rate_hz=config.audio.sample_rate_hz,
                channels=config.audio.channels,
                gain_db=config.audio.gain_db,
                block_size=round(config.audio.sample_rate_hz * config.audio.block_ms / 1000)
                if config.audio.sample_rate_hz
                else None,
            )
        self.windower = Windower(ring, None, config.window.length_s, config.window.hop_s)
        self.source.start()

    def _reader_behind(self, written: int) -> bool:
        """Fast replay (--fast, tests) must not lap the window reader: hold the writer a window short of it."""
        windower = self.windower
        if windower is None:
            return False
        return written - (windower.next_sample or 0) > windower.ring.capacity // RING_WINDOWS

    def _stop_audio(self) -> None:
        if self.source is not None:
            self.source.stop()
            self.source = None

    def shutdown(self, quiet: bool = False) -> None:
        """One order: audio off, transport says `offline` and flushes, spool closed. `quiet` after a refused start,
        so the refusal stays the only line the operator sees (exit 78)."""
        self.notifier.stopping()
        self._stop_audio()
        if self.summary is not None and self.spool is not None and self.pipeline is not None:
            self._publish_summaries([self.summary.close(time.time())])
            if self.publisher is not None and self.publisher.connected:
                self.publisher.wait_drained(SHUTDOWN_DRAIN_S)  # let the partial summary out now rather than next start
        self._stop_transport()
        if not quiet:
            log.info("stopped after %d windows", self.windows_done)

    # ------------------------------------------------------------------------------------------------ main loop

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        assert self.pipeline is not None and self.windower is not None
        bundle = self.pipeline.model.bundle
        self.notifier.ready(f"running bundle {bundle.bundle_id}, waiting for the first window")
        log.info(
            "sensor %s running: bundle %s (%s, sha256 %s), %.0f s windows every %.0f s, publishing to %s:%d",
            self.pipeline.config.sensor_id, bundle.bundle_id, bundle.backbone, bundle.sha256[:12],
            self.pipeline.config.window.length_s, self.pipeline.config.window.hop_s,
            self.pipeline.config.mqtt.host, self.pipeline.config.mqtt.port,
        )  # fmt: skip
        try:
            while not self.stop_event.is_set():
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload()
                window = self.windower.next_window(self.stop_event, timeout=0.5)
                if window is not None:
                    self.process(window)
                elif self.windower.exhausted:
                    log.info("end of input %s", self.input_file)
                    if self.publisher is not None and not self.publisher.wait_drained(10.0):
                        log.warning("input ended with %d events still spooled", self.spool.depth() if self.spool else 0)
                    break
                self._housekeeping()
        finally:
            self.shutdown()
        return exitcodes.OK

    def process(self, window: Window) -> None:
        """The per-window hot path: resample if needed, score, level, build and spool the event."""
        if self._stall_after is not None and self.windows_done >= self._stall_after:
            log.warning("fault injection: pipeline stalled on purpose (%s)", FAULT_STALL_ENV)
            self.stop_event.wait()
            return
        pipeline = self.pipeline
        assert pipeline is not None and self.publisher is not None
        clock = self.clock.state()  # as near the window's start as we can ask: it was stamped moments ago
        t0 = time.perf_counter()
        rate = pipeline.model.bundle.frontend.sample_rate_hz
        waveform = resample(window.samples, int(round(window.rate_hz)), rate)
        result = pipeline.model.scores(waveform)
        levels = pipeline.meter(window.samples, window.rate_hz)  # capture rate: A-weighting over the full band
        elapsed_ms = (time.perf_counter() - t0) * 1e3
        event = pipeline.context.build(
            result.scores, window.start_time, window.end_time, levels.to_event(), elapsed_ms, clock=clock.to_event()
        )
        self.publisher.publish_event(event)
        if self.summary is not None:
            labels = [label["name"] for label in event["labels"]]
            self._publish_summaries(self.summary.add(window.start_time, window.end_time, levels, labels, clock.synced))
        self.latencies_ms.append(elapsed_ms)
        self.windows_done += 1
        self.last_progress_mono = time.monotonic()
        log.debug("window %s: top %s %.2f, %.1f ms", event["window"]["start"], event["top"]["name"],
                  event["top"]["score"], elapsed_ms)  # fmt: skip

    # ------------------------------------------------------------------------------------------------ upkeep

    def _housekeeping(self) -> None:
        now = time.monotonic()
        interval = self.notifier.watchdog_interval_s
        if interval is not None and now >= self._next_watchdog and self._pipeline_healthy(now):
            self.notifier.watchdog()
            self._next_watchdog = now + interval
        assert self.pipeline is not None
        if self.summary is not None:
            self._publish_summaries(self.summary.due(time.time()))
        mic = mic_state(self.source.state() if self.source is not None else None)
        if mic != self._mic_status:  # a dead microphone shows in `systemctl status` at once, not at the next health
            self._mic_status = mic
            self._next_health = 0.0
        if now >= self._next_health:
            self._next_health = now + self.pipeline.config.health_interval_s
            health = self.health()
            if self.publisher is not None:
                self.publisher.publish_health(health)
            self.notifier.status(self._status_line(health))

    def _pipeline_healthy(self, now: float) -> bool:
        """Windows are completing on time, or the mic is down and being reopened (a restart would not help)."""
        assert self.pipeline is not None
        window = self.pipeline.config.window
        if now - self.last_progress_mono <= window.length_s + window.hop_s + STALL_MARGIN_S:
            return True
        return self.source is not None and self.source.state().get("mic") in ("down", "opening")

    def health(self) -> dict[str, Any]:
        assert self.pipeline is not None and self.windower is not None
        latencies = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        health: dict[str, Any] = {
            "sensor_id": self.pipeline.config.sensor_id,
            "version": _version(),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "bundle": {"id": self.pipeline.model.bundle.bundle_id, "sha256": self.pipeline.model.bundle.sha256},
            "windows": {**self.windower.stats(), "done": self.windows_done},
            "inference_ms": {
                "p50": round(float(np.percentile(latencies, 50)), 1),
                "p95": round(float(np.percentile(latencies, 95)), 1),
            },
            "audio": mic_down_since(self.source.state(), time.time()) if self.source is not None else None,
            "clock": {**self.clock.state().to_event(), "source": self.clock.source},
            "spool": self.spool.stats() if self.spool is not None else None,
            "mqtt": self.publisher.stats() if self.publisher is not None else None,
        }
        temperature = _cpu_temperature_c()
        if temperature is not None:
            health["cpu_temp_c"] = temperature
        return health

    @staticmethod
    def _status_line(health: dict[str, Any]) -> str:
        audio = health.get("audio") or {}
        mqtt = health.get("mqtt") or {}
        spool = health.get("spool") or {}
        return (
            f"{describe_mic(audio)}, {health['windows']['done']} windows, "
            f"mqtt {'up' if mqtt.get('connected') else 'down'}, spool {spool.get('depth', 0)} queued, "
            f"p95 {health['inference_ms']['p95']} ms"
        )

    def _publish_summaries(self, summaries: list[dict[str, Any] | None]) -> None:
        """Through the spool, like events: an hour's figures survive broker outages and restarts."""
        assert self.pipeline is not None
        topic = summary_topic(self.pipeline.config.mqtt.topic_prefix, self.pipeline.config.sensor_id)
        for summary in summaries:
            if summary is not None and self.spool is not None:
                self.spool.put(topic, json.dumps(summary, separators=(",", ":")).encode())
                log.info("summary %s: LAeq %s %s over %.1f min%s", summary["period"]["start"],
                         summary["level"]["laeq"], summary["level"]["unit"], summary["minutes_covered"],
                         " (partial)" if summary["period"]["partial"] else "")  # fmt: skip

    def _on_mqtt_state(self, connected: bool, detail: str) -> None:
        """Called by the publisher on every (re)connect: re-send retained discovery configs HA may have lost."""
        if connected and self.pipeline is not None and self.pipeline.config.home_assistant.discovery:
            self._publish_discovery(self.pipeline)

    def _publish_discovery(self, pipeline: Pipeline) -> None:
        from .discovery import discovery_messages

        if self.publisher is None:
            return
        config = pipeline.config
        for topic, payload in discovery_messages(
            config.sensor_id,
            config.mqtt.topic_prefix,
            pipeline.context.class_names,
            config.home_assistant.prefix,
            level_unit=pipeline.context.level_unit,
        ):
            self.publisher.publish(topic, payload, qos=1, retain=True)

    def _remove_discovery(self, old: Config) -> None:
        """Discovery switched off on reload: empty retained configs make Home Assistant delete the entities."""
        from .discovery import removal_messages

        if self.publisher is None or self.pipeline is None:
            return
        for topic, payload in removal_messages(
            old.sensor_id, self.pipeline.context.class_names, old.home_assistant.prefix
        ):
            self.publisher.publish(topic, payload, qos=1, retain=True)
        log.info("Home Assistant discovery removed for sensor %s", old.sensor_id)

    # ------------------------------------------------------------------------------------------------ reload

    def reload(self) -> None:
        """SIGHUP: re-read config and bundle; anything bad keeps the running setup and is logged, never fatal."""
        self.notifier.reloading()
        assert self.pipeline is not None
        old = self.pipeline.config
        try:
            config = load_config(self.config_path)
            pipeline = build_pipeline(config)
        except ConfigError as exc:
            log.error("reload refused, keeping bundle %s: %s", self.pipeline.model.bundle.bundle_id, exc)
            self.notifier.ready("reload refused; running the previous config")
            return
        setup_logging(config.log_level)
        self.pipeline = pipeline
        if old.home_assistant.discovery and not config.home_assistant.discovery:
            self._remove_discovery(old)
        if (config.mqtt, config.spool, config.sensor_id) != (old.mqtt, old.spool, old.sensor_id):
            self._stop_transport()
            self._start_transport(config)
        if (config.audio, config.window) != (old.audio, old.window):
            self._stop_audio()
            self._start_audio(config)
        log.info("reloaded %s: bundle %s (sha256 %s)", self.config_path, pipeline.model.bundle.bundle_id,
                 pipeline.model.bundle.sha256[:12])  # fmt: skip
        self.notifier.ready(f"reloaded; running bundle {pipeline.model.bundle.bundle_id}")


def _cpu_temperature_c() -> float | None:
    try:
        return round(int(Path("/sys/class/thermal/thermal_zone0/temp").read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def run_service(config_path: Path, input_file: Path | None = None, realtime: bool = True, loop: bool = False) -> int:
    """Entry point of `custom-sensord run`; returns the process exit code."""
    setup_logging("INFO")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        log.error("bad config %s: %s", config_path, exc)
        return exitcodes.CONFIG
    setup_logging(config.log_level)
    if input_file is not None and not input_file.is_file():
        log.error("--input %s: no such file", input_file)
        return exitcodes.NO_INPUT
    service = Service(config_path, input_file, realtime, loop)
    try:
        service.start(config)
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        service.shutdown(quiet=True)
        return exitcodes.CONFIG
    except RuntimeMissingError as exc:
        log.error("cannot start: %s", exc)
        service.shutdown(quiet=True)
        return exitcodes.UNAVAILABLE
    return service.run()
