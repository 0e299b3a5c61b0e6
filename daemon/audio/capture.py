"""Audio sources that fill a RingBuffer: a live PortAudio microphone (MicCapture) or a replayed file (FileSource).

Both write mono float32 plus wall-clock anchors into the same ring, so everything downstream (windows, front end,
model, events) is identical for a demo replay and for the real microphone.

PortAudio facts this module is built on (checked against a PulseAudio virtual mic through ALSA's ``default``):

* A stream whose device disappears calls its finished callback and turns ``active`` False; nothing is raised.
* PortAudio enumerates devices once, at initialisation. A process that started while the sound server / USB mic was
  absent sees no devices until PortAudio is terminated and initialised again (and ALSA reloads its configuration,
  which is when the ``pulse`` plugin becomes ``default``). So every (re)open first re-scans (``rescan_devices``) — safe
  because this class owns the process's only stream and the supervisor thread makes every PortAudio call.
* ``time_info.inputBufferAdcTime`` is not trustworthy through the ALSA pulse plugin (it was 0.3 s off for some block
  sizes), so a block's wall time is estimated as "callback time - block duration": an upper bound on when its first
  sample was captured. The anchor keeps the lowest such bound (see ``_ClockTracker``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from custom.wire.backoff import Backoff

from .devices import PREFERRED_RATE_HZ, rescan_devices, supports_rate
from .pcm import to_mono_float32
from .ringbuffer import RingBuffer
from .source import SourceState, SourceStatus

log = logging.getLogger(__name__)

DEFAULT_BLOCK_S = 0.1  # callback period: short enough for a small ring, long enough for a Pi's Python
STALL_TIMEOUT_S = 2.0  # no samples for this long on an open stream = the device is gone
OPEN_TIMEOUT_S = 3.0  # a freshly opened stream may take this long to deliver its first block (pulse: up to ~1.5 s)
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 2.0  # capped low: reopening a missing device is cheap, and capture must resume within 5 s
SUPERVISE_PERIOD_S = 0.2
EARLY_TOLERANCE_S = 0.002  # a block that proves the anchor late by more than this moves the anchor earlier
LATE_TOLERANCE_S = 0.25  # the sample clock lags the wall clock by more than this: re-anchor (drift, NTP step)
LOST_SAMPLES_S = 1.0  # ... by more than this: samples were lost without an overflow flag, treat as a gap
CONFIRM_S = 1.0  # lateness must last this long (in audio) before it counts: a stall followed by a burst does not


def db_to_gain(gain_db: float) -> float:
    return float(10.0 ** (gain_db / 20.0))


class _ClockTracker:
    """Turns "this block arrived now" into anchors on the ring, from the callback thread.

    Keeps the segment's anchor at the lower envelope of (callback time - samples since the anchor / rate): each block
    only tells us its samples were captured *no later* than that, and scheduling only ever makes a callback late. A
    new lowest bound corrects the anchor in place (the first block of a stream is often late by tens of ms; a sample
    clock running fast keeps nudging it), so spacing within a segment stays exactly the hop.

    Lateness is acted on only when it persists for ``CONFIRM_S`` of audio: a stalled process (GIL, swap) delivers
    late blocks followed by a burst that proves nothing was lost, while a slow crystal, an NTP step or silently lost
    samples keep every block late. Then the clock re-anchors at the smallest lag seen, with gap=False, or as a gap if
    that lag means samples were lost. An overflow flag is a gap at once. One small tuple per anchor change, never per
    block.
    """

    def __init__(self, ring: RingBuffer, rate_hz: float) -> None:
        self.ring = ring
        self.rate_hz = rate_hz
        self.new_segment = True  # next block starts a segment (stream (re)opened)
        self.corrections = 0
        self.resyncs = 0
        self.gaps = 0  # segments this stream started: its first block, overflows, silent losses
        self._late_from: int | None = None  # first sample of the current run of late blocks
        self._late_min_s = 0.0

    def before_write(self, frames: int, now: float, overflow: bool) -> None:
        sample = self.ring.written
        estimate = now - frames / self.rate_hz  # upper bound on the wall time of `sample`
        if self.new_segment or overflow:
            self.ring.mark(estimate, self.rate_hz, gap=True)
            self.new_segment = False
            self.gaps += 1
            self._late_from = None
            return
        lag = estimate - self.ring.time_of(sample)
        if lag <= LATE_TOLERANCE_S:
            self._late_from = None
            if lag < -EARLY_TOLERANCE_S:
                self.ring.correct(self.ring.anchors[-1].unix_time + lag)
                self.corrections += 1
            return
        if self._late_from is None:
            self._late_from, self._late_min_s = sample, lag
            return
        self._late_min_s = min(self._late_min_s, lag)
        if sample - self._late_from < CONFIRM_S * self.rate_hz:
            return
        gap = self._late_min_s > LOST_SAMPLES_S
        self.ring.mark(self.ring.time_of(sample) + self._late_min_s, self.rate_hz, gap=gap)
        if gap:
            self.gaps += 1
        else:
            self.resyncs += 1
        self._late_from = None


class MicCapture:
    """Live capture from a PortAudio input device into a ring, kept alive by a supervisor thread.

    The callback only averages/copies into the ring (plus the gain, applied in place: no allocation) and records
    counters. Everything that can fail or block — opening, closing, re-scanning, logging — runs in the supervisor.
    A lost device is logged once, shown by ``state()``, and reopened with capped, jittered backoff; nothing is raised
    to the caller, because a sensor must keep running until the microphone comes back.
    """

    def __init__(
        self,
        ring: RingBuffer,
        *,
        device: int | str | None = None,
        sample_rate_hz: float | None = None,
        channels: int = 1,
        gain_db: float = 0.0,
        block_size: int | None = None,
        block_s: float = DEFAULT_BLOCK_S,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        rescan: bool = True,
    ) -> None:
        """``sample_rate_hz`` None: the device's own default rate (full band, e.g. 48 kHz on USB mics); a number
        insists on it, falling back to the default rate (one warning) if the device refuses it. ``block_size`` None:
        ``block_s`` worth of frames at the rate picked; 0 lets PortAudio choose (variable blocks)."""
        self.ring = ring
        self.device = device
        self.requested_rate_hz = sample_rate_hz
        self.channels = channels
        self.gain = db_to_gain(gain_db)
        self.block_size = block_size
        self.block_s = block_s
        self.stall_timeout_s = stall_timeout_s
        self.backoff_max_s = backoff_max_s
        self.rescan = rescan
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._clock: _ClockTracker | None = None
        # Written by the callback (plain attribute stores, atomic under the GIL), read by the supervisor/state().
        self._last_block_mono = 0.0
        self._blocks = 0
        self._overflows = 0
        self._status_flags = 0
        self._finished = False
        # Owned by the supervisor.
        self._mic: SourceStatus = "stopped"
        self._device_name: str | None = None
        self._rate_hz: float | None = None
        self._reopens = 0
        self._opens = 0
        self._last_error: str | None = None
        self._down_since_mono: float | None = None
        self._failures = 0  # consecutive failed opens/streams, for the log only
        self._segments_before = 0  # segments started by streams already closed
        self._refused_rate_logged = False

    # ---- public -----------------------------------------------------------------------------------------------------

    @property
    def rate_hz(self) -> float | None:
        """Rate of the current stream (None until one opened)."""
        return self._rate_hz

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("capture already started")
        self._stop.clear()
        self._mic = "opening"
        self._thread = threading.Thread(target=self._supervise, name="mic-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and close the stream; returns within ``timeout`` even if PortAudio hangs (the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("microphone supervisor did not stop within %.1f s", timeout)
            self._thread = None
        self._mic = "stopped"

    def state(self) -> SourceState:
        """Health snapshot, safe from any thread."""
        clock = self._clock
        return SourceState(
            source="mic",
            status=self._mic,
            device=self._device_name,
            rate_hz=self._rate_hz,
            channels=self.channels,
            overflows=self._overflows,
            gaps=max(0, self._segments_before + (clock.gaps if clock else 0) - 1),
            reopens=self._reopens,
            last_error=self._last_error,
            samples=self.ring.written,
            down_for_s=None if self._down_since_mono is None else round(time.monotonic() - self._down_since_mono, 1),
        )

    # ---- callback (PortAudio thread) ---------------------------------------------------------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = time.time()
        overflow = bool(status.input_overflow)
        if overflow:
            self._overflows += 1
        if status:
            self._status_flags += 1
        clock = self._clock
        if clock is not None:
            clock.before_write(frames, now, overflow)
        self.ring.write(indata, self.gain)
        self._blocks += 1
        self._last_block_mono = time.monotonic()

    def _finished_callback(self) -> None:
        self._finished = True

    # ---- supervisor thread -------------------------------------------------------------------------------------------

    def _supervise(self) -> None:
        backoff = Backoff(BACKOFF_INITIAL_S, self.backoff_max_s)
        while not self._stop.is_set():
            try:
                self._open()
            except Exception as exc:
                self._set_down(f"open failed: {exc}")
                backoff.wait(self._stop)
                continue
            reason = self._watch()
            if reason is None:  # stopped
                break
            if self._blocks:  # it worked for a while: retry quickly; a stream that never delivered backs off further
                backoff.reset()
            self._close()
            self._set_down(reason)
            if backoff.wait(self._stop):
                break
        self._close()

    def _open(self) -> None:
        import sounddevice as sd

        if self.rescan:
            rescan_devices()
        info = sd.query_devices(self.device, kind="input")
        rate = self._pick_rate(info)
        block = round(rate * self.block_s) if self.block_size is None else self.block_size
        clock = _ClockTracker(self.ring, rate)
        if self._clock is not None:
            self._segments_before += self._clock.gaps
        self._clock = clock
        self._finished = False
        self._blocks = 0
        self._last_block_mono = time.monotonic()
        stream = sd.InputStream(
            device=self.device,
            samplerate=rate,
            channels=self.channels,
            dtype="float32",
            blocksize=block,
            callback=self._callback,
            finished_callback=self._finished_callback,
        )
        try:
            stream.start()
        except Exception:
            stream.close(ignore_errors=True)
            raise
        self._stream = stream
        self._device_name = info["name"]
        self._rate_hz = rate
        if self._opens:
            self._reopens += 1
        self._opens += 1

    def _pick_rate(self, info: dict[str, Any]) -> float:
        default = float(info["default_samplerate"])
        requested = self.requested_rate_hz
        if requested is None or supports_rate(self.device, requested, self.channels):
            return default if requested is None else float(requested)
        if not self._refused_rate_logged:  # once per process, not per reopen
            self._refused_rate_logged = True
            log.warning(
                "audio.sample_rate_hz: %s does not take %g Hz; capturing at its default %g Hz instead",
                info["name"], requested, default,
            )  # fmt: skip
        return default

    def _watch(self) -> str | None:
        """Wait while the stream is healthy; return why it is not (None when asked to stop)."""
        while not self._stop.wait(SUPERVISE_PERIOD_S):
            stream = self._stream
            if self._blocks and self._mic != "up":
                self._set_up()
            if self._finished or not stream.active:
                return "stream ended (device lost?)"
            silent_for = time.monotonic() - self._last_block_mono
            limit = self.stall_timeout_s if self._blocks else max(self.stall_timeout_s, OPEN_TIMEOUT_S)
            if silent_for > limit:
                waited = "since opening" if not self._blocks else "for"
                return f"no audio {waited} {silent_for:.1f} s"
        return None

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.close(ignore_errors=True)
        except Exception as exc:  # a dead ALSA handle can still complain; the stream is gone either way
            log.debug("closing input stream: %s", exc)

    def _set_up(self) -> None:
        """Logged once per transition: a sensor left without its mic for a day must not fill the journal."""
        down_for = None if self._down_since_mono is None else time.monotonic() - self._down_since_mono
        self._mic = "up"
        self._down_since_mono = None
        self._failures = 0
        after = "" if down_for is None else f" after {down_for:.1f} s down"
        log.info(
            "microphone up%s: %s at %.0f Hz, %d channel(s), gain %.2f",
            after,
            self._device_name,
            self._rate_hz or 0,
            self.channels,
            self.gain,
        )

    def _set_down(self, reason: str) -> None:
        """State "down" from the first failure until audio flows again (retries do not flip it to "opening")."""
        self._failures += 1
        if self._mic != "down":
            self._down_since_mono = time.monotonic()
            log.warning("microphone down: %s; retrying with backoff", reason)
        elif reason != self._last_error:
            log.info("microphone still down (attempt %d): %s", self._failures, reason)
        else:
            log.debug("microphone still down (attempt %d): %s", self._failures, reason)
        self._mic = "down"
        self._last_error = reason


class FileSource:
    """Replays an audio file through a ring, as if it were the microphone (demos, machines without one).

    Decodes and resamples in blocks (soundfile + a streaming soxr resampler), so an hour-long recording needs no more
    memory than a live capture. ``realtime=True`` paces blocks at the audio's own rate against ``time.monotonic``;
    ``realtime=False`` writes as fast as the ring's reader allows (tests). The anchor is the wall time at start (or
    ``start_time``), so replayed windows get timestamps as if the sound were happening now.
    """

    def __init__(
        self,
        path: str | Path,
        ring: RingBuffer,
        *,
        realtime: bool = True,
        rate_hz: float = PREFERRED_RATE_HZ,
        block_size: int | None = None,
        gain_db: float = 0.0,
        start_time: float | None = None,
        loop: bool = False,
        backpressure: Callable[[int], bool] | None = None,
    ) -> None:
        """``backpressure(written)`` (only used when not realtime) returns True while the writer must wait, so a fast
        replay never laps its reader, e.g. ``lambda w: w - (windower.next_sample or 0) > ring.capacity - block``."""
        import soundfile as sf

        self.path = Path(path)
        with sf.SoundFile(str(self.path)) as f:  # fail fast (missing/undecodable file) in the caller's thread
            self.file_rate_hz = float(f.samplerate)
            self.file_channels = f.channels
        self.ring = ring
        self.realtime = realtime
        self.rate_hz = float(rate_hz)
        self.block_size = round(self.rate_hz * DEFAULT_BLOCK_S) if block_size is None else block_size
        self.gain = db_to_gain(gain_db)
        self.start_time = start_time
        self.loop = loop
        self.backpressure = backpressure
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._blocks = 0

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("file source already started")
        self._thread = threading.Thread(target=self._run, name="file-source", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait(self, timeout: float | None = None) -> bool:
        """True once the whole file has been written (and the ring closed)."""
        return self.done.wait(timeout)

    def state(self) -> SourceState:
        return SourceState(
            source="file",
            status="file" if not self.done.is_set() else "ended",
            device=str(self.path),
            rate_hz=self.rate_hz,
            channels=self.file_channels,
            last_error=self._error,
            samples=self.ring.written,
        )

    def _run(self) -> None:
        try:
            start = time.time() if self.start_time is None else self.start_time
            self.ring.mark(start, self.rate_hz, gap=True)
            t0 = time.monotonic()
            sent = 0
            while not self._stop.is_set():
                for block in self._blocks_of_file():
                    if self._stop.is_set():
                        break
                    self._wait_turn(t0, sent)
                    self.ring.write(block, self.gain)
                    sent += len(block)
                    self._blocks += 1
                if not self.loop:
                    break
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            log.error("replaying %s failed: %s", self.path, self._error)
        finally:
            self.ring.close()
            self.done.set()

    def _wait_turn(self, t0: float, sent: int) -> None:
        if self.realtime:
            due = t0 + sent / self.rate_hz
            delay = due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
        elif self.backpressure is not None:
            while self.backpressure(self.ring.written) and not self._stop.wait(0.001):
                pass

    def _blocks_of_file(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks of exactly ``block_size`` at ``rate_hz`` (the last may be shorter)."""
        import soundfile as sf

        resampler = None
        if self.file_rate_hz != self.rate_hz:
            import soxr

            resampler = soxr.ResampleStream(self.file_rate_hz, self.rate_hz, 1, dtype="float32", quality="HQ")
        pending = np.zeros(0, dtype=np.float32)
        read_frames = max(1024, round(self.block_size * self.file_rate_hz / self.rate_hz))
        with sf.SoundFile(str(self.path)) as f:
            while True:
                raw = f.read(read_frames, dtype="float32", always_2d=True)
                last = len(raw) < read_frames
                mono = to_mono_float32(raw)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                pending = np.concatenate([pending, mono]) if len(pending) else mono
                while len(pending) >= self.block_size:
                    yield pending[: self.block_size]
                    pending = pending[self.block_size :]
                if last:
                    break
        if len(pending):
            yield pending
