"""The event is a typed value until it is encoded, and its encoding is the one published before it was: the same keys,
spelled the same, in the same order, byte for byte (a listener's parser and the fleet's archive depend on it)."""

from __future__ import annotations

import dataclasses

import jsonschema
import numpy as np

from custom.daemon.publish.event import Event, EventContext, Label
from custom.daemon.publish.publisher import encode
from custom.wire import schemas

CONTEXT = EventContext(
    sensor_id="sensor-01",
    location={"lat": 40.4169, "lon": -3.7038, "name": "Sol"},
    class_names=("siren", "dog_bark", "car_horn"),
    thresholds=(0.5, 0.3, 0.9),
    bundle_id="default-2",
    bundle_sha256="ab" * 32,
    level_unit="dB(A)",
)
LEVELS = {"laeq": 71.2, "lafmax": 80.0, "lafmin": 60.1, "la10": 75.0, "la50": 70.0, "la90": 62.3, "unit": "dB(A)"}
START = 1764500400.0  # 2025-11-30T11:00:00Z
EVENT_ID = "00000000-0000-4000-8000-000000000000"
HEADER = (
    '{"schema_version":2,"sensor_id":"sensor-01","event_id":"00000000-0000-4000-8000-000000000000",'
    '"window":{"start":"2025-11-30T11:00:00.000Z","end":"2025-11-30T11:00:10.000Z","duration_s":10.0},'
    '"location":{"lat":40.4169,"lon":-3.7038,"name":"Sol"},'
)
MODEL = '"model":{"bundle_id":"default-2","sha256":"' + "ab" * 32 + '"},"processing_ms":23.5'
LEVEL = '"level":{"laeq":71.2,"lafmax":80.0,"lafmin":60.1,"la10":75.0,"la50":70.0,"la90":62.3,"unit":"dB(A)"},'
# What the dict-building EventContext.build published before the event was typed (same inputs, same bytes).
HEARD = (
    HEADER + '"labels":[{"name":"siren","score":0.9123},{"name":"dog_bark","score":0.31}],'
    '"top":{"name":"siren","score":0.9123},"scores":{"siren":0.9123,"dog_bark":0.31,"car_horn":0.05},'
    '"vetoed":["dog_bark"],' + LEVEL + MODEL + ',"clock":{"synced":true,"max_error_ms":12.5}}'
)
NOTHING_HEARD = (
    HEADER
    + '"labels":[],"top":{"name":null,"score":0.3},"scores":{"siren":0.1,"dog_bark":0.2,"car_horn":0.3},'
    + LEVEL
    + MODEL
    + ',"file":"x.flac"}'
)


def _event(scores: list[float], **kwargs) -> Event:
    return dataclasses.replace(CONTEXT.build(scores, START, START + 10.0, LEVELS, 23.456, **kwargs), event_id=EVENT_ID)


def test_a_heard_window_is_typed_until_encoded_and_encodes_as_before() -> None:
    clock = {"synced": True, "max_error_ms": 12.5}
    event = _event([0.912345678, 0.31, 0.05], clock=clock, vetoed=np.array([False, True, False]))
    assert event.labels == (Label("siren", 0.9123), Label("dog_bark", 0.31))
    assert (event.top_name, event.top_score, event.vetoed) == ("siren", 0.9123, ("dog_bark",))
    assert encode(event.to_json()).decode() == HEARD
    jsonschema.validate(event.to_json(), schemas.load(schemas.EVENT))


def test_nothing_heard_names_no_class_and_extra_keys_come_last() -> None:
    event = _event([0.1, 0.2, 0.3], extra={"file": "x.flac"})
    assert (event.labels, event.top_name, event.top_score, event.vetoed) == ((), None, 0.3, None)
    assert encode(event.to_json()).decode() == NOTHING_HEARD
    published = _event([0.1, 0.2, 0.3]).to_json()
    assert "file" not in published
    jsonschema.validate(published, schemas.load(schemas.EVENT))


def test_encoding_does_not_share_state_with_the_event() -> None:
    """A caller extending the encoded object (classify adds the window's offset in the file) leaves the event alone."""
    event = _event([0.9, 0.1, 0.1], clock={"synced": False, "max_error_ms": None})
    first = event.to_json()
    first["window"]["offset_s"] = 3.0
    first["level"]["laeq"] = 0.0
    first["clock"]["synced"] = True
    assert event.to_json() == _event([0.9, 0.1, 0.1], clock={"synced": False, "max_error_ms": None}).to_json()
