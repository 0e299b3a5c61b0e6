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
from datetime import date
from importlib import resources
from typing import Any

import jsonschema_rs

PAYLOAD_KEEP_CHARS = 4096
REASON_KEEP_CHARS = 500


@dataclass(frozen=True)
class EventRow:
    """A valid event as its JSON text; PostgreSQL pulls the columns out of it (in C, in the server process: the
    Python-side field extraction cost as much as parsing and validating together)."""

    topic: str
    payload: str
    sensor_id: str
    day: str  # UTC date of the window start: the partition it goes to


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
        try:
            text = payload.decode()
        except UnicodeDecodeError:  # valid UTF-16/32 JSON: json.loads takes it, we store UTF-8 only
            return rejection(topic, payload, "not UTF-8")
        day = data["window"]["start"][:10]
        try:
            date.fromisoformat(day)
        except ValueError:
            return rejection(topic, payload, f"window/start: {day} is not a calendar date")
        return EventRow(topic, text, data["sensor_id"], day)

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


def rejection(topic: str, payload: bytes, reason: str) -> Rejection:
    digest = hashlib.md5(topic.encode() + b"\0" + payload, usedforsecurity=False).hexdigest()
    text = payload[:PAYLOAD_KEEP_CHARS].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return Rejection(digest, topic, text, reason.splitlines()[0][:REASON_KEEP_CHARS] if reason else "rejected")
