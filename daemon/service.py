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
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import exitcodes
from .audio.capture import FileSource, MicCapture
from .audio.ringbuffer import USUAL_MAX_CAPTURE_RATE_HZ, RingBuffer
from .audio.source import AudioSource
from .audio.windows import Window, Windower
from .clock import ClockProbe
from .config import Config, ConfigError, load_config
from .health import Health, mic_down_since, status_line
from .model.runtime import RuntimeMissingError
from .noise.summary import DEFAULT_PERIOD_S, HourlySummary
from .notify import Notifier, setup_logging
from .pipeline import Pipeline, build_pipeline
from .publish.discovery import Discovery
from .publish.publisher import Publisher
from .publish.spool import Spool

log = logging.getLogger("custom.daemon.service")

SHUTDOWN_DRAIN_S = 2.0  # on stop, how long the last spooled rows (the partial summary) may take to go out
RING_WINDOWS = 3  # seconds of audio kept = 3 windows: room for one slow inference without skipping
RING_RATE_HZ = (
    USUAL_MAX_CAPTURE_RATE_HZ  # the ring is sized for this capture rate (or the configured one if higher) ...
)
AUTO_RING_RATE_HZ = 96000  # ... or for this one when the device picks its own rate (audio.sample_rate_hz: null)
STALL_MARGIN_S = 15.0  # beyond the expected window period before the pipeline counts as stalled


class Service:
    def __init__(
        self,
        config_path: Path,
        input_file: Path | None = None,
        realtime: bool = True,
        loop: bool = False,
        stall_after: int | None = None,
        summary_period_s: float = DEFAULT_PERIOD_S,
    ):
        """`realtime`, `stall_after` and `summary_period_s` are seams for tests only (set by
        `custom.testing.faults`, never by a product CLI): replay as fast as possible, stop processing after that many
        windows to prove the watchdog stops (there is no real way to hang TFLite on demand), and a period shorter
        than the hour."""
        self.config_path = config_path
        self.input_file = input_file
        self.realtime = realtime
        self.loop = loop
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self.notifier = Notifier()
        self.health: Health | None = None
        self._next_health = 0.0
        self._next_watchdog = 0.0
        self._stall_limit_s = 0.0
        self._stall_after = stall_after
        self._summary_period_s = summary_period_s
        self.config: Config | None = None
        self.pipeline: Pipeline | None = None
        self.discovery = Discovery()
        self.spool: Spool | None = None
        self.publisher: Publisher | None = None
        self.source: AudioSource | None = None
        self.windower: Windower | None = None
        self.clock = ClockProbe()
        self.summary: HourlySummary | None = None
        self._mic_status: str | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    def start(self, config: Config) -> None:
        """Bundle first (the likeliest thing to be wrong), then spool and MQTT, then audio."""
        self.pipeline = build_pipeline(config)
        self._use_config(config, self.pipeline)
        self.health = Health()
        self.summary = HourlySummary(
            config.sensor_id, self.pipeline.context.location, self.pipeline.context.class_names, self._summary_period_s,
            grace_s=config.window.length_s + STALL_MARGIN_S,
        )  # fmt: skip
        self._start_transport(config)
        self._start_audio(config)

    def _use_config(self, config: Config, pipeline: Pipeline) -> None:
        """What follows from config + bundle outside the pipeline: stall limit, discovery's wanted entities."""
        self.config = config
        self._stall_limit_s = config.window.length_s + config.window.hop_s + STALL_MARGIN_S
        self.discovery.update(
            config.topics,
            pipeline.context.class_names,
            enabled=config.home_assistant.discovery,
            level_unit=pipeline.context.level_unit,
        )

    def _start_transport(self, config: Config) -> None:
        self.spool = Spool(config.spool.path, config.spool.max_rows, config.spool.max_bytes, config.spool.memory_rows)
        topics = config.topics
        self.publisher = Publisher(
            config.mqtt,
            topics,
            self.spool,
            on_state=self.discovery.on_connect,
            drain_per_s=config.spool.drain_per_s,
            subscriptions={topics.ha_status: self.discovery.on_ha_status} if config.home_assistant.discovery else None,
        )
        self.discovery.attach(self.publisher.publish)
        self.publisher.start()

    def _stop_transport(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
            self.discovery.attach(None)
            self.publisher = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def _start_audio(self, config: Config) -> None:
        seconds = RING_WINDOWS * max(config.window.length_s, config.window.hop_s)
        rate = config.audio.sample_rate_hz
        ring_rate = AUTO_RING_RATE_HZ if rate is None else max(RING_RATE_HZ, rate)
        ring = RingBuffer.for_duration(seconds, max_rate_hz=ring_rate)
        if self.input_file is not None:
            self.source = FileSource(
                self.input_file, ring, realtime=self.realtime, gain_db=config.audio.gain_db, loop=self.loop,
                backpressure=None if self.realtime else self._reader_behind,
            )  # fmt: skip
        else:
            self.source = MicCapture(
                ring,
                device=config.audio.device,
                sample_rate_hz=rate,
                channels=config.audio.channels,
                gain_db=config.audio.gain_db,
                block_s=config.audio.block_ms / 1000,
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
            log.info("stopped after %d windows", self.health.windows_done if self.health else 0)

    # ------------------------------------------------------------------------------------------------ main loop

    def install_signal_handlers(self) -> None:
        """Before `start`: a SIGHUP (`systemctl reload`) or SIGTERM that arrives while the bundle loads must set a
        flag, not take the default action (SIGHUP's kills the process)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def run(self) -> int:
        assert self.pipeline is not None and self.config is not None and self.windower is not None
        bundle, config = self.pipeline.bundle, self.config
        # READY as soon as config, bundle and spool are good: a missing microphone or broker is a state the sensor
        # waits out (and reports), not a failed start that systemd would retry in a loop.
        self.notifier.ready(f"running bundle {bundle.bundle_id}, waiting for the first window")
        log.info(
            "sensor %s running: bundle %s (%s, sha256 %s), %.0f s windows every %.0f s, publishing to %s:%d",
            config.sensor_id, bundle.bundle_id, bundle.backbone, bundle.sha256[:12],
            config.window.length_s, config.window.hop_s, config.mqtt.host, config.mqtt.port,
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
        """The per-window hot path: score the window into an event and spool it."""
        assert self.pipeline is not None and self.publisher is not None and self.health is not None
        if self._stall_after is not None and self.health.windows_done >= self._stall_after:
            log.warning("fault injection: pipeline stalled on purpose (custom.testing.faults)")
            self.stop_event.wait()
            return
        clock = self.clock.state()  # as near the window's start as we can ask: it was stamped moments ago
        scored = self.pipeline.score(window, clock=clock)
        event = scored.event
        self.publisher.publish_event(event)
        if self.summary is not None:
            labels = [label["name"] for label in event["labels"]]
            self._publish_summaries(self.summary.add(window.start_time, window.end_time, scored.levels, labels,
                                                     clock.synced))  # fmt: skip
        self.health.window_done(event["processing_ms"])
        log.debug("window %s: top %s %.2f, %.1f ms", event["window"]["start"], event["top"]["name"],
                  event["top"]["score"], event["processing_ms"])  # fmt: skip

    # ------------------------------------------------------------------------------------------------ upkeep

    def _housekeeping(self) -> None:
        now = time.monotonic()
        interval = self.notifier.watchdog_interval_s
        if interval is not None and now >= self._next_watchdog and self._pipeline_healthy(now):
            self.notifier.watchdog()
            self._next_watchdog = now + interval
        assert self.config is not None
        if self.summary is not None:
            self._publish_summaries(self.summary.due(time.time()))
        mic = self.source.state().status if self.source is not None else None
        if mic != self._mic_status:  # a dead microphone shows in `systemctl status` at once, not at the next health
            self._mic_status = mic
            self._next_health = 0.0
        if now >= self._next_health:
            self._next_health = now + self.config.health_interval_s
            health = self.health_report()
            if self.publisher is not None:
                self.publisher.publish_health(health)
            self.notifier.status(status_line(health))

    def _pipeline_healthy(self, now: float) -> bool:
        """Windows are completing on time, or the mic is down and being reopened (a restart would not help)."""
        assert self.health is not None
        if now - self.health.last_progress_mono <= self._stall_limit_s:
            return True
        return self.source is not None and self.source.state().waiting_for_device

    def _publish_summaries(self, summaries: Sequence[dict[str, Any] | None]) -> None:
        """Through the spool, like events: an hour's figures survive broker outages and restarts."""
        assert self.config is not None
        for summary in summaries:
            if summary is not None and self.spool is not None:
                self.spool.put(self.config.topics.summary, json.dumps(summary, separators=(",", ":")).encode())
                log.info("summary %s: LAeq %s %s over %.1f min%s", summary["period"]["start"],
                         summary["level"]["laeq"], summary["level"]["unit"], summary["minutes_covered"],
                         " (partial)" if summary["period"]["partial"] else "")  # fmt: skip

    def health_report(self) -> dict[str, Any]:
        assert self.pipeline is not None and self.windower is not None and self.health is not None
        bundle = self.pipeline.bundle
        assert self.config is not None
        return self.health.report(
            sensor_id=self.config.sensor_id,
            bundle={"id": bundle.bundle_id, "sha256": bundle.sha256},
            windows=self.windower.stats(),
            audio=mic_down_since(self.source.state().to_health(), time.time()) if self.source is not None else None,
            clock={**self.clock.state().to_event(), "source": self.clock.source},
            spool=self.spool.stats() if self.spool is not None else None,
            mqtt=self.publisher.stats() if self.publisher is not None else None,
        )

    # ------------------------------------------------------------------------------------------------ reload

    def reload(self) -> None:
        """SIGHUP: re-read config and bundle; anything bad keeps the running setup and is logged, never fatal.

        Discovery is updated before the transport restarts, so removals go out (and are flushed) on the connection
        that announced the entities, named with the old bundle's classes."""
        self.notifier.reloading()
        assert self.pipeline is not None and self.config is not None
        old = self.config
        try:
            config = load_config(self.config_path)
            pipeline = build_pipeline(config)
        except ConfigError as exc:
            log.error("reload refused, keeping bundle %s: %s", self.pipeline.bundle.bundle_id, exc)
            self.notifier.ready("reload refused; running the previous config")
            return
        setup_logging(config.log_level)
        self.pipeline = pipeline
        self._use_config(config, pipeline)
        if (config.mqtt, config.spool, config.topics, config.home_assistant) != (
            old.mqtt, old.spool, old.topics, old.home_assistant,
        ):  # fmt: skip
            self._stop_transport()
            self._start_transport(config)
        if (config.audio, config.window) != (old.audio, old.window):
            self._stop_audio()
            self._start_audio(config)
        log.info("reloaded %s: bundle %s (sha256 %s)", self.config_path, pipeline.bundle.bundle_id,
                 pipeline.bundle.sha256[:12])  # fmt: skip
        self.notifier.ready(f"reloaded; running bundle {pipeline.bundle.bundle_id}")


def run_service(
    config_path: Path,
    input_file: Path | None = None,
    realtime: bool = True,
    loop: bool = False,
    stall_after: int | None = None,
    summary_period_s: float = DEFAULT_PERIOD_S,
) -> int:
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
    service = Service(config_path, input_file, realtime, loop, stall_after, summary_period_s)
    service.install_signal_handlers()
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
