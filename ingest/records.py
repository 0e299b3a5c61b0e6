"""MQTT message -> a row to store, or a rejection with a reason: the one place payloads are judged.

Events are checked against the schema the daemon package ships (`custom.daemon/event.schema.json`), loaded once at
start, so the ingest and the sensors can never disagree on what an event is; jsonschema-rs does it (~15 us per event;
the pure-Python validator costs milliseconds, more than the whole database write). The schema's version pin is
widened to "any version from 1 to one past the shipped one": a fleet is upgraded sensor by sensor, and during the
upgrade both the old and the bumped version arrive. Hourly summaries are checked the same way against
`summary.schema.json` (same widening) and keyed by their period: a sensor that restarts mid-hour sends a partial
summary and later the rest of the same hour, both with the hour boundary as `period.start`; only the period end
tells them apart.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import date, datetime
from importlib import resources
from typing import Any

import jsonschema_rs

from .topic import TopicError, parse_sensor_topic

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
    labels: tuple[str, ...] = ()  # classes heard: the alert rules of a class only look at sensors that heard it


@dataclass(frozen=True)
class SummaryRow:
    """A valid summary; (sensor_id, period_start, period_end) is its identity: a redelivered copy repeats all three,
    the two parts of an hour cut by a restart share the start but not the end."""

    sensor_id: str
    period_start: str
    period_end: str
    partial: bool
    payload: str  # JSON text


@dataclass(frozen=True)
class Rejection:
    digest: str
    topic: str
    payload: str
    reason: str
    identity: bool = False  # refused for whose it is (topic or sensor_id), not for what it says


def _package_schema(name: str) -> dict[str, Any] | None:
    try:
        text = resources.files("custom.daemon").joinpath(name).read_text()
    except (FileNotFoundError, OSError):
        return None
    schema: dict[str, Any] = json.loads(text)
    return schema


class Judge:
    """Validators built once; `judge(topic, payload)` returns an EventRow, a SummaryRow or a Rejection, never raises.
    `prefix`: the sensors' topic prefix (mqtt.topic_prefix)."""

    def __init__(
        self,
        event_schema: dict[str, Any] | None = None,
        summary_schema: dict[str, Any] | None = None,
        prefix: str = "custom",
    ):
        self.prefix = prefix
        shipped = event_schema if event_schema is not None else _package_schema("event.schema.json")
        if shipped is None:
            raise RuntimeError("custom.daemon ships no event.schema.json: is custom-sensor installed?")
        summary = summary_schema if summary_schema is not None else _package_schema("summary.schema.json")
        if summary is None:
            raise RuntimeError("custom.daemon ships no summary.schema.json: is custom-sensor installed?")
        self.shipped_version = _pinned_version(shipped)
        self.accepted_versions = tuple(range(1, self.shipped_version + 2))
        self._event = jsonschema_rs.validator_for(_widened(shipped, self.accepted_versions))
        self.summary_versions = tuple(range(1, _pinned_version(summary) + 2))
        self._summary = jsonschema_rs.validator_for(_widened(summary, self.summary_versions))

    def judge(self, topic: str, payload: bytes) -> EventRow | SummaryRow | Rejection:
        try:
            where = parse_sensor_topic(topic, self.prefix)
        except TopicError as exc:
            return rejection(topic, payload, str(exc), identity=True)
        try:
            data = json.loads(payload, parse_float=_finite, parse_constant=_not_json)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return rejection(topic, payload, f"not JSON: {exc}")
        try:
            unstorable = _unstorable_text(data)
        except RecursionError:
            return rejection(topic, payload, "nested too deeply")
        if unstorable:
            return rejection(topic, payload, "a string holds \\u0000 or a lone surrogate: not storable text")
        if where.kind == "summary":
            judged = self._judge_summary(topic, payload, data)
            return judged if isinstance(judged, Rejection) else _same_sensor(judged, where.sensor_id, topic, payload)
        error = _first_error(self._event, data)
        if error:
            return rejection(topic, payload, f"fails event schema: {error}")
        if data["sensor_id"] != where.sensor_id:
            return _impersonation(data["sensor_id"], where.sensor_id, topic, payload)
        error = _outside_real(data)
        if error:
            return rejection(topic, payload, error)
        try:
            text = payload.decode()
        except UnicodeDecodeError:  # valid UTF-16/32 JSON: json.loads takes it, we store UTF-8 only
            return rejection(topic, payload, "not UTF-8")
        day = data["window"]["start"][:10]
        try:
            if date.fromisoformat(day) == date.max:  # its day partition would end in year 10000
                return rejection(topic, payload, f"window/start: {day} is past the last day stored")
        except ValueError:
            return rejection(topic, payload, f"window/start: {day} is not a calendar date")
        return EventRow(topic, text, where.sensor_id, day, tuple(label["name"] for label in data["labels"]))

    def _judge_summary(self, topic: str, payload: bytes, data: Any) -> SummaryRow | Rejection:
        error = _first_error(self._summary, data)
        if error:
            return rejection(topic, payload, f"fails summary schema: {error}")
        period = data["period"]
        for key in ("start", "end"):
            try:
                datetime.fromisoformat(period[key].replace("Z", "+00:00"))
            except ValueError:
                return rejection(topic, payload, f"period/{key}: {period[key]} is not a calendar date and time")
        text = json.dumps(data, separators=(",", ":"))
        return SummaryRow(data["sensor_id"], period["start"], period["end"], period["partial"], text)


REAL_FIELDS = (("top", "score"), ("level", "laeq"), ("level", "lafmax"), ("level", "lafmin"), ("level", "la10"),
               ("level", "la50"), ("level", "la90"), ("clock", "max_error_ms"), ("processing_ms",))  # fmt: skip
REAL_MAX = 3.4e38  # PostgreSQL `real` (float4), the columns above: beyond it, or nonzero below REAL_TINY, it refuses
REAL_TINY = 1.2e-38


def _finite(text: str) -> float:
    """JSON numbers as json.loads reads them, except those that overflow a double (1e400 would become inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _outside_real(data: dict[str, Any]) -> str | None:
    """Where a number stored as `real` would be refused by PostgreSQL (found by fuzzing: a top score of 1e-167)."""
    for path in REAL_FIELDS:
        node: Any = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, int | float) and not isinstance(node, bool):
            size = abs(node)  # an int of any size compares with a float without converting
            if size > REAL_MAX or 0 < size < REAL_TINY:
                return f"{'/'.join(path)}: {node!r:.40} is outside the stored range (1.2e-38 to 3.4e38, or 0)"
    return None


def _unstorable_text(node: Any) -> bool:
    """A NUL or a lone surrogate in any key or string: PostgreSQL's text and jsonb refuse both (found by fuzzing)."""
    if isinstance(node, str):
        return "\x00" in node or any("\ud800" <= c <= "\udfff" for c in node)
    if isinstance(node, dict):
        return any(_unstorable_text(k) or _unstorable_text(v) for k, v in node.items())
    if isinstance(node, list):
        return any(_unstorable_text(v) for v in node)
    return False


def _same_sensor(row: SummaryRow, sensor_id: str, topic: str, payload: bytes) -> SummaryRow | Rejection:
    return row if row.sensor_id == sensor_id else _impersonation(row.sensor_id, sensor_id, topic, payload)


def _impersonation(claimed: str, sensor_id: str, topic: str, payload: bytes) -> Rejection:
    """A payload in another sensor's name: kept only in `rejected`, never stored, rolled up or alerted on as either."""
    reason = f"sensor_id: payload names {claimed[:64]!r} but its topic is sensor {sensor_id!r}'s"
    return rejection(topic, payload, reason, identity=True)


def _pinned_version(schema: dict[str, Any]) -> int:
    node = schema.get("properties", {}).get("schema_version", {})
    if "const" in node:
        return int(node["const"])
    if "enum" in node:
        return int(max(node["enum"]))
    return 1


def _widened(schema: dict[str, Any], versions: tuple[int, ...]) -> dict[str, Any]:
    widened = copy.deepcopy(schema)
    widened.setdefault("properties", {})["schema_version"] = {"enum": list(versions)}
    return widened


def _first_error(validator: Any, data: Any) -> str | None:
    """None when valid (the fast path: ~15 us per event in Rust), else where and why, e.g. `window/start: ...`."""
    if validator.is_valid(data):
        return None
    error = next(iter(validator.iter_errors(data)))
    where = "/".join(str(p) for p in error.instance_path) or "(top)"
    return f"{where}: {error.message}"[:REASON_KEEP_CHARS]


def rejection(topic: str, payload: bytes, reason: str, identity: bool = False) -> Rejection:
    """What `rejected` keeps: text PostgreSQL takes whatever arrived (no NUL, no lone surrogate), the reason on one
    line."""
    raw_topic = topic.encode("utf-8", errors="surrogatepass")
    digest = hashlib.md5(raw_topic + b"\0" + payload, usedforsecurity=False).hexdigest()
    text = payload[:PAYLOAD_KEEP_CHARS].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    shown = raw_topic.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    lines = reason.replace("\x00", "\ufffd").splitlines()
    return Rejection(digest, shown, text, lines[0][:REASON_KEEP_CHARS] if lines else "rejected", identity)
