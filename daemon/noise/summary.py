"""Hourly summary: the figures a noise map or a bylaw uses, per UTC hour, from the windows really measured.

Published on `<prefix>/<sensor_id>/summary` through the spool (QoS 1, never lost, like events) when an hour is over,
and once more, marked `partial`, on shutdown. Schema: wire/summary.schema.json.

* LAeq,1h is the energy mean of the windows' LAeq weighted by their duration, over the time really covered: an hour
  with 20 minutes of dead microphone says `minutes_covered: 40` and averages those 40, nothing is invented.
* LAFmax is the highest window LAFmax; LA10/LA50/LA90 are percentiles of all the hour's fast levels (every 100 ms).
* Per class: how many windows carried the label and the share of the hour those windows cover.

Lden (Directive 2002/49/EC) from 24 hourly LAeq values: day 07-19, evening 19-23 (+5 dB), night 23-07 (+10 dB),
Lden = 10 log10((12 * 10^(Lday/10) + 4 * 10^((Levening+5)/10) + 8 * 10^((Lnight+10)/10)) / 24), each period's L the
energy mean of its hours (local time, as the directive's periods are). `lden()` below is that formula; the README
shows it applied to summaries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from custom.wire.timestamps import iso_utc

from .levels import WindowLevels

SCHEMA_VERSION = 1
DEFAULT_PERIOD_S = 3600.0


def energy_mean_db(levels_db: Sequence[float], weights: Sequence[float] | None = None) -> float | None:
    """Energy (not arithmetic) mean of levels in dB; None for no levels."""
    if len(levels_db) == 0:
        return None
    values = np.asarray(levels_db, dtype=np.float64)
    w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(10.0 * np.log10(np.sum(w * 10.0 ** (values / 10.0)) / np.sum(w)))


def lden(hourly_laeq: Mapping[int, float]) -> float:
    """Lden from LAeq per local hour of day (0..23, all 24 present): Directive 2002/49/EC Annex I."""
    missing = sorted(set(range(24)) - set(hourly_laeq))
    if missing:
        raise ValueError(f"Lden needs all 24 hours; missing {missing}")
    day = energy_mean_db([hourly_laeq[h] for h in range(7, 19)])
    evening = energy_mean_db([hourly_laeq[h] for h in range(19, 23)])
    night = energy_mean_db([hourly_laeq[h] for h in (23, 0, 1, 2, 3, 4, 5, 6)])
    assert day is not None and evening is not None and night is not None
    total = 12 * 10 ** (day / 10) + 4 * 10 ** ((evening + 5) / 10) + 8 * 10 ** ((night + 10) / 10)
    return 10.0 * math.log10(total / 24.0)


@dataclass
class _Period:
    start: float
    end: float
    windows: int = 0
    covered_s: float = 0.0
    last_end: float = -math.inf
    laeq: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    lafmax: float = -math.inf
    fast: list[np.ndarray] = field(default_factory=list)
    classes: dict[str, list[float]] = field(default_factory=dict)  # name -> [windows, seconds]
    unsynced: int = 0
    unknown: int = 0  # windows whose clock state could not be read
    unit: str = "dBFS"


class HourlySummary:
    """Accumulates windows into UTC-aligned periods; `add`/`due`/`close` return finished summaries to publish."""

    def __init__(
        self,
        sensor_id: str,
        location: Mapping[str, Any],
        class_names: Sequence[str],
        period_s: float = DEFAULT_PERIOD_S,
        grace_s: float = 15.0,
    ) -> None:
        """`grace_s`: how long after a period's end its last window may still arrive (window length + latency)."""
        self.sensor_id = sensor_id
        self.location = dict(location)
        self.class_names = tuple(class_names)
        self.period_s = float(period_s)
        self.grace_s = grace_s
        self._period: _Period | None = None

    def _open(self, at: float) -> _Period:
        start = math.floor(at / self.period_s) * self.period_s
        return _Period(start=start, end=start + self.period_s)

    def add(
        self, start: float, end: float, levels: WindowLevels, labels: Sequence[str], synced: bool | None
    ) -> list[dict[str, Any]]:
        """Count one window in the period holding its start; returns the summary of a period this one closed."""
        done: list[dict[str, Any]] = []
        if self._period is None:
            self._period = self._open(start)
        elif start >= self._period.end:
            done.append(self._finish(self._period, partial=False))
            self._period = self._open(start)
        p = self._period
        duration = end - start
        p.windows += 1
        p.covered_s += max(0.0, end - max(start, p.last_end))  # overlapping windows (hop < length) count once
        p.last_end = max(p.last_end, end)
        p.unit = levels.unit
        if math.isfinite(levels.laeq):
            p.laeq.append(levels.laeq)
            p.durations.append(duration)
        p.lafmax = max(p.lafmax, levels.lafmax)
        p.fast.append(levels.fast_db)
        for name in labels:
            counts = p.classes.setdefault(name, [0, 0.0])
            counts[0] += 1
            counts[1] += duration
        if synced is False:
            p.unsynced += 1
        elif synced is None:
            p.unknown += 1
        return done

    def due(self, now: float) -> list[dict[str, Any]]:
        """The current period's summary once its last window can no longer arrive (also when no window came: a dead
        microphone for a whole hour is reported as an hour with nothing covered)."""
        if self._period is None:
            self._period = self._open(now)
            return []
        if now < self._period.end + self.grace_s:
            return []
        finished = self._finish(self._period, partial=False)
        self._period = self._open(now)
        return [finished]

    def close(self, now: float) -> dict[str, Any] | None:
        """On shutdown: the period so far, marked partial (None if no window was counted)."""
        period, self._period = self._period, None
        if period is None or period.windows == 0:
            return None
        period.end = min(period.end, max(now, period.last_end))
        return self._finish(period, partial=True)

    def _finish(self, p: _Period, partial: bool) -> dict[str, Any]:
        fast = np.concatenate(p.fast) if p.fast else np.zeros(0, dtype=np.float32)
        if len(fast):
            l90, l50, l10 = (round(float(v), 1) for v in np.percentile(fast, [10.0, 50.0, 90.0]))
        else:
            l90 = l50 = l10 = None  # type: ignore[assignment]  # no samples: the figures are null in the JSON
        laeq = energy_mean_db(p.laeq, p.durations)
        span = p.end - p.start
        return {
            "schema_version": SCHEMA_VERSION,
            "sensor_id": self.sensor_id,
            "location": self.location,
            "period": {
                "start": iso_utc(p.start),
                "end": iso_utc(p.end),
                "duration_s": round(span, 3),
                "partial": partial,
            },
            "minutes_covered": round(p.covered_s / 60.0, 2),
            "windows": p.windows,
            "level": {
                "laeq": None if laeq is None else round(laeq, 1),
                "lafmax": None if not math.isfinite(p.lafmax) else round(p.lafmax, 1),
                "la10": l10,
                "la50": l50,
                "la90": l90,
                "unit": p.unit,
            },
            "classes": {
                name: {"windows": int(p.classes[name][0]), "share": round(min(1.0, p.classes[name][1] / span), 4)}
                for name in self.class_names
                if name in p.classes
            },
            "clock": {"synced": _all_synced(p), "unsynced_windows": p.unsynced},
        }


def _all_synced(p: _Period) -> bool | None:
    """False if any window was stamped by an unsynchronised clock; None if the state was never known."""
    if p.unsynced:
        return False
    return None if p.windows and p.unknown == p.windows else True
