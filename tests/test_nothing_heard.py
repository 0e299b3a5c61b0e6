""" "Nothing heard" is an answer: with no class at its threshold an event has no labels and a top naming no class,
and Home Assistant's top-class entity shows "none" rather than the best class below threshold."""

from __future__ import annotations

from custom.convert.classes import CLASS_NAMES
from custom.daemon.publish.discovery import NOTHING_HEARD
from tests.test_discovery import configs, make_event, render


def test_quiet_window_names_no_class() -> None:
    scores = [0.1] * len(CLASS_NAMES)
    scores[CLASS_NAMES.index("Dog")] = 0.45  # best, but below its 0.5 threshold
    event = make_event("sensor-01", scores, level_db=-50.0)  # validated against the schema inside
    assert event["labels"] == []
    assert event["top"] == {"name": None, "score": 0.45}
    top = configs()["homeassistant/sensor/sensor-01/top_class/config"]
    assert render(top["value_template"], event) == NOTHING_HEARD
    assert NOTHING_HEARD in top["options"] and NOTHING_HEARD not in CLASS_NAMES


def test_a_class_at_threshold_is_named() -> None:
    scores = [0.0] * len(CLASS_NAMES)
    scores[CLASS_NAMES.index("Dog")] = 0.5
    event = make_event("sensor-01", scores, level_db=-30.0)
    assert event["top"]["name"] == "Dog" and [label["name"] for label in event["labels"]] == ["Dog"]
