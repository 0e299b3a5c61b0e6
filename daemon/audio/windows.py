"""Cut the ring's sample stream into fixed windows (e.g. 10 s, hop configurable) stamped with exact UTC times.

Windows lie on a grid anchored at the start of each continuous segment: starts at ``segment_start + k * hop``. The
grid depends only on sample indices, never on how the audio arrived, so the same audio gives the same windows
whatever the capture block size (the openWakeWord-style invariance test checks exactly this).

Two ways a window is lost, both counted and never silent:

* ``skipped_behind``: the consumer (front end + model) fell behind and the ring overwrote the window's samples.
  We then jump to the newest complete window on the grid, because for a live sensor a fresh answer beats a stale
  one, and the ring (a fixed number of seconds) keeps memory bounded.
* ``dropped_at_gap``: the window would straddle a gap (an anchor with ``gap=True``: the stream was reopened or
  overflowed). Mixing audio from before and after a gap would give a window whose length in time is not its
  length in samples, so the partial window is dropped and a fresh grid starts at the first sample after the gap.
  The gap then shows in the window timestamps: the next window starts later than the previous one ended + hop.

A trailing partial window at the end of a replayed file is dropped too (``exhausted`` turns True); only
``recording_windows`` (offline classification of a whole recording) hands it out, padded later by the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .ringbuffer import Anchor, RingBuffer

# Upper bound on one poll wait: the worker notices stop/close this fast. Polling (rather than a condition variable)
# keeps every lock out of the audio callback.
_MAX_POLL_S = 0.1
_MIN_POLL_S = 0.005


@dataclass(frozen=True)
class Window:
    """One analysis window: mono float32 at the capture rate, and when it was heard."""

    samples: np.ndarray
    rate_hz: float
    start_time: float  # unix seconds, UTC, of the first sample
    end_time: float  # unix seconds, UTC, just after the last sample
    index: int  # 0, 1, 2 ... in the order windows are handed out (skipped windows leave no hole here)
    start_sample: int  # index of the first sample in the ring's counter

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate_hz


class Windower:
    """Hands out successive windows from a ring; call ``next_window`` from one consumer thread."""

    def __init__(self, ring: RingBuffer, rate_hz: float | None, length_s: float, hop_s: float | None = None) -> None:
        """``rate_hz`` None follows the capture rate recorded in the anchors (it may change when a device is reopened);
        a number insists on that rate and drops segments captured at any other (counted in ``dropped_rate``)."""
        hop_s = length_s if hop_s is None else hop_s
        if length_s <= 0 or hop_s <= 0:
            raise ValueError("window length and hop must be positive")
        self.ring = ring
        self.rate_hz = rate_hz
        self.length_s = float(length_s)
        self.hop_s = float(hop_s)
        if rate_hz is not None and round(length_s * rate_hz) > ring.capacity:
            raise ValueError(f"a {length_s} s window at {rate_hz} Hz does not fit a ring of {ring.capacity} samples")
        self._next: int | None = None  # first sample of the next window; None until the first anchor appears
        self._index = 0
        self.skipped_behind = 0
        self.dropped_at_gap = 0
        self.dropped_rate = 0
        self._exhausted = False

    @property
    def exhausted(self) -> bool:
        """The ring is closed and no complete window is left: the input has ended."""
        return self._exhausted

    @property
    def next_sample(self) -> int | None:
        """Ring index where the next window starts (None before the first anchor); a non-real-time writer can hold
        back until this is within reach, so that a fast replay loses nothing (see FileSource ``backpressure``)."""
        return self._next

    def stats(self) -> dict[str, int]:
        return {
            "windows": self._index,
            "skipped_behind": self.skipped_behind,
            "dropped_at_gap": self.dropped_at_gap,
            "dropped_rate": self.dropped_rate,
        }

    def next_window(self, stop_event: threading.Event, timeout: float | None = None) -> Window | None:
        """The next complete window, or None on stop, timeout, or end of input (see ``exhausted``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop_event.is_set():
            closed = self.ring.closed  # read before `written`: once closed, no sample can follow what we see
            wait_s = self._try_window()
            if isinstance(wait_s, Window):
                return wait_s
            if closed:
                self._exhausted = True
                return None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                wait_s = min(wait_s, remaining)
            stop_event.wait(wait_s)
        return None

    def _try_window(self) -> Window | float:
        """A window if one is complete, else how long to wait before looking again."""
        while True:
            anchors = self.ring.anchors
            written = self.ring.written
            if not anchors:
                return _MAX_POLL_S
            if self._next is None or self._next < anchors[0].sample:
                self._next = anchors[0].sample  # first window, or our position fell out of the kept anchors
            segment, following = _segment(anchors, self._next)
            length = round(self.length_s * segment.rate_hz)
            hop = max(1, round(self.hop_s * segment.rate_hz))
            if self.rate_hz is not None and segment.rate_hz != self.rate_hz:
                if following is None:
                    return _MAX_POLL_S
                self.dropped_rate += 1
                self._next = following.sample
                continue
            if length > self.ring.capacity:
                raise ValueError(f"a {self.length_s} s window at {segment.rate_hz} Hz does not fit the ring")
            end = self._next + length
            if following is not None and end > following.sample:
                self.dropped_at_gap += 1
                self._next = following.sample
                continue
            if end > written:
                missing_s = (end - written) / segment.rate_hz
                return min(max(missing_s, _MIN_POLL_S), _MAX_POLL_S)
            if self._next < self.ring.oldest:
                self._catch_up(self._next, segment, following, written, length, hop)
                continue
            samples = self.ring.read(self._next, length)
            if samples is None:  # overwritten while we copied: we are far behind
                self._catch_up(self._next, segment, following, self.ring.written, length, hop)
                continue
            window = Window(
                samples=samples,
                rate_hz=segment.rate_hz,
                start_time=self.ring.time_of(self._next, anchors),
                end_time=self.ring.time_of(end, anchors),
                index=self._index,
                start_sample=self._next,
            )
            self._index += 1
            self._next += hop
            return window

    def _catch_up(
        self, position: int, segment: Anchor, following: Anchor | None, written: int, length: int, hop: int
    ) -> None:
        """Jump to the newest complete window on this segment's grid; count the ones passed over."""
        limit = written if following is None else min(written, following.sample)
        newest = segment.sample + max(0, (limit - length - segment.sample) // hop) * hop
        if newest < self.ring.oldest:  # no complete window of this segment survives: move on to the next one
            if following is not None:
                self.skipped_behind += max(1, (following.sample - position) // hop)
                self._next = following.sample
                return
            newest = position + max(1, -(-(self.ring.oldest - position) // hop)) * hop
        self.skipped_behind += max(1, (newest - position) // hop)
        self._next = newest


def _segment(anchors: tuple[Anchor, ...], sample: int) -> tuple[Anchor, Anchor | None]:
    """The gap anchor that starts the segment holding ``sample`` (rate from the newest anchor at or before it), and
    the next gap anchor after ``sample`` if there is one."""
    start = anchors[0]
    rate_anchor = anchors[0]
    following = None
    for anchor in anchors:
        if anchor.sample <= sample:
            rate_anchor = anchor
            if anchor.gap:
                start = anchor
        elif anchor.gap:
            following = anchor
            break
    if rate_anchor.rate_hz != start.rate_hz:
        start = start._replace(rate_hz=rate_anchor.rate_hz)
    return start, following


def recording_windows(
    samples: np.ndarray, rate_hz: float, length_s: float, start_time: float, min_tail_s: float
) -> Iterator[Window]:
    """Windows of a whole recording (mono float32), cut by the live ``Windower`` on a ring fed one window at a time,
    plus the short tail if it holds at least ``min_tail_s`` (a recording shorter than one window is its own tail)."""
    length = round(length_s * rate_hz)
    ring = RingBuffer(max(2 * length, 1))
    ring.mark(start_time, rate_hz, gap=True)
    windower = Windower(ring, rate_hz, length_s)
    never = threading.Event()
    for offset in range(0, len(samples), length):
        ring.write(samples[offset : offset + length])
        if offset + length >= len(samples):
            ring.close()
        while (window := windower.next_window(never, timeout=0)) is not None:
            yield window
    start = windower.next_sample or 0
    tail = ring.written - start
    if (
        tail > 0
        and (tail >= min_tail_s * rate_hz or windower.stats()["windows"] == 0)
        and (tail_samples := ring.read(start, tail)) is not None
    ):
        yield Window(
            samples=tail_samples,
            rate_hz=rate_hz,
            start_time=ring.time_of(start),
            end_time=ring.time_of(ring.written),
            index=windower.stats()["windows"],
            start_sample=start,
        )
