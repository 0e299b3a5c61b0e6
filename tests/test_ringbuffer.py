"""Ring buffer, anchors and windowing: exact contents, exact timestamps, bounded memory, block-size invariance."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custom.daemon.audio.capture import _ClockTracker
from custom.daemon.audio.ringbuffer import RingBuffer
from custom.daemon.audio.windows import Windower

RATE = 16000
T0 = 1_750_000_000.25  # a fixed wall time: timestamps must come out exactly from it


def ramp(start: int, n: int) -> np.ndarray:
    """Samples whose value is their own index: any misplaced sample is visible (exact in float32 below 2**24)."""
    return np.arange(start, start + n, dtype=np.float32)


def feed(ring: RingBuffer, signal: np.ndarray, sizes: list[int]) -> None:
    """Write ``signal`` in blocks of the given sizes (cycled), as a capture callback would."""
    pos, i = 0, 0
    while pos < len(signal):
        n = sizes[i % len(sizes)]
        ring.write(signal[pos : pos + n])
        pos += n
        i += 1


def drain(windower: Windower) -> list:
    stop = threading.Event()
    out = []
    while (w := windower.next_window(stop, timeout=1.0)) is not None:
        out.append(w)
    assert windower.exhausted, "a closed ring must end the window stream, not time out"
    return out


# ---- ring -----------------------------------------------------------------------------------------------------------


def test_wraparound_keeps_the_newest_samples_in_order() -> None:
    ring = RingBuffer(10)
    feed(ring, ramp(0, 23), [3])
    assert ring.written == 23
    np.testing.assert_array_equal(ring.read(13, 10), ramp(13, 10))
    np.testing.assert_array_equal(ring.read(20, 3), ramp(20, 3))


def test_overwritten_samples_read_as_none_and_future_ones_are_refused() -> None:
    ring = RingBuffer(10)
    feed(ring, ramp(0, 25), [4])
    assert ring.read(14, 5) is None  # sample 14 was overwritten by sample 24
    assert ring.read(15, 10) is not None
    with pytest.raises(ValueError):
        ring.read(20, 6)


def test_block_larger_than_the_ring_keeps_its_tail() -> None:
    ring = RingBuffer(8)
    ring.write(ramp(0, 20))
    assert ring.written == 20
    np.testing.assert_array_equal(ring.read(12, 8), ramp(12, 8))


def test_channels_are_averaged_and_gain_applied_in_place() -> None:
    ring = RingBuffer(16)
    stereo = np.stack([np.full(6, 0.2, np.float32), np.full(6, 0.4, np.float32)], axis=1)
    ring.write(stereo, gain=2.0)
    np.testing.assert_allclose(ring.read(0, 6), np.full(6, 0.6), rtol=1e-6)


def test_write_allocates_no_buffer() -> None:
    """The callback path must not allocate sample buffers (a 2-channel block of 4096 frames is 32 KiB)."""
    ring = RingBuffer(RATE)
    block = np.random.default_rng(0).standard_normal((4096, 2)).astype(np.float32)
    ring.write(block, gain=0.5)  # warm-up: first-call caches
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for _ in range(8):  # wraps around the ring at least once
            ring.write(block, gain=0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4096, f"write() allocated {peak} bytes"


def test_concurrent_reader_never_sees_torn_data() -> None:
    """A fast writer laps a small ring while a reader copies: every read is exact or None, never a mix."""
    ring = RingBuffer(1000)
    total = 2_000_000  # stays below 2**24, so float32 holds every index exactly
    done = threading.Event()

    def writer() -> None:
        pos = 0
        while pos < total:
            ring.write(ramp(pos, 97))
            pos += 97
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    good = lapped = 0
    while not done.is_set():
        end = ring.written
        start = max(0, end - 990)
        got = ring.read(start, end - start)
        if got is None:
            lapped += 1
            continue
        np.testing.assert_array_equal(got, ramp(start, end - start))
        good += 1
    thread.join(10)
    assert good > 0, f"no read completed ({lapped} lapped)"


# ---- anchors and the clock ------------------------------------------------------------------------------------------


def test_time_of_is_exact_from_the_anchor() -> None:
    ring = RingBuffer(RATE)
    ring.mark(T0, RATE, gap=True)
    ring.write(np.zeros(RATE // 2, np.float32))
    ring.mark(T0 + 100.0, 48000, gap=True)  # a reopen at another rate
    assert ring.time_of(0) == T0
    assert ring.time_of(RATE // 4) == T0 + 0.25
    assert ring.time_of(RATE // 2) == T0 + 100.0
    assert ring.time_of(RATE // 2 + 4800) == T0 + 100.1


def test_anchor_history_is_bounded() -> None:
    ring = RingBuffer(RATE, max_anchors=4)
    for i in range(50):
        ring.mark(T0 + i, RATE, gap=False)
        ring.write(np.zeros(10, np.float32))
    assert len(ring.anchors) == 4
    assert ring.anchors[-1].unix_time == T0 + 49


def test_clock_keeps_the_earliest_bound_and_re_anchors_on_loss() -> None:
    """Callback times only ever arrive late: the anchor follows the lowest bound; lasting lateness re-anchors, as a
    gap when it means lost samples; a stall followed by a burst changes nothing."""
    ring = RingBuffer(30 * RATE)
    clock = _ClockTracker(ring, RATE)
    block = np.zeros(1600, np.float32)  # 0.1 s
    audio_s = [0.0]  # wall time the next block's first sample was really captured

    def callback(late_s: float, overflow: bool = False) -> None:
        """Deliver one block `late_s` after its last sample was captured."""
        clock.before_write(len(block), T0 + audio_s[0] + 0.1 + late_s, overflow)
        ring.write(block)
        audio_s[0] += 0.1

    callback(0.3)  # the first block of a stream is late: anchor T0 + 0.3
    assert ring.anchors[-1].gap and ring.time_of(0) == pytest.approx(T0 + 0.3)
    callback(0.01)  # the second block proves an earlier start
    assert len(ring.anchors) == 1, "a better estimate corrects the segment's anchor, it does not add one"
    assert ring.time_of(0) == pytest.approx(T0 + 0.01)
    for late in (0.6, 0.5, 0.4, 0.3, 0.2, 0.01, 0.01):  # a 0.6 s stall, then the backlog arrives in a burst
        callback(late)
    assert len(ring.anchors) == 1 and ring.time_of(0) == pytest.approx(T0 + 0.01)

    for _ in range(12):  # the sample clock now lags by 0.4 s for good (an NTP step, a slow crystal)
        callback(0.4 + 0.01)
    assert len(ring.anchors) == 2 and not ring.anchors[-1].gap and clock.resyncs == 1
    sample = ring.written
    assert ring.time_of(sample) == pytest.approx(T0 + audio_s[0] + 0.4)

    callback(0.41, overflow=True)
    assert ring.anchors[-1].gap and ring.anchors[-1].sample == sample
    audio_s[0] += 2.0  # two seconds of samples vanish without a flag
    for _ in range(12):
        callback(0.41)
    assert ring.anchors[-1].gap and clock.gaps == 3


# ---- windows --------------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=6))
def test_windows_do_not_depend_on_the_capture_block_size(sizes: list[int]) -> None:
    """openWakeWord-style invariance: any chunking of the same audio gives bit-identical windows and times."""
    signal = np.random.default_rng(1).standard_normal(7 * RATE + 123).astype(np.float32)

    def windows_for(block_sizes: list[int]) -> list:
        ring = RingBuffer(len(signal))
        ring.mark(T0, RATE, gap=True)
        feed(ring, signal, block_sizes)
        ring.close()
        return drain(Windower(ring, RATE, length_s=2.0, hop_s=0.5))

    reference = windows_for([len(signal)])
    got = windows_for(sizes)
    assert len(got) == len(reference) == 1 + (len(signal) - 2 * RATE) // (RATE // 2)
    for a, b in zip(got, reference, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)
        assert (a.start_time, a.end_time, a.index) == (b.start_time, b.end_time, b.index)


def test_window_contents_and_timestamps_are_exact() -> None:
    ring = RingBuffer(10 * RATE)
    ring.mark(T0, RATE, gap=True)
    feed(ring, ramp(0, 5 * RATE), [1000])
    ring.close()
    windows = drain(Windower(ring, RATE, length_s=2.0, hop_s=1.0))
    assert [w.index for w in windows] == [0, 1, 2, 3]
    for k, w in enumerate(windows):
        np.testing.assert_array_equal(w.samples, ramp(k * RATE, 2 * RATE))
        assert w.start_time == T0 + k
        assert w.end_time == T0 + k + 2.0
        assert w.rate_hz == RATE


def test_a_slow_consumer_skips_windows_and_counts_them() -> None:
    """The ring holds 3 windows; 10 arrive before the consumer looks: it gets the newest, the rest are counted."""
    ring = RingBuffer(3 * RATE)
    ring.mark(T0, RATE, gap=True)
    windower = Windower(ring, RATE, length_s=1.0)
    feed(ring, ramp(0, 10 * RATE), [1600])
    stop = threading.Event()
    w = windower.next_window(stop, timeout=1.0)
    assert w is not None
    assert w.start_time == T0 + 9.0 and w.index == 0
    np.testing.assert_array_equal(w.samples, ramp(9 * RATE, RATE))
    assert windower.skipped_behind == 9
    assert windower.next_window(stop, timeout=0.05) is None  # nothing new yet: a timeout, not the end
    assert not windower.exhausted


def test_a_window_never_straddles_a_gap() -> None:
    """A reopen 1.5 s into the stream: the partial window is dropped and the grid restarts at the gap."""
    ring = RingBuffer(10 * RATE)
    ring.mark(T0, RATE, gap=True)
    feed(ring, ramp(0, 3 * RATE // 2), [800])
    ring.mark(T0 + 60.0, RATE, gap=True)  # a minute without the microphone
    feed(ring, ramp(3 * RATE // 2, 2 * RATE), [800])
    ring.close()
    windower = Windower(ring, RATE, length_s=1.0)
    windows = drain(windower)
    assert [w.start_time for w in windows] == [T0, T0 + 60.0, T0 + 61.0]
    np.testing.assert_array_equal(windows[1].samples, ramp(3 * RATE // 2, RATE))
    assert windower.dropped_at_gap == 1


def test_next_window_waits_for_a_writer_and_honours_stop() -> None:
    ring = RingBuffer(4 * RATE)
    windower = Windower(ring, RATE, length_s=0.5)
    stop = threading.Event()

    def writer() -> None:
        ring.mark(T0, RATE, gap=True)
        for i in range(10):
            ring.write(ramp(i * 1600, 1600))
            stop.wait(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    w = windower.next_window(stop, timeout=10.0)
    thread.join(10)
    assert w is not None and w.start_time == T0
    stop.set()
    assert windower.next_window(stop, timeout=10.0) is None
