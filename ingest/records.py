"""MQTT message -> a row to store, or a rejection with a reason: the one place payloads are judged.

Events are checked against the schema both sides share (`custom.wire`, wire/event.schema.json), loaded once at
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
from typing import Any

import jsonschema_rs

from custom.wire import schemas
from custom.wire.topics import TopicError, parse_sensor_topic

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
        shipped = event_schema if event_schema is not None else schemas.load(schemas.EVENT)
        summary = summary_schema if summary_schema is not None else schemas.load(schemas.SUMMARY)
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
            text = payload.decode()
        except UnicodeDecodeError as exc:  # json.loads would take UTF-16/32 JSON: we store UTF-8 only
            return rejection(topic, payload, f"not JSON: not UTF-8 ({exc})")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return rejection(topic, payload, f"not JSON: {exc}")
        if where.kind == "summary" or b"NaN" in payload or b"Infinity" in payload or b"\\u" in payload:  # rarely
            try:
                unstorable = _unstorable(data)
            except RecursionError:
                unstorable = "nested too deeply"
            if unstorable:
                return rejection(topic, payload, unstorable)
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


REAL_MAX = 3.4e38  # PostgreSQL `real` (float4), _outside_real's columns: it refuses more, or nonzero below REAL_TINY
REAL_TINY = 1.2e-38


def _outside_real(data: dict[str, Any]) -> str | None:
    """Where a number stored as `real` would be refused by PostgreSQL (found by fuzzing: a top score of 1e-167)."""
    top, level, clock = data.get("top") or {}, data.get("level") or {}, data.get("clock") or {}
    for where, node in (
        ("top/score", top.get("score")), ("level/laeq", level.get("laeq")), ("level/lafmax", level.get("lafmax")),
        ("level/lafmin", level.get("lafmin")), ("level/la10", level.get("la10")), ("level/la50", level.get("la50")),
        ("level/la90", level.get("la90")), ("clock/max_error_ms", clock.get("max_error_ms")),
        ("processing_ms", data.get("processing_ms")),
    ):  # fmt: skip
        if isinstance(node, int | float) and not isinstance(node, bool):
            size = abs(node)  # an int of any size compares with a float without converting
            if not size <= REAL_MAX or 0 < size < REAL_TINY:  # `not <=`: NaN too
                return f"{where}: {node!r:.40} is outside the stored range (1.2e-38 to 3.4e38, or 0)"
    return None


def _unstorable(node: Any) -> str | None:
    """Why PostgreSQL's jsonb would refuse `node` though json.loads took it (found by fuzzing): a NUL or lone
    surrogate in a key or string, NaN or an infinity; or None. judge() walks an event only when its text spells one
    (`NaN`, `Infinity`, an escape `\\u`): walking every event cost more than the rest of the judgement. An event's
    text is stored as sent, so a 1e400 stays a number jsonb takes (the `real` columns are checked apart); a summary
    is stored re-encoded, so it is always walked."""
    if isinstance(node, float) and not math.isfinite(node):
        return f"number {node} is not storable (NaN, infinite, or beyond a double)"
    if isinstance(node, str) and ("\x00" in node or any("\ud800" <= c <= "\udfff" for c in node)):
        return "a string holds \\u0000 or a lone surrogate: not storable text"
    children = [*node.keys(), *node.values()] if isinstance(node, dict) else node if isinstance(node, list) else []
    return next((why for why in map(_unstorable, children) if why), None)


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
