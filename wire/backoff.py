"""The one retry rule for everything the sensor keeps alive (the microphone, the MQTT connection).

Capped exponential steps with "equal jitter": each wait is drawn from [step/2, step], never below half the step, so
sensors that lost the same broker or hub do not retry in lockstep, and never above the cap, so recovery is bounded.
Waits are on the caller's stop event, so a shutdown never sits out a backoff.
"""

from __future__ import annotations

import random
import threading


class Backoff:
    def __init__(self, first_s: float, max_s: float) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError(f"backoff needs 0 < first ({first_s}) <= max ({max_s})")
        self.first_s = first_s
        self.max_s = max_s
        self.failures = 0

    def reset(self) -> None:
        """The thing worked (long enough): the next failure starts again from the first step."""
        self.failures = 0

    def delay_s(self) -> float:
        """The next wait; each call counts one more failure."""
        step = min(self.max_s, self.first_s * 2.0**self.failures)
        self.failures += 1
        return step / 2 + random.uniform(0, step / 2)

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the next delay unless `stop` is set meanwhile; True if stopped."""
        return stop.wait(self.delay_s())
