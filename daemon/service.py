"""`custom-sensord run`: the always-on sensor. capture -> ring -> window -> front end -> model -> event -> spool/MQTT.

One thread owns the pipeline (this module's main loop); capture and MQTT each run their own supervised thread and
never block it. Signals only set flags: SIGTERM/SIGINT stop, SIGHUP reloads config and bundle. Shutdown runs in one
order: stop capture, finish the window in flight, publish `offline`, close the spool.

The systemd watchdog is fed only while windows really complete (or while the microphone is known to be down and
being reopened, which a restart would not fix), so a hung pipeline gets restarted by systemd.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custom.wire import exitcodes
from custom.wire.settings import ConfigError
from custom.wire.timestamps import iso_utc

from .audio.capture import FileSource, MicCapture
from .audio.ringbuffer import USUAL_MAX_CAPTURE_RATE_HZ, RingBuffer
from .audio.source import AudioSource
from .audio.windows import Window, Windower
from .clock import ClockProbe
from .config import Config, load_config
from .health import Health, mic_down_since, status_line
from .model.runtime import RuntimeMissingError
from .noise.summary import DEFAULT_PERIOD_S, HourlySummary
from .notify import Notifier, setup_logging
from .pipeline import Pipeline, build_pipeline
from .publish.discovery import Discovery
from .publish.publisher import Publisher, encode, read_credentials
from .publish.spool import Spool
from .status import report_path_from_environment, write_report

log = logging.getLogger("custom.daemon.service")

SHUTDOWN_DRAIN_S = 2.0  # on stop, how long the last spooled rows (the partial summary) may take to go out
RING_WINDOWS = 3  # seconds of audio kept = 3 windows: room for one slow inference without skipping
RING_RATE_HZ = (
    USUAL_MAX_CAPTURE_RATE_HZ  # the ring is sized for this capture rate (or the configured one if higher) ...
)
AUTO_RING_RATE_HZ = 96000  # ... or for this one when the device picks its own rate (audio.sample_rate_hz: null)
STALL_MARGIN_S = 15.0  # beyond the expected window period before the pipeline counts as stalled


@dataclass(frozen=True)
class RunOptions:
    """What `custom-sensord run` was asked to do: the one parameter list of `run_service` and `Service.start`.

    `stall_after` and `summary_period_s` are seams for tests only (set by `testing.faults`, never by a product
    CLI): stop processing after that many windows to prove the watchdog acts (there is no real way to hang TFLite on
    demand), and a summary period shorter than the hour."""

    config_path: Path
    input_file: Path | None = None
    loop: bool = False
    stall_after: int | None = None
    summary_period_s: float = DEFAULT_PERIOD_S


@dataclass(frozen=True)
class Controls:
    """What signals ask of the service. Made before the bundle loads: a SIGHUP (`systemctl reload`) or SIGTERM that
    arrives meanwhile must set a flag, not take the default action (SIGHUP's kills the process)."""

    stop: threading.Event
    reload: threading.Event

    @classmethod
    def from_signals(cls) -> Controls:
        controls = cls(threading.Event(), threading.Event())
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: controls.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: controls.reload.set())
        return controls


@dataclass(frozen=True)
class Transport:
    """Spool + MQTT publisher: replaced together when the broker or spool settings change."""

    spool: Spool
    publisher: Publisher

    @classmethod
    def start(cls, config: Config, discovery: Discovery) -> Transport:
        spool = Spool(config.spool.path, config.spool.max_rows, config.spool.max_bytes, config.spool.memory_rows)
        topics = config.topics
        try:
            publisher = Publisher(
                config.mqtt,
                topics,
                spool,
                on_state=discovery.on_connect,
                drain_per_s=config.spool.drain_per_s,
                subscriptions={topics.ha_status: discovery.on_ha_status} if config.home_assistant.discovery else None,
            )
        except ConfigError:
            spool.close()
            raise
        discovery.attach(publisher.send_if_connected)
        publisher.start()
        return cls(spool, publisher)

    def stop(self, discovery: Discovery) -> None:
        self.publisher.stop()
        discovery.attach(None)
        self.spool.close()


@dataclass(frozen=True)
class Audio:
    """Source (microphone or replayed file) + the windower reading its ring: replaced together on reload."""

    source: AudioSource
    windower: Windower

    @classmethod
    def start(cls, config: Config, options: RunOptions) -> Audio:
        seconds = RING_WINDOWS * max(config.window.length_s, config.window.hop_s)
        rate = config.audio.sample_rate_hz
        ring_rate = AUTO_RING_RATE_HZ if rate is None else max(RING_RATE_HZ, rate)
        ring = RingBuffer.for_duration(seconds, max_rate_hz=ring_rate)
        source: AudioSource
        if options.input_file is not None:
            source = FileSource(options.input_file, ring, gain_db=config.audio.gain_db, loop=options.loop)
        else:
            source = MicCapture(
                ring,
                device=config.audio.device,
                sample_rate_hz=rate,
                channels=config.audio.channels,
                gain_db=config.audio.gain_db,
                block_s=config.audio.block_ms / 1000,
            )
        windower = Windower(ring, None, config.window.length_s, config.window.hop_s)
        source.start()
        return cls(source, windower)

    def stop(self) -> None:
        self.source.stop()


class Service:
    """A running sensor. Made only by `Service.start`, so every part exists from the first window to `shutdown`;
    reload swaps parts whole (pipeline, transport, audio), never leaves one missing."""

    def __init__(
        self,
        options: RunOptions,
        controls: Controls,
        notifier: Notifier,
        config: Config,
        pipeline: Pipeline,
        discovery: Discovery,
        transport: Transport,
        audio: Audio,
    ) -> None:
        self.options = options
        self.controls = controls
        self.notifier = notifier
        self.discovery = discovery
        self.transport = transport
        self.audio = audio
        self.health = Health()
        self.clock = ClockProbe()
        self.summary = HourlySummary(
            config.sensor_id, pipeline.context.location, pipeline.context.class_names, options.summary_period_s,
            grace_s=config.window.length_s + STALL_MARGIN_S,
        )  # fmt: skip
        self._next_health = 0.0
        self._next_watchdog = 0.0
        self._mic_status: str | None = None
        self._report_path = report_path_from_environment()
        self._use_config(config, pipeline)

    @classmethod
    def start(cls, options: RunOptions, config: Config, controls: Controls, notifier: Notifier) -> Service:
        """Bundle first (the likeliest thing to be wrong), then spool and MQTT, then audio. Raises ConfigError or
        RuntimeMissingError with nothing left running."""
        pipeline = build_pipeline(config)
        discovery = Discovery()
        transport = Transport.start(config, discovery)
        try:
            audio = Audio.start(config, options)
        except BaseException:
            transport.stop(discovery)
            raise
        return cls(options, controls, notifier, config, pipeline, discovery, transport, audio)

    def _use_config(self, config: Config, pipeline: Pipeline) -> None:
        """What follows from config + bundle outside the pipeline: stall limit, discovery's wanted entities."""
        self.config = config
        self.pipeline = pipeline
        self._stall_limit_s = config.window.length_s + config.window.hop_s + STALL_MARGIN_S
        self.discovery.update(
            config.topics,
            pipeline.context.class_names,
            enabled=config.home_assistant.discovery,
            level_unit=pipeline.context.level_unit,
        )

    def shutdown(self) -> None:
        """One order: audio off, the partial summary spooled, transport says `offline` and flushes, spool closed."""
        self.notifier.stopping()
        self.audio.stop()
        self._deliver_summaries([self.summary.close(time.time())])
        if self.transport.publisher.connected:
            self.transport.publisher.wait_drained(SHUTDOWN_DRAIN_S)  # the partial summary now rather than next start
        self.transport.stop(self.discovery)
        log.info("stopped after %d windows", self.health.windows_done)

    # ------------------------------------------------------------------------------------------------ main loop

    def run(self) -> int:
        bundle, config = self.pipeline.bundle, self.config
        # READY as soon as config, bundle and spool are good: a missing microphone or broker is a state the sensor
        # waits out (and reports), not a failed start that systemd would retry in a loop.
        self.notifier.ready(f"running bundle {bundle.bundle_id}, waiting for the first window")
        log.info(
            "sensor %s running: bundle %s (%s, sha256 %s), %.0f s windows every %.0f s, publishing to %s:%d",
            config.sensor_id, bundle.bundle_id, bundle.backbone, bundle.sha256[:12],
            config.window.length_s, config.window.hop_s, config.mqtt.host, config.mqtt.port,
        )  # fmt: skip
        stop = self.controls.stop
        try:
            while not stop.is_set():
                if self.controls.reload.is_set():
                    self.controls.reload.clear()
                    self.reload()
                window = self.audio.windower.next_window(stop, timeout=0.5)
                if window is not None:
                    self.process(window)
                elif self.audio.windower.exhausted:
                    log.info("end of input %s", self.options.input_file)
                    if not self.transport.publisher.wait_drained(10.0):
                        log.warning("input ended with %d events still spooled", self.transport.spool.depth())
                    break
                self._housekeeping()
        finally:
            self.shutdown()
        return exitcodes.OK

    def process(self, window: Window) -> None:
        """The per-window hot path: score the window into an event and spool it."""
        if self.options.stall_after is not None and self.health.windows_done >= self.options.stall_after:
            log.warning("fault injection: pipeline stalled on purpose (testing.faults)")
            self.controls.stop.wait()
            return
        clock = self.clock.state()  # as near the window's start as we can ask: it was stamped moments ago
        scored = self.pipeline.score(window, clock=clock)
        event = scored.event
        self.transport.publisher.deliver(self.config.topics.events, event.to_json())
        labels = [label.name for label in event.labels]
        self._deliver_summaries(self.summary.add(window.start_time, window.end_time, scored.levels, labels,
                                                 clock.synced))  # fmt: skip
        self.health.window_done(event.processing_ms)
        self._write_report(self.health_report())
        log.debug("window %s: top %s %.2f, %.1f ms", iso_utc(event.start), event.top_name, event.top_score,
                  event.processing_ms)  # fmt: skip

    # ------------------------------------------------------------------------------------------------ upkeep

    def _housekeeping(self) -> None:
        now = time.monotonic()
        interval = self.notifier.watchdog_interval_s
        if interval is not None and now >= self._next_watchdog and self._pipeline_healthy(now):
            self.notifier.watchdog()
            self._next_watchdog = now + interval
        self._deliver_summaries(self.summary.due(time.time()))
        mic = self.audio.source.state().status
        if mic != self._mic_status:  # a dead microphone shows in `systemctl status` at once, not at the next health
            self._mic_status = mic
            self._next_health = 0.0
        if now >= self._next_health:
            self._next_health = now + self.config.health_interval_s
            health = self.health_report()
            self.transport.publisher.send_if_connected(self.config.topics.health, encode(health))
            self.notifier.status(status_line(health))
            self._write_report(health)

    def _write_report(self, health: dict[str, Any]) -> None:
        """For `custom-sensord status` on the sensor itself; a full /run is logged, never fatal."""
        if self._report_path is None:
            return
        try:
            write_report(self._report_path, health)
        except OSError as exc:
            log.warning("cannot write %s: %s", self._report_path, exc)

    def _pipeline_healthy(self, now: float) -> bool:
        """Windows are completing on time, or the mic is down and being reopened (a restart would not help)."""
        if now - self.health.last_progress_mono <= self._stall_limit_s:
            return True
        return self.audio.source.state().waiting_for_device

    def _deliver_summaries(self, summaries: Sequence[dict[str, Any] | None]) -> None:
        """Through the spool, like events: an hour's figures survive broker outages and restarts."""
        for summary in summaries:
            if summary is not None:
                self.transport.publisher.deliver(self.config.topics.summary, summary)
                log.info("summary %s: LAeq %s %s over %.1f min%s", summary["period"]["start"],
                         summary["level"]["laeq"], summary["level"]["unit"], summary["minutes_covered"],
                         " (partial)" if summary["period"]["partial"] else "")  # fmt: skip

    def health_report(self) -> dict[str, Any]:
        bundle = self.pipeline.bundle
        return self.health.report(
            sensor_id=self.config.sensor_id,
            bundle={"id": bundle.bundle_id, "sha256": bundle.sha256},
            windows=self.audio.windower.stats(),
            audio=mic_down_since(self.audio.source.state().to_health(), time.time()),
            clock={**self.clock.state().to_event(), "source": self.clock.source},
            spool=self.transport.spool.stats(),
            mqtt=self.transport.publisher.stats(),
        )

    # ------------------------------------------------------------------------------------------------ reload

    def reload(self) -> None:
        """SIGHUP: re-read config and bundle; anything bad keeps the running setup and is logged, never fatal.

        Everything that can be refused (config, bundle, password and TLS files) is checked before a running part is
        touched. Discovery is updated before the transport restarts, so removals go out (and are flushed) on the
        connection that announced the entities, named with the old bundle's classes."""
        self.notifier.reloading()
        old = self.config
        try:
            config = load_config(self.options.config_path)
            pipeline = build_pipeline(config)
            read_credentials(config.mqtt)
        except ConfigError as exc:
            log.error("reload refused, keeping bundle %s: %s", self.pipeline.bundle.bundle_id, exc)
            self.notifier.ready("reload refused; running the previous config")
            return
        setup_logging(config.log_level)
        if pipeline.bundle.sha256 != self.pipeline.bundle.sha256:
            self.health.bundle_swapped()
        self._use_config(config, pipeline)
        if (config.mqtt, config.spool, config.topics, config.home_assistant) != (
            old.mqtt, old.spool, old.topics, old.home_assistant,
        ):  # fmt: skip
            self.transport.stop(self.discovery)
            self.transport = Transport.start(config, self.discovery)
        if (config.audio, config.window) != (old.audio, old.window):
            self.audio.stop()
            self.audio = Audio.start(config, self.options)
        log.info("reloaded %s: bundle %s (sha256 %s)", self.options.config_path, pipeline.bundle.bundle_id,
                 pipeline.bundle.sha256[:12])  # fmt: skip
        self.notifier.ready(f"reloaded; running bundle {pipeline.bundle.bundle_id}")


def run_service(options: RunOptions) -> int:
    """Entry point of `custom-sensord run`; returns the process exit code."""
    setup_logging("INFO")
    try:
        config = load_config(options.config_path)
    except ConfigError as exc:
        log.error("bad config %s: %s", options.config_path, exc)
        return exitcodes.CONFIG
    setup_logging(config.log_level)
    if options.input_file is not None and not options.input_file.is_file():
        log.error("--input %s: no such file", options.input_file)
        return exitcodes.NO_INPUT
    controls = Controls.from_signals()
    notifier = Notifier()
    try:
        service = Service.start(options, config, controls, notifier)
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return exitcodes.CONFIG
    except RuntimeMissingError as exc:
        log.error("cannot start: %s", exc)
        return exitcodes.UNAVAILABLE
    return service.run()
