"""Hourly summaries: content from short synthetic "hours", Lden, and end to end through the daemon and a broker
outage (no summary lost). The period is shortened through the test-only entry point `testing.faults`
(`--summary-period-s`)."""

from __future__ import annotations

import json
import math
from datetime import datetime

import jsonschema
import numpy as np
import pytest

from custom.daemon.noise.levels import LevelMeter
from custom.daemon.noise.summary import HourlySummary, energy_mean_db, lden
from testing.daemon import daemon_config
from tests.conftest import ROOT

SUMMARY_SCHEMA = json.loads((ROOT / "wire/summary.schema.json").read_text())
EVENT_SCHEMA = json.loads((ROOT / "wire/event.schema.json").read_text())
SIREN = "data/clips/siren/us8k_102871-8-0-8.flac"
RATE = 16000
CLASSES = ("Siren", "Dog_bark", "Car_horn")


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def tone_levels(dbfs: float, seconds: float = 10.0):
    t = np.arange(round(seconds * RATE)) / RATE
    return LevelMeter()((10 ** (dbfs / 20) * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), RATE)


def test_a_short_hour_sums_up_what_was_measured_and_invents_nothing() -> None:
    """A 60 s "hour" from t0: windows at 0, 10, 20 s (-40, -20, -40 dBFS), then the mic is down 30 s (no windows),
    then a window at 50 s. A window in the next period closes it."""
    t0 = 1_800_000_000.0  # a multiple of 60: a period boundary
    summary = HourlySummary("s1", {"lat": 1.0, "lon": 2.0}, CLASSES, period_s=60.0, grace_s=15.0)
    plan = [(0, -40.0, ["Siren"], True), (10, -20.0, ["Siren", "Dog_bark"], True), (20, -40.0, [], False)]
    plan.append((50, -40.0, [], True))
    out = []
    for offset, level, labels, synced in plan:
        out += summary.add(t0 + offset, t0 + offset + 10, tone_levels(level), labels, synced)
    assert out == []
    out = summary.add(t0 + 60, t0 + 70, tone_levels(-30.0), [], True)
    assert len(out) == 1
    hour = out[0]
    jsonschema.validate(hour, SUMMARY_SCHEMA)
    assert hour["period"] == {
        "start": "2027-01-15T08:00:00.000Z",
        "end": "2027-01-15T08:01:00.000Z",
        "duration_s": 60.0,
        "partial": False,
    }
    assert hour["windows"] == 4
    assert hour["minutes_covered"] == pytest.approx(40 / 60, abs=0.01)  # 30 s of dead mic not invented
    expected_laeq = 10 * math.log10((3 * 10 ** (-40 / 10) + 10 ** (-20 / 10)) / 4)
    assert hour["level"]["laeq"] == pytest.approx(expected_laeq, abs=0.1)
    assert hour["level"]["lafmax"] == pytest.approx(-20.0, abs=0.1)
    assert hour["level"]["la90"] == pytest.approx(-40.0, abs=0.1)
    assert hour["level"]["la50"] == pytest.approx(-40.0, abs=0.1)  # 3 of 4 windows at -40
    assert hour["level"]["unit"] == "dBFS"
    assert hour["classes"] == {
        "Siren": {"windows": 2, "share": pytest.approx(20 / 60, abs=1e-3)},
        "Dog_bark": {"windows": 1, "share": pytest.approx(10 / 60, abs=1e-3)},
    }
    assert hour["clock"] == {"synced": False, "unsynced_windows": 1}

    # shutdown mid-period: partial, ends when the last window ended
    partial = summary.close(t0 + 75)
    jsonschema.validate(partial, SUMMARY_SCHEMA)
    assert partial["period"]["partial"] is True
    assert partial["windows"] == 1 and partial["period"]["duration_s"] == pytest.approx(15.0)
    assert partial["level"]["laeq"] == pytest.approx(-30.0, abs=0.1)


def test_an_hour_with_the_mic_down_throughout_is_reported_empty_once_its_grace_is_over() -> None:
    summary = HourlySummary("s1", {}, CLASSES, period_s=60.0, grace_s=15.0)
    assert summary.due(1_800_000_010.0) == []
    assert summary.due(1_800_000_074.0) == []  # the last window of the period could still arrive
    (hour,) = summary.due(1_800_000_075.0)
    jsonschema.validate(hour, SUMMARY_SCHEMA)
    assert hour["windows"] == 0 and hour["minutes_covered"] == 0
    assert hour["level"]["laeq"] is None and hour["level"]["la90"] is None
    assert summary.close(1_800_000_080.0) is None  # nothing measured since: no partial summary


def test_energy_mean_and_lden_follow_directive_2002_49() -> None:
    assert energy_mean_db([60.0, 60.0]) == pytest.approx(60.0)
    assert energy_mean_db([60.0, 70.0]) == pytest.approx(10 * math.log10((1e6 + 1e7) / 2))
    # constant 60 dB all day: Lden = 60 + 10 log10((12 + 4 * 10^0.5 + 8 * 10) / 24) = 66.4
    assert lden(dict.fromkeys(range(24), 60.0)) == pytest.approx(60 + 10 * math.log10((12 + 4 * 10**0.5 + 80) / 24))
    # only night noise (23-07) at 50 dB, silence (0 dB) otherwise: night dominates with its +10 dB
    hours = {h: (50.0 if h >= 23 or h < 7 else 0.0) for h in range(24)}
    assert lden(hours) == pytest.approx(10 * math.log10((12 + 4 * 10**0.5 + 8 * 10**6) / 24), abs=0.01)
    with pytest.raises(ValueError, match="missing"):
        lden({0: 50.0})


def _summaries(subscriber) -> list[dict]:
    return [m.json() for m in subscriber.on("custom/test-sensor/summary")]


def test_daemon_publishes_summaries_through_the_spool_and_loses_none_in_a_broker_outage(
    yamnet_bundle, shared, broker, subscriber_factory, make_daemon, tmp_path
):
    """Real-time replay, 2 s windows, 6 s "hours": the broker goes down for three periods; afterwards every period
    is there exactly in order, each with its windows, and the shutdown sends a partial one."""
    subscriber = subscriber_factory(broker, ["custom/test-sensor/#"], client_id="summary-listener", clean=False)
    config = daemon_config(yamnet_bundle, broker.port, tmp_path / "spool.sqlite", window={"length_s": 2, "hop_s": 2})
    daemon = make_daemon(config, args=["--input", str(shared / SIREN), "--loop", "--summary-period-s", "6"]).start()
    assert subscriber.wait_for(lambda ms: len(_summaries(subscriber)) >= 1, timeout=60), daemon.log()

    broker.stop()
    logged = daemon.log().count("summary ")
    assert daemon.wait_log("MQTT", timeout=10)
    deadline_ok = _wait(lambda: daemon.log().count("summary ") >= logged + 3, timeout=40)
    assert deadline_ok, daemon.log()
    broker.start()
    assert subscriber.wait_for(lambda ms: len(_summaries(subscriber)) >= logged + 3, timeout=60), daemon.log()
    assert daemon.stop() == 0, daemon.log()
    assert subscriber.wait_for(lambda ms: any(s["period"]["partial"] for s in _summaries(subscriber)), 20), daemon.log()

    summaries = list({s["period"]["start"]: s for s in _summaries(subscriber)}.values())
    for s in summaries:
        jsonschema.validate(s, SUMMARY_SCHEMA)
    full = [s for s in summaries if not s["period"]["partial"]]
    starts = [ts(s["period"]["start"]) for s in full]
    assert len(full) >= 4, summaries
    assert all(b - a == pytest.approx(6.0) for a, b in zip(starts, starts[1:], strict=False)), starts
    for s in full[1:]:  # the first period may have begun before the daemon did
        assert s["windows"] == 3 and s["minutes_covered"] == pytest.approx(0.1, abs=0.01), s
        assert "Siren" in s["classes"] and s["level"]["laeq"] is not None
    print(f"\nSUMMARY OUTAGE: {len(full)} full periods back to back + partial; {logged} summarised before the outage, "
          f"{len(summaries)} received in all")  # fmt: skip
    events = [m.json() for m in subscriber.on("custom/test-sensor/events")]
    for event in events[:3]:
        jsonschema.validate(event, EVENT_SCHEMA)
        assert event["clock"]["synced"] in (True, False, None)
        assert event["level"]["lafmax"] >= event["level"]["laeq"] >= event["level"]["lafmin"]


def _wait(predicate, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
