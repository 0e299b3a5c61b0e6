"""Levels on the full band, live: a 48 kHz virtual mic plays a 12.5 kHz tone (above the model's 8 kHz Nyquist) and
the daemon's events must read it at its A-weighted level; at 16 kHz it would not be heard at all."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import soundfile

from custom.daemon.noise.levels import a_weighting_db
from testing.daemon import daemon_config
from tests.conftest import ROOT

SCHEMA = json.loads((ROOT / "wire/event.schema.json").read_text())
TONE_HZ = 12500.0
TONE_DBFS = -20.0


def test_daemon_measures_a_12_5_khz_tone_at_48_khz(yamnet_bundle, virtual_mic_48k, broker, subscriber_factory,
                                                   make_daemon, tmp_path):  # fmt: skip
    rate = 48000
    t = np.arange(60 * rate) / rate  # longer than the test: no gap while paplay restarts the loop
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, 10 ** (TONE_DBFS / 20) * np.sin(2 * np.pi * TONE_HZ * t), rate, subtype="PCM_24")
    virtual_mic_48k.play(wav)
    subscriber = subscriber_factory(broker, ["custom/test-sensor/#"], client_id="levels-live")
    config = daemon_config(
        yamnet_bundle, broker.port, tmp_path / "spool.sqlite", window={"length_s": 2, "hop_s": 2},
        audio={"sample_rate_hz": rate},
    )  # fmt: skip
    daemon = make_daemon(config, env=virtual_mic_48k.env).start()
    received = subscriber.wait_count("custom/test-sensor/events", 4, timeout=60)
    assert len(received) >= 4, daemon.log()
    assert daemon.stop() == 0, daemon.log()
    expected = TONE_DBFS + float(a_weighting_db(TONE_HZ))  # -24.3
    steady = [m.json() for m in received][2:]  # the first windows may hold the player's start
    for event in steady:
        jsonschema.validate(event, SCHEMA)
        level = event["level"]
        assert level["laeq"] == pytest.approx(expected, abs=0.2), level
        assert level["la90"] == pytest.approx(expected, abs=0.2), level
        assert level["unit"] == "dBFS" and "synced" in event["clock"]
    print(f"\nLIVE 48k: 12.5 kHz tone at {TONE_DBFS} dBFS reads LAeq {[e['level']['laeq'] for e in steady]}, "
          f"expected {expected:.1f}")  # fmt: skip
