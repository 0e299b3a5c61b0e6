"""MQTT message -> a row to store, or a rejection with a reason: the one place payloads are judged.

Events are checked against the schema the daemon package ships (`custom.daemon/event.schema.json`), loaded once at
start, so the ingest and the sensors can never disagree on what an event is; jsonschema-rs does it (~15 us per event;
the pure-Python validator costs milliseconds, more than the whole database write). The schema's version pin is
widened to "any version from 1 to one past the shipped one": a fleet is upgraded sensor by sensor, and during the
upgrade both the old and the bumped version arrive. Hourly summaries are checked against `summary.schema.json` when
the daemon package ships one, and stored as sent otherwise.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema_rs

PAYLOAD_KEEP_CHARS = 4096
REASON_KEEP_CHARS = 500

# Level fields a sensor may send (issue #14 adds them); whichever exist are stored, the rest stay NULL.
LEVEL_KEYS = ("laeq", "lafmax", "la10", "la50", "la90")


@dataclass(frozen=True)
class EventRow:
    """One `events` row, as text/numbers ready for COPY (PostgreSQL parses the ISO timestamps itself)."""

    event_id: str
    window_start: str
    window_end: str
    sensor_id: str
    schema_version: int
    top_class: str | None
    top_score: float | None
    labels: list[str]
    scores: str  # JSON text
    levels: tuple[float | None, ...]  # LEVEL_KEYS order
    level_unit: str | None
    clock_synced: bool | None
    bundle_id: str | None
    bundle_sha256: str | None
    processing_ms: float | None
    lat: float | None
    lon: float | None
    location_name: str | None
    street: str | None

    @property
    def day(self) -> str:
        return self.window_start[:10]


@dataclass(frozen=True)
class SummaryRow:
    sensor_id: str
    hour_start: str
    payload: str  # JSON text


@dataclass(frozen=True)
class Rejection:
    digest: str
    topic: str
    payload: str
    reason: str


def _package_schema(name: str) -> dict[str, Any] | None:
    try:
        text = resources.files("custom.daemon").joinpath(name).read_text()
    except (FileNotFoundError, OSError):
        return None
    return json.loads(text)


class Judge:
    """Validators built once; `judge(topic, payload)` returns an EventRow, a SummaryRow or a Rejection."""

    def __init__(self, event_schema: dict[str, Any] | None = None, summary_schema: dict[str, Any] | None = None):
        shipped = event_schema if event_schema is not None else _package_schema("event.schema.json")
        if shipped is None:
            raise RuntimeError("custom.daemon ships no event.schema.json: is custom-sensor installed?")
        self.shipped_version = _pinned_version(shipped)
        self.accepted_versions = tuple(range(1, self.shipped_version + 2))
        widened = copy.deepcopy(shipped)
        widened.setdefault("properties", {})["schema_version"] = {"enum": list(self.accepted_versions)}
        self._event = jsonschema_rs.validator_for(widened)
        summary = summary_schema if summary_schema is not None else _package_schema("summary.schema.json")
        self._summary = jsonschema_rs.validator_for(summary) if summary is not None else None

    def judge(self, topic: str, payload: bytes) -> EventRow | SummaryRow | Rejection:
        kind = topic.rsplit("/", 1)[-1]
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            return rejection(topic, payload, f"not JSON: {exc}")
        if kind == "summary":
            return self._judge_summary(topic, payload, data)
        error = _first_error(self._event, data)
        if error:
            return rejection(topic, payload, f"fails event schema: {error}")
        return _event_row(data)

    def _judge_summary(self, topic: str, payload: bytes, data: Any) -> SummaryRow | Rejection:
        if self._summary is not None:
            error = _first_error(self._summary, data)
            if error:
                return rejection(topic, payload, f"fails summary schema: {error}")
        if not isinstance(data, dict):
            return rejection(topic, payload, "summary is not a JSON object")
        sensor = data.get("sensor_id") or topic.rsplit("/", 2)[-2]
        hour = _hour_start(data)
        if not isinstance(sensor, str) or hour is None:
            return rejection(topic, payload, "summary names no sensor_id or hour start")
        return SummaryRow(sensor, hour, json.dumps(data, separators=(",", ":")))


def _pinned_version(schema: dict[str, Any]) -> int:
    node = schema.get("properties", {}).get("schema_version", {})
    if "const" in node:
        return int(node["const"])
    if "enum" in node:
        return int(max(node["enum"]))
    return 1


def _first_error(validator: Any, data: Any) -> str | None:
    """None when valid (the fast path: ~15 us per event in Rust), else where and why, e.g. `window/start: ...`."""
    if validator.is_valid(data):
        return None
    error = next(iter(validator.iter_errors(data)))
    where = "/".join(str(p) for p in error.instance_path) or "(top)"
    return f"{where}: {error.message}"[:REASON_KEEP_CHARS]


def _hour_start(data: dict[str, Any]) -> str | None:
    """The summary's hour: `hour_start`, or `start` inside `hour`/`window`/`period`, or a top-level `start`."""
    for key in ("hour_start", "start"):
        if isinstance(data.get(key), str):
            return data[key]
    for key in ("hour", "window", "period"):
        node = data.get(key)
        if isinstance(node, dict) and isinstance(node.get("start"), str):
            return node["start"]
        if isinstance(node, str):
            return node
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _event_row(e: dict[str, Any]) -> EventRow:
    level = e.get("level") or {}
    normalized = {k.lower().replace("_", ""): v for k, v in level.items()} if isinstance(level, dict) else {}
    top = e.get("top") if isinstance(e.get("top"), dict) else {}
    clock = e.get("clock_synced", (e.get("clock") or {}).get("synced") if isinstance(e.get("clock"), dict) else None)
    location = e.get("location") or {}
    model = e.get("model") or {}
    return EventRow(
        event_id=e["event_id"],
        window_start=e["window"]["start"],
        window_end=e["window"]["end"],
        sensor_id=e["sensor_id"],
        schema_version=int(e["schema_version"]),
        top_class=top.get("name") if isinstance(top.get("name"), str) else None,
        top_score=_number(top.get("score")),
        labels=[label["name"] for label in e.get("labels", []) if isinstance(label, dict) and "name" in label],
        scores=json.dumps(e["scores"], separators=(",", ":")),
        levels=tuple(_number(normalized.get(k)) for k in LEVEL_KEYS),
        level_unit=level.get("unit") if isinstance(level, dict) else None,
        clock_synced=clock if isinstance(clock, bool) else None,
        bundle_id=model.get("bundle_id"),
        bundle_sha256=model.get("sha256"),
        processing_ms=_number(e.get("processing_ms")),
        lat=_number(location.get("lat")),
        lon=_number(location.get("lon")),
        location_name=location.get("name"),
        street=location.get("street"),
    )


def rejection(topic: str, payload: bytes, reason: str) -> Rejection:
    digest = hashlib.md5(topic.encode() + b"\0" + payload, usedforsecurity=False).hexdigest()
    text = payload[:PAYLOAD_KEEP_CHARS].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return Rejection(digest, topic, text, reason.splitlines()[0][:REASON_KEEP_CHARS] if reason else "rejected")
