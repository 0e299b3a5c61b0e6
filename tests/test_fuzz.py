"""Searched, not picked: property-based fuzzing (hypothesis) of every input that comes from outside.

Each test states one property and lets hypothesis look for a counter-example within a small budget (seconds, so the
whole file stays well under a minute of CI), starting from real messages, configs and recordings and mutating them:
- the ingest's judge (any bytes on any topic): an accepted row is valid and PostgreSQL stores it; anything else is a
  Rejection with a one-line reason that PostgreSQL stores too; never an exception;
- the dashboard's query parameters and sensor ids, through the real `custom-ingest serve` and PostgreSQL: 200, 400 or
  404, never 5xx;
- the sensor's and the ingest's config files (any YAML): loaded, or ConfigError on one line;
- bundle manifests: loaded, or BundleError on one line;
- `custom-sensord classify` on corrupted recordings beside a good one: exit 66 with one line per bad file, the good
  file still scored.
Every test prints how many examples it tried (`pytest -s`). No example database: each run searches afresh.
"""

from __future__ import annotations

import copy
import io
import json
import math
import shutil
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jsonschema
import numpy as np
import pytest
import soundfile
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custom.daemon.publish.event import EventContext
from custom.ingest.records import EventRow, Judge, Rejection, SummaryRow, _widened
from custom.wire import schemas
from testing.ingest import build_event, hour_in_parts

CONTEXT = EventContext("s1", {"lat": 40.4, "lon": -3.7}, ("Siren", "Dog"), (0.5, 0.5), "b", "0" * 64, "dB(A)")
T0 = 1764500400.0
FAST = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}

instants = st.datetimes().map(lambda t: t.isoformat(timespec="milliseconds") + "Z")  # what a window start looks like
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=24) | instants,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path into a JSON document (the root excluded)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


def _alike(old: Any) -> st.SearchStrategy[Any]:
    """Values of the same kind as `old`, edge cases included (NaN, infinities, year 1 and 9999, huge integers): a
    replacement the schema may let through, so the search reaches past it."""
    if isinstance(old, bool):
        return st.booleans()
    if isinstance(old, int | float):
        return st.floats() | st.integers() | st.sampled_from([0, -1, 1e308, -1e308, 2**63, 10**400])
    if isinstance(old, str):
        edges = ["", "\x00", "\ud7ff", "a" * 300, "9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00.000Z"]
        return instants | st.text(max_size=24) | st.sampled_from(edges)
    return json_values


@st.composite
def mutations(draw: st.DrawFn, document: Any) -> Any:
    """`document` with 1-3 changes: a value replaced by one of its kind or any JSON value, deleted, or a key added."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        how = draw(st.sampled_from(["alike", "alike", "alike", "any", "delete", "add"]))
        if how == "delete":
            del parent[path[-1]]
        elif how == "add" and isinstance(parent, dict):
            parent[f"{path[-1]}_x"] = draw(json_values)
        else:
            parent[path[-1]] = draw(_alike(parent[path[-1]]) if how == "alike" else json_values)
    return doc


def _one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "Traceback" not in text


# ------------------------------------------------------------------------------------------------ ingest's judge


EVENT = build_event(CONTEXT, [0.9, 0.1], T0, 60.0, clock={"synced": True, "max_error_ms": 12.5})
SUMMARY = hour_in_parts(CONTEXT, T0 + 1200, T0 + 3600, 60.0, ["Siren"])[0]
topics = st.one_of(
    st.sampled_from(["custom/s1/events", "custom/s1/summary", "custom/s2/events"]),
    st.builds(
        "/".join, st.lists(st.sampled_from(["custom", "s1", "events", "summary", "_alerts", "", "+", "#"]), max_size=4)
    ),  # fmt: skip
    st.text(max_size=30),
)
payloads = st.one_of(
    mutations(EVENT).map(lambda d: json.dumps(d).encode()),
    mutations(SUMMARY).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([json.dumps(EVENT).encode(), json.dumps(SUMMARY).encode()]),
)


messages = st.one_of(
    st.tuples(st.just("custom/s1/events"), mutations(EVENT).map(lambda d: json.dumps(d).encode())),
    st.tuples(st.just("custom/s1/summary"), mutations(SUMMARY).map(lambda d: json.dumps(d).encode())),
    st.tuples(topics, payloads),
)


def test_judge_accepts_only_valid_rows_and_never_raises(ingest_db):
    from custom.ingest.store import Store, connect

    judge = Judge()
    event_schema = _widened(schemas.load(schemas.EVENT), judge.accepted_versions)
    summary_schema = _widened(schemas.load(schemas.SUMMARY), judge.summary_versions)
    tried = {"examples": 0, "events": 0, "summaries": 0, "rejected": 0}
    with connect(ingest_db) as conn:
        store = Store(conn)

        @settings(max_examples=600, **FAST)
        @given(messages)
        def check(message: tuple[str, bytes]) -> None:
            topic, payload = message
            tried["examples"] += 1
            judged = judge.judge(topic, payload)
            if isinstance(judged, EventRow):
                data = json.loads(judged.payload, parse_constant=_no_constant)
                jsonschema.validate(data, event_schema)
                assert topic == f"custom/{data['sensor_id']}/events" and judged.sensor_id == data["sensor_id"]
                store.write([judged], [], [])
                tried["events"] += 1
            elif isinstance(judged, SummaryRow):
                data = json.loads(judged.payload, parse_constant=_no_constant)
                jsonschema.validate(data, summary_schema)
                assert topic == f"custom/{data['sensor_id']}/summary"
                store.write([], [judged], [])
                tried["summaries"] += 1
            else:
                assert isinstance(judged, Rejection) and _one_line(judged.reason), judged
                store.write([], [], [judged])
                tried["rejected"] += 1

        check()
    print(f"\nfuzz judge: {tried}")
    assert tried["events"] and tried["summaries"] and tried["rejected"], "the search never reached a branch"


def _no_constant(name: str) -> None:
    raise AssertionError(f"an accepted row holds {name}, which is not JSON")


# ------------------------------------------------------------------------------------------ dashboard parameters


@pytest.fixture
def dashboard(pg_cluster, ingest_db, make_dashboard):
    from testing.dashboard import reader_dsn, write_fixture_fleet

    write_fixture_fleet(ingest_db, time.time())
    return make_dashboard(reader_dsn(pg_cluster, ingest_db))


timestamps = st.one_of(
    st.datetimes().map(lambda t: t.isoformat()),
    st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat()),
    st.text(max_size=30),
    st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-11-25", "T", "+", " "]),
)
param_values = st.one_of(timestamps, st.text(max_size=12), st.integers().map(str), st.sampled_from(["csv", "json"]))
params = st.dictionaries(
    st.sampled_from(["since", "until", "format", "limit", "sensor_id", "day", "rule"]) | st.text(max_size=6),
    param_values,
    max_size=3,
)
sensor_ids = st.sampled_from(["A", "B", "nope"]) | st.text(max_size=12)
paths = st.one_of(
    st.sampled_from(["/api/sensors", "/api/alerts", "/api/settings", "/api/levels", "/api/over-limit"]),
    st.builds(
        lambda s, p: f"/api/sensors/{quote(s, safe='')}/{p}",
        sensor_ids,
        st.sampled_from(["series", "heatmap", "lden", "health"]),
    ),  # fmt: skip
)


def test_dashboard_answers_any_parameter_without_a_server_error(dashboard):
    tried = {"examples": 0}
    statuses: dict[int, int] = {}

    @settings(max_examples=250, **FAST)
    @given(paths, params)
    def check(path: str, query: dict[str, str]) -> None:
        tried["examples"] += 1
        url = path + ("?" + urlencode(query) if query else "")
        status, kind, body = dashboard.get(url)
        statuses[status] = statuses.get(status, 0) + 1
        assert status in (200, 400, 404), (url, status, body[:300], dashboard.log()[-2000:])
        if status != 200:
            assert kind == "application/json" and _one_line(json.loads(body)["error"]), (url, body)

    check()
    print(f"\nfuzz dashboard: {tried['examples']} requests, statuses {dict(sorted(statuses.items()))}")


# -------------------------------------------------------------------------------------------------- config files


def _sensor_config_text() -> str:
    from custom.daemon.config import render_default_config

    return render_default_config()


def _yaml_texts(base: dict[str, Any]) -> st.SearchStrategy[str]:
    return st.one_of(
        mutations(base).map(lambda d: yaml.safe_dump(d, sort_keys=False)),
        st.text(max_size=120),
        st.lists(
            st.sampled_from(
                [
                    "a:",
                    " b: 1",
                    "- x",
                    "&a [*a]",
                    "!!python/object:os.system",
                    "{",
                    "? x",
                    "mqtt: {port: 1e400}",
                    "<<: *a",
                    "key: .nan",
                    "'\\x00'",
                    "\t",
                    "mqtt: &m {x: *m}",
                    "[" * 500,
                    "window: {length_s: .inf}",
                    "location: {lat: 1" + "0" * 400 + "}",
                    "mqtt: {port: 1" + "0" * 400 + "}",
                    "retention_days: 1" + "0" * 400,
                ]
            ),
            max_size=5,
        ).map("\n".join),
    )


def _search_loader(name: str, texts: st.SearchStrategy[str], path: Path, load: Any, error: type, budget: int) -> None:
    """Write each searched text to `path` and load it: loaded, or `error` on one line; never anything else."""
    tried = {"examples": 0, "loaded": 0, "refused": 0}

    @settings(max_examples=budget, **FAST)
    @given(texts)
    def check(text: str) -> None:
        tried["examples"] += 1
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load(path)
            tried["loaded"] += 1
        except error as exc:
            assert _one_line(str(exc)), repr(str(exc))
            tried["refused"] += 1

    check()
    print(f"\nfuzz {name}: {tried}")
    assert tried["loaded"] and tried["refused"], "the search never reached both outcomes"


def test_sensor_config_loads_or_says_one_line(tmp_path):
    from custom.daemon.config import load_config
    from custom.wire.settings import ConfigError

    base = yaml.safe_load(_sensor_config_text())
    _search_loader("sensor config", _yaml_texts(base), tmp_path / "config.yaml", load_config, ConfigError, 400)


def test_ingest_config_loads_or_says_one_line(tmp_path):
    from custom.ingest.config import load_config
    from custom.wire.settings import ConfigError
    from testing.shared import ROOT

    base = yaml.safe_load((ROOT / "ingest" / "ingest.example.yaml").read_text())
    _search_loader("ingest config", _yaml_texts(base), tmp_path / "ingest.yaml", load_config, ConfigError, 400)


# ---------------------------------------------------------------------------------------------- bundle manifests


def test_bundle_manifest_loads_or_says_one_line(yamnet_bundle, tmp_path):
    """The bundle's files stay (linked); only its manifest.json is searched."""
    from custom.daemon.model.bundle import BundleError, load_bundle

    folder = tmp_path / "bundle"
    folder.mkdir()
    for item in yamnet_bundle.iterdir():
        if item.name != "manifest.json":
            (folder / item.name).symlink_to(item)
    manifest = json.loads((yamnet_bundle / "manifest.json").read_text())
    texts = st.one_of(mutations(manifest).map(json.dumps), st.text(max_size=60), st.just(json.dumps(manifest)))
    _search_loader(
        "bundle manifest", texts, folder / "manifest.json", lambda p: load_bundle(p.parent), BundleError, 300
    )


# ------------------------------------------------------------------------------------- classify on broken audio


@pytest.fixture(scope="module")
def good_wav(shared, tmp_path_factory) -> Path:
    """Three seconds of a real siren clip as 16-bit WAV: the file every fuzzed call also gets, and must score."""
    waveform, rate = soundfile.read(shared / "data/clips/siren/us8k_102871-8-0-8.flac", dtype="float32")
    path = tmp_path_factory.mktemp("fuzz-audio") / "good.wav"
    soundfile.write(path, waveform[: 3 * rate], rate, subtype="PCM_16")
    return path


def _broken(good: bytes, kind: str, cut: float, noise: bytes) -> bytes | None:
    """The bytes of a broken recording, or None for the NaN channel (written by soundfile)."""
    if kind == "zero-length":
        return b""
    if kind == "truncated":
        return good[: min(int(cut * 44), len(good) - 1)]  # inside the header: no sample left to read
    if kind == "wrong-header":
        return noise.ljust(12, b"\0")[:12] + good[12:]
    return None


def test_classify_scores_good_files_and_refuses_each_bad_one(yamnet_bundle, good_wav, tmp_path):
    from custom.daemon.cli import main as sensord

    good = good_wav.read_bytes()
    tried = {"examples": 0, "bad files": 0}

    @settings(max_examples=8, **FAST)
    @given(
        st.lists(
            st.tuples(st.sampled_from(["zero-length", "truncated", "wrong-header", "nan-channel", "inf-sample"]),
                      st.floats(0, 1), st.binary(min_size=1, max_size=12)),
            min_size=1, max_size=3,
        )
    )  # fmt: skip
    def check(broken: list[tuple[str, float, bytes]]) -> None:
        tried["examples"] += 1
        folder = tmp_path / f"call-{tried['examples']}"
        folder.mkdir()
        bad = []
        for k, (kind, cut, noise) in enumerate(broken):
            path = folder / f"{k}-{kind}.wav"
            data = _broken(good, kind, cut, noise)
            if data is None:
                samples = np.zeros((32000, 2), dtype=np.float32)
                samples[:, 0] = np.sin(np.arange(32000) / 5.0)
                samples[:, 1] = np.nan if kind == "nan-channel" else 0.0
                samples[1000, 1] = np.inf if kind == "inf-sample" else samples[1000, 1]
                soundfile.write(path, samples, 16000, subtype="FLOAT")
            else:
                path.write_bytes(data)
            bad.append(path)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = sensord(["classify", "--bundle", str(yamnet_bundle), "--json", *map(str, bad), str(good_wav)])
        lines = err.getvalue().splitlines()
        scored = [json.loads(line)["file"] for line in out.getvalue().splitlines()]
        assert code == 66, (code, lines)
        assert str(good_wav) in scored, "the good file was not scored"
        assert all(math.isfinite(json.loads(line)["level"]["laeq"] or 0.0) for line in out.getvalue().splitlines())
        assert len(lines) == len(bad) and all("Traceback" not in line for line in lines), lines
        for path in bad:
            assert sum(str(path) in line for line in lines) == 1, (path, lines)
            assert str(path) not in scored
        tried["bad files"] += len(bad)
        shutil.rmtree(folder)

    check()
    print(f"\nfuzz classify: {tried}")
