"""A fixed-size mono float32 ring of captured samples, with the map from sample index to UTC wall time.

Memory is allocated once: the ring holds a fixed number of seconds, so a consumer that falls behind loses the oldest
samples (the reader notices and skips) instead of making the process grow.

Concurrency model: exactly one writer (the PortAudio callback, or the file-replay thread) and one reader (the window
worker), no locks. The writer never blocks, which is the point: a lock the reader holds while copying would stall
the audio thread and cause overflows. Correctness rests on the GIL making each store of a Python int attribute atomic
and sequentially consistent, and on this order:

1. the writer publishes ``_reserved`` (the sample count it is about to reach) *before* copying the block,
2. copies the samples into the ring,
3. publishes ``_written`` *after* the copy.

A reader only reads samples below ``_written`` (all fully copied), and after copying it re-reads ``_reserved``: if
the writer may have started to overwrite any sample of the range meanwhile (``start < _reserved - capacity``), the copy
is thrown away and ``read`` returns None. That is a seqlock with the sample count as the sequence number. (A
free-threaded Python build would need explicit memory ordering; CPython with the GIL does not.)

Anchors give each sample its wall time. An anchor says "sample ``sample`` was captured at ``unix_time``, and the
samples after it follow at ``rate_hz``". Only the writer adds anchors, and it replaces the whole (immutable) tuple in
one store, so a reader always sees a consistent snapshot. The writer may also ``correct`` the newest anchor's time
(a better estimate of when its segment started). An anchor with ``gap=True`` starts a new segment: the
samples before it and after it are not continuous in time (stream reopened, overflow, file start), so no window may
straddle it. An anchor with ``gap=False`` only re-synchronises the clock (the sound card's crystal running slow against
the wall clock, an NTP step) and windows may straddle it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DEFAULT_MAX_ANCHORS = 256

USUAL_MAX_CAPTURE_RATE_HZ = 48000  # what USB and I2S microphones open at by default: rings are sized for it


class Anchor(NamedTuple):
    """Sample ``sample`` was captured at ``unix_time`` (seconds, UTC); the following samples come at ``rate_hz``."""

    sample: int
    unix_time: float
    rate_hz: float
    gap: bool


class RingBuffer:
    """Single-producer/single-consumer ring of mono float32 samples with a monotonically increasing sample counter."""

    def __init__(self, capacity_samples: int, max_anchors: int = DEFAULT_MAX_ANCHORS) -> None:
        if capacity_samples <= 0:
            raise ValueError(f"capacity must be positive, got {capacity_samples}")
        if max_anchors < 2:
            raise ValueError("at least two anchors must be kept (the segment start and one correction)")
        self.capacity = int(capacity_samples)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._reserved = 0  # the writer may be touching samples below this
        self._written = 0  # every sample below this is in the ring
        self._anchors: tuple[Anchor, ...] = ()
        self._max_anchors = max_anchors
        self._closed = False

    @classmethod
    def for_duration(cls, seconds: float, max_rate_hz: float = USUAL_MAX_CAPTURE_RATE_HZ) -> RingBuffer:
        """A ring holding ``seconds`` of audio at the highest rate capture may use (the rate can change on reopen)."""
        return cls(int(np.ceil(seconds * max_rate_hz)))

    # ---- writer side (one thread only) -------------------------------------------------------------------------------

    def write(self, block: np.ndarray, gain: float = 1.0) -> None:
        """Append a block (frames, or frames x channels, float32); channels are averaged to mono.

        Safe to call from the PortAudio callback: it copies/averages straight into the ring slices with ``out=`` and
        scales in place, so no buffer is allocated (only the small array views Python cannot avoid).
        """
        n = block.shape[0]
        w = self._written
        if n > self.capacity:  # only the newest `capacity` samples can survive anyway
            skip = n - self.capacity
            block = block[skip:]
            w += skip
            n = self.capacity
        self._reserved = w + n
        pos = w % self.capacity
        first = min(n, self.capacity - pos)
        _copy_mono(block[:first], self._buf[pos : pos + first], gain)
        if first < n:
            _copy_mono(block[first:], self._buf[: n - first], gain)
        self._written = w + n

    def mark(self, unix_time: float, rate_hz: float, gap: bool, sample: int | None = None) -> None:
        """Anchor ``sample`` (default: the next sample to be written) to a wall time; see the module docstring."""
        anchor = Anchor(self._written if sample is None else int(sample), float(unix_time), float(rate_hz), bool(gap))
        anchors = self._anchors
        if len(anchors) >= self._max_anchors:
            anchors = anchors[len(anchors) - self._max_anchors + 1 :]
        self._anchors = (*anchors, anchor)

    def correct(self, unix_time: float) -> None:
        """Move the newest anchor to a better estimate of its time (same sample, rate and gap flag).

        Used when a block proves capture started earlier than first thought: correcting the anchor in place, instead
        of adding a new one, shifts the whole segment's line at once, so windows stay exactly ``hop`` apart.
        """
        anchors = self._anchors
        if not anchors:
            raise LookupError("no anchor to correct")
        self._anchors = (*anchors[:-1], anchors[-1]._replace(unix_time=float(unix_time)))

    def close(self) -> None:
        """No more samples will come (end of a replayed file); readers drain what is left and stop."""
        self._closed = True

    # ---- reader side -------------------------------------------------------------------------------------------------

    @property
    def written(self) -> int:
        """Total samples ever written (not wrapped): the index the next sample will get."""
        return self._written

    @property
    def oldest(self) -> int:
        """Index of the oldest sample still safe to read right now."""
        return max(0, self._reserved - self.capacity)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def anchors(self) -> tuple[Anchor, ...]:
        """Immutable snapshot, oldest first."""
        return self._anchors

    def read(self, start_sample: int, n: int) -> np.ndarray | None:
        """Copy samples [start, start+n); None if any of them was (or is being) overwritten."""
        if n < 0 or start_sample < 0:
            raise ValueError("start and n must be non-negative")
        if start_sample + n > self._written:
            raise ValueError(f"samples up to {start_sample + n} requested, only {self._written} written")
        if start_sample < self._reserved - self.capacity:
            return None
        out = np.empty(n, dtype=np.float32)
        pos = start_sample % self.capacity
        first = min(n, self.capacity - pos)
        out[:first] = self._buf[pos : pos + first]
        if first < n:
            out[first:] = self._buf[: n - first]
        if start_sample < self._reserved - self.capacity:  # the writer lapped us while we copied
            return None
        return out

    def anchor_for(self, sample_index: int, anchors: tuple[Anchor, ...] | None = None) -> Anchor:
        """The anchor in force at ``sample_index`` (the oldest kept one if the index predates them all)."""
        anchors = self._anchors if anchors is None else anchors
        if not anchors:
            raise LookupError("no anchor yet: nothing has been captured")
        for anchor in reversed(anchors):
            if anchor.sample <= sample_index:
                return anchor
        return anchors[0]

    def time_of(self, sample_index: int, anchors: tuple[Anchor, ...] | None = None) -> float:
        """UTC wall time (unix seconds) at which ``sample_index`` was captured: anchor time + samples / rate.

        Computed from the sample count, not from when a callback happened to run, so it has no jitter and does not
        accumulate error over a window; the anchors absorb the sound card's drift.
        """
        anchor = self.anchor_for(sample_index, anchors)
        return anchor.unix_time + (sample_index - anchor.sample) / anchor.rate_hz


def _copy_mono(src: np.ndarray, dst: np.ndarray, gain: float) -> None:
    """src (frames or frames x channels) -> dst (frames,), scaled, without allocating a buffer."""
    if src.ndim == 1:
        np.copyto(dst, src, casting="same_kind")
        scale = gain
    else:
        # Channel by channel rather than np.mean(axis=1, out=dst): the reduction allocates a 64 KiB ufunc buffer.
        np.copyto(dst, src[:, 0], casting="same_kind")
        for channel in range(1, src.shape[1]):
            np.add(dst, src[:, channel], out=dst)
        scale = gain / src.shape[1]
    if scale != 1.0:
        np.multiply(dst, np.float32(scale), out=dst)
