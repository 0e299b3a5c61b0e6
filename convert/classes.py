"""The sensor's 10 urban sound classes, in the order every bundle, data set column and event uses.

Identified by AudioSet machine id (mid), never by a model's output position: YAMNet (521 outputs) and AudioSet
(527 labels) number classes differently. This is the converter's source of truth; the daemon reads the classes
from the bundle manifest instead, so a future bundle can change them without a daemon release.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UrbanClass:
    name: str  # short name used in events and reports
    audioset_name: str
    mid: str
    clip_label: str  # folder/label used in shared/data/clips/manifest.csv


URBAN_CLASSES: tuple[UrbanClass, ...] = (
    UrbanClass("Vehicle horn", "Vehicle horn, car horn, honking", "/m/0912c9", "horn"),
    UrbanClass("Children playing", "Children playing", "/t/dd00013", "children"),
    UrbanClass("Dog", "Dog", "/m/0bt9lr", "dog"),
    UrbanClass("Jackhammer", "Jackhammer", "/m/03p19w", "jackhammer"),
    UrbanClass("Siren", "Siren", "/m/03kmc9", "siren"),
    UrbanClass("Traffic noise", "Traffic noise, roadway noise", "/m/0btp2", "traffic"),
    UrbanClass("Subway/metro", "Subway, metro, underground", "/m/0195fx", "subway"),
    UrbanClass("Walk/footsteps", "Walk, footsteps", "/m/07pbtc8", "footsteps"),
    UrbanClass("Chatter", "Chatter", "/m/07rkbfh", "chatter"),
    UrbanClass("Bird", "Bird", "/m/015p6", "bird"),
)

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in URBAN_CLASSES)
