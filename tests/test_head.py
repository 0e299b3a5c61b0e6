"""The trained head: built from ../shared by the real converter command (small: few recordings, one mix each), run
end to end through `classify` and the daemon, loaded by tflite-runtime 2.14, and bad data/bundles refused in one
line with the right exit code."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from custom.convert.classes import CLASS_NAMES
from custom.convert.cli import main as convert
from custom.convert.head.bundle import export_head
from custom.convert.head.fit import OUTPUTS, fit_head
from custom.daemon.model.bundle import load_bundle
from custom.daemon.model.inference import Model
from custom.daemon.model.runtime import RowRunner
from testing.daemon import daemon_config
from tests.conftest import ROOT

SCHEMA = json.loads((ROOT / "wire/event.schema.json").read_text())
SIREN = "data/clips/siren/us8k_102871-8-0-8.flac"
QUICK = ["--limit-per-label", "6", "--augment", "1"]  # the documented small build for tests


@pytest.fixture(scope="module")
def headed_bundle(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("head") / "bundle"
    assert convert(["head", "--shared", str(shared), "--out", str(out), "--backbone", "yamnet", *QUICK]) == 0
    return out


@pytest.fixture(scope="module")
def efficientat_headed_bundle(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("head-efficientat") / "bundle"
    assert convert(["head", "--shared", str(shared), "--out", str(out), "--backbone", "efficientat", *QUICK]) == 0
    return out


@pytest.fixture(scope="module")
def ensemble_bundle(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version-2 bundle: both backbones, a head on each, scores averaged (the real converter, told to ship it)."""
    out = tmp_path_factory.mktemp("head-both") / "bundle"
    args = ["head", "--shared", str(shared), "--out", str(out), "--backbone", "both", "--ship", "averaged", *QUICK]
    assert convert(args) == 0
    return out


def sensord(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "custom.daemon.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_headed_bundle_manifest_and_scores(headed_bundle: Path, shared: Path) -> None:
    bundle = load_bundle(headed_bundle)
    assert bundle.head is not None and bundle.head.classes == bundle.class_names
    provenance = bundle.provenance
    assert provenance["thresholds"]["rule"] and provenance["cross_validated"]["chosen"]["yamnet"]["pooling"]
    model = Model(bundle)
    from custom.daemon.audio.audiofile import read_audio

    scores = model.scores(read_audio(shared / SIREN).waveform).scores
    assert scores.shape == (10,) and np.all((scores >= 0) & (scores <= 1))
    # the head, not the mapping, made these scores: the mapping on the same backbone outputs differs
    outputs, _, _ = model.backbone_outputs(read_audio(shared / SIREN).waveform)
    head = model.head
    model.head = None
    try:
        assert not np.allclose(model.class_scores(outputs), scores)
    finally:
        model.head = head


def test_classify_runs_the_head(headed_bundle: Path, shared: Path) -> None:
    done = sensord("classify", "--bundle", str(headed_bundle), "--json", str(shared / SIREN))
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout.splitlines()[0])
    jsonschema.validate(event, SCHEMA)
    assert event["model"]["bundle_id"] == "yamnet-head-urban10" and len(event["scores"]) == 10


@pytest.mark.parametrize("which", ["headed_bundle", "efficientat_headed_bundle", "ensemble_bundle"])
def test_daemon_runs_the_head(which, request, shared, broker, subscriber_factory, make_daemon, tmp_path) -> None:
    headed_bundle = request.getfixturevalue(which)
    bundle_id = load_bundle(headed_bundle).bundle_id
    subscriber = subscriber_factory(broker, ["custom/test-sensor/events"])
    config = daemon_config(headed_bundle, broker.port, tmp_path / "spool.sqlite", window={"length_s": 2, "hop_s": 2})
    daemon = make_daemon(config, args=["--input", str(shared / SIREN), "--loop"]).start()
    events = subscriber.wait_count("custom/test-sensor/events", 2, timeout=90)
    assert len(events) >= 2, daemon.log()
    for message in events:
        event = message.json()
        jsonschema.validate(event, SCHEMA)
        assert event["model"]["bundle_id"] == bundle_id
    assert daemon.stop() == 0


def test_head_classes_must_match_the_manifest(headed_bundle: Path, shared: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(headed_bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["head"]["classes"] = list(reversed(manifest["head"]["classes"]))
    (broken / "manifest.json").write_text(json.dumps(manifest))
    done = sensord("classify", "--bundle", str(broken), str(shared / SIREN))
    assert done.returncode == 78
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "head.classes" in lines[0] and "Traceback" not in done.stderr


def test_efficientat_head_runs_end_to_end_through_classify(efficientat_headed_bundle: Path, shared: Path) -> None:
    from custom.convert.backbones.efficientat_embed import EfficientATEmbedder
    from custom.daemon.audio.audiofile import read_audio
    from custom.daemon.model.head import pool_features

    bundle = load_bundle(efficientat_headed_bundle)
    assert bundle.backbone == "efficientat" and bundle.head is not None
    assert bundle.head.embedding.shape[-1] == 384 and bundle.head.classes == bundle.class_names
    done = sensord("classify", "--bundle", str(efficientat_headed_bundle), "--json", str(shared / SIREN))
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout.splitlines()[0])
    jsonschema.validate(event, SCHEMA)
    assert event["model"]["bundle_id"] == "efficientat-head-urban10" and len(event["scores"]) == 10
    # the head read the 384-d pooled feature: the same head on the embedder's own (independently exposed) tensor
    # and logits of the first window gives the event's scores
    model = Model(bundle)
    rate = bundle.frontend.sample_rate_hz
    window = read_audio(shared / SIREN, rate).waveform[: 10 * rate]
    got = model.scores(window).scores
    rows = EfficientATEmbedder(shared / "models/efficientat_mn04_as.tflite")(window, rate)
    logits = 1.0 / (1.0 + np.exp(-rows["logits"]))
    features = pool_features(rows["pooled"], logits, bundle.head.pooling, bundle.head.with_scores)
    np.testing.assert_allclose(got, model.head(features).reshape(-1), atol=1e-4)
    np.testing.assert_allclose([event["scores"][n] for n in bundle.class_names], got, atol=2e-3)


@pytest.mark.parametrize("which", ["headed_bundle", "efficientat_headed_bundle", "ensemble_bundle"])
def test_headed_models_run_in_tflite_runtime_214(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    headed_bundle = request.getfixturevalue(which)
    python = os.environ.get("CUSTOM_TFLITE214_PYTHON")
    if not python:
        pytest.fail("CUSTOM_TFLITE214_PYTHON is not set: tests/run.sh creates the tflite-runtime 2.14 venv")
    bundle = load_bundle(headed_bundle)
    assert bundle.head is not None
    features = np.random.default_rng(0).standard_normal((3, bundle.head.model.input.shape[-1])).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    script = ROOT / "tests/tflite214_check.py"
    head_file = headed_bundle / bundle.head.model.file
    done = subprocess.run(
        [python, str(script), str(tmp_path / "features.npy"), str(tmp_path / "out"), str(head_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.load(tmp_path / "out" / f"{head_file.stem}.npy")
    ours = np.stack([Model(bundle).head(f).reshape(-1) for f in features])
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    size = int(np.prod(bundle.backbone_model.input.shape))
    waveform = np.random.default_rng(1).standard_normal((2, size)).astype(np.float32) * 0.1
    np.save(tmp_path / "wave.npy", waveform)
    backbone = headed_bundle / bundle.backbone_model.file
    done = subprocess.run(
        [python, str(script), str(tmp_path / "wave.npy"), str(tmp_path / "out2"), str(backbone)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("output", OUTPUTS)
def test_each_head_output_exports_to_what_both_runtimes_run(output: str, tmp_path: Path) -> None:
    """Whichever output grouped CV picks, the .tflite computes the numpy fit's ten scores (a softmax head's "other"
    sliced off) in ai_edge_litert and in tflite-runtime 2.14, at the shipped float16 weights."""
    python = os.environ.get("CUSTOM_TFLITE214_PYTHON")
    if not python:
        pytest.fail("CUSTOM_TFLITE214_PYTHON is not set: tests/run.sh creates the tflite-runtime 2.14 venv")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    y = np.zeros((300, len(CLASS_NAMES)), dtype=bool)
    y[np.arange(300), np.argmax(x[:, :10], axis=1)] = x.max(axis=1) > 1.0  # "other" where nothing stands out
    head = fit_head(x, y, output)
    path = tmp_path / "head.tflite"
    path.write_bytes(export_head(head, "float16"))
    expected = head.scores(x[:5])
    assert expected.shape == (5, len(CLASS_NAMES))
    ours = RowRunner(path)(x[:5])
    np.testing.assert_allclose(ours, expected, atol=2e-3)
    np.save(tmp_path / "features.npy", x[:5])
    done = subprocess.run(
        [python, str(ROOT / "tests/tflite214_check.py"), str(tmp_path / "features.npy"), str(tmp_path / "out"),
         str(path)], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "out/head.npy"), ours, atol=1e-5)


def _fake_shared(shared: Path, tmp_path: Path, rows: list[dict[str, str]], holdout: list[str] = ()) -> Path:
    """A ../shared-shaped folder: real models and clips manifest, a train-audio manifest with the given rows."""
    fake = tmp_path / "shared"
    (fake / "data/train-audio").mkdir(parents=True)
    (fake / "models").symlink_to(shared / "models")
    (fake / "data/clips").symlink_to(shared / "data/clips")
    (fake / "data/audioset").symlink_to(shared / "data/audioset")
    lines = ["# test holdout list", *(hashlib.sha256(r.encode()).hexdigest() for r in holdout)]
    (fake / "data/holdout-recordings.sha256").write_text("\n".join(lines) + "\n")
    with open(shared / "data/train-audio/manifest.csv", newline="") as handle:
        fields = csv.DictReader(handle).fieldnames
    with open(fake / "data/train-audio/manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return fake


def _rows(shared: Path, label: str, n: int) -> list[dict[str, str]]:
    with open(shared / "data/train-audio/manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] == label][:n]
    for r in rows:
        r["path"] = str(shared / "data/train-audio" / r["path"])
    return rows


def test_training_without_negatives_is_a_data_error(shared: Path, tmp_path: Path, capsys) -> None:
    fake = _fake_shared(shared, tmp_path, _rows(shared, "dog", 2))
    assert convert(["head", "--shared", str(fake), "--out", str(tmp_path / "b"), *QUICK]) == 65
    out = capsys.readouterr().out.strip().splitlines()
    assert "no 'other' recordings" in out[-1] and "Traceback" not in "\n".join(out)


def test_unreadable_audio_names_the_file(shared: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "not-audio.ogg"
    bad.write_text("this is not audio")
    rows = _rows(shared, "other", 2)
    rows[0] = {**rows[0], "path": str(bad), "source_recording": "test:bad"}
    fake = _fake_shared(shared, tmp_path, rows)
    assert convert(["head", "--shared", str(fake), "--out", str(tmp_path / "b"), *QUICK]) == 66
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert str(bad) in last and "unreadable audio" in last


def test_held_out_recordings_are_never_read(shared: Path, tmp_path: Path) -> None:
    from custom.convert.head.data import read_recordings

    rows = _rows(shared, "other", 3)
    rows[0] = {**rows[0], "path": str(tmp_path / "missing.ogg"), "source_recording": "test:held-out"}
    fake = _fake_shared(shared, tmp_path, rows, holdout=["test:held-out"])
    recordings, held_out = read_recordings(fake)
    assert held_out == 1 and all(r.group != "test:held-out" for r in recordings)


def test_a_class_missing_is_a_data_error(shared: Path, tmp_path: Path, capsys) -> None:
    fake = _fake_shared(shared, tmp_path, _rows(shared, "other", 2))
    (fake / "data/clips").unlink()
    (fake / "data/clips").mkdir()
    with open(shared / "data/clips/manifest.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [r for r in reader if r["label"] != "bird"]
        fields = reader.fieldnames
    for r in rows:
        r["path"] = str(shared / "data/clips" / r["path"])
    with open(fake / "data/clips/manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    assert convert(["head", "--shared", str(fake), "--out", str(tmp_path / "b"), *QUICK]) == 65
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "no training recordings for class(es) bird" in last


def test_choice_weighs_cost_only_on_a_tie_and_never_ships_past_the_false_alarm_targets() -> None:
    from custom.convert.head.choose import TIE_LABEL_RECALL, Candidate, Variant, best_output, choose_candidate

    def head(
        name: str, recall: float, cost: float, shippable: bool = True, unseen: float = 0.04, wrong: float = 0.02
    ) -> Candidate:
        none = np.zeros((0, 10))
        variant, features = (Variant("mean", False, False), none) if shippable else (None, None)
        fig = {"label_recall": recall, "false_alarm_other": 0.01, "false_alarm_unseen": unseen, "wrong_label": wrong}
        return Candidate(name, (name,), cost, fig, none, [0.5] * 10, variant=variant, features=features)

    tied = [head("yamnet", 0.850, 123.0), head("efficientat", 0.850 - TIE_LABEL_RECALL / 2, 33.0)]
    assert choose_candidate(tied).name == "efficientat"  # a tie: the cheaper ships
    clear = [head("yamnet", 0.850 + 2 * TIE_LABEL_RECALL, 123.0), head("efficientat", 0.850, 33.0)]
    assert choose_candidate(clear).name == "yamnet"  # a clear win ships, whatever it costs
    combined = [*clear, head("averaged", 0.95, 156.0, shippable=False)]
    assert choose_candidate(combined).name == "yamnet"  # a combination is measured, never shipped
    noisy = [head("yamnet", 0.95, 123.0, unseen=0.08), head("efficientat", 0.80, 33.0)]
    assert choose_candidate(noisy).name == "efficientat"  # more labels, but past the unseen-kind target
    all_noisy = [head("yamnet", 0.95, 123.0, unseen=0.08), head("efficientat", 0.80, 33.0, unseen=0.09)]
    assert choose_candidate(all_noisy).name == "yamnet"  # none within: the best labels still ship
    mislabelling = [head("yamnet", 0.95, 123.0, unseen=0.08, wrong=0.06), head("efficientat", 0.80, 33.0, unseen=0.09)]
    assert choose_candidate(mislabelling).name == "efficientat"  # none within all: hold what can be held first
    near = 0.700 - TIE_LABEL_RECALL / 2
    outputs = [head("sigmoid", 0.700, 1.0, unseen=0.09), head("softmax", near, 1.0, unseen=0.14)]
    assert best_output(outputs).name == "sigmoid"  # a near-tie: fewer mistakes (wrong labels + unseen kinds)
    outputs.append(head("softmax", 0.700 + 2 * TIE_LABEL_RECALL, 1.0, unseen=0.14))
    assert best_output(outputs).figures["label_recall"] > 0.71  # a clear win in label recall stands for the head


def test_two_backbone_bundle_averages_its_members(ensemble_bundle: Path, shared: Path) -> None:
    """Version 2: each member's head pinned to its backbone file; the score is the weighted mean of the members', each
    fed the same 16 kHz window at its own rate."""
    from custom.daemon.audio.audiofile import read_audio
    from custom.daemon.audio.pcm import resample
    from custom.daemon.model.bundle import sha256_file
    from custom.daemon.model.inference import EnsembleModel, open_model

    manifest = json.loads((ensemble_bundle / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert sorted(m["backbone"] for m in manifest["members"]) == ["efficientat", "yamnet"]
    for member in manifest["members"]:
        assert member["head"]["backbone_sha256"] == sha256_file(ensemble_bundle / member["model"]["file"])
    bundle = load_bundle(ensemble_bundle)
    model = open_model(bundle)
    assert isinstance(model, EnsembleModel) and model.input_rate_hz == 16000
    assert sum(bundle.weights) == pytest.approx(1.0)
    window = read_audio(shared / SIREN, 16000).waveform
    scored = model.scores(window)
    got = scored.scores
    parts = [Model(m).scores(resample(window, 16000, m.frontend.sample_rate_hz), apply_veto=False)
             for m in bundle.members]  # fmt: skip
    expected = sum(w * p.scores for w, p in zip(bundle.weights, parts, strict=True))
    factors = [np.where(p.vetoed, m.head.veto.scale, 1.0) for p, m in zip(parts, bundle.members, strict=True)
               if p.vetoed is not None and m.head is not None and m.head.veto is not None]  # fmt: skip
    if factors:  # a member's veto scales the class in the average, once
        expected = expected * np.minimum.reduce(factors)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    side_by_side = open_model(bundle, threads=2)  # two threads: the members run at once, one interpreter thread each
    assert isinstance(side_by_side, EnsembleModel) and side_by_side.parallel
    np.testing.assert_array_equal(side_by_side.scores(window).scores, got)
    assert bundle.class_names[int(np.argmax(got))] == "Siren"
    members_differ = not np.allclose(parts[0].scores, parts[1].scores, atol=1e-3)
    assert members_differ  # the average means something


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d["members"][1].update(band_rate_hz=32000), "members[1].band_rate_hz: 32000 Hz disagrees"),
        (lambda d: d["members"][1].update(window_s=5.0), "members[1].window_s: 5.0 s disagrees"),
        (lambda d: d["members"][0]["head"].update(backbone_sha256="0" * 64), "members[0].head.backbone_sha256"),
        (lambda d: d["members"][0].update(weight=0.9), "members: weights must sum to 1"),
        (
            lambda d: d["members"][0]["head"].update(
                veto={"foreign_outputs": [1], "class_outputs": [[0]] * 3, "min_score": 0.5}
            ),
            "members[0].head.veto.class_outputs: has 3 entries for 10 classes",
        ),
        (
            lambda d: d["members"][0]["head"].update(
                veto={"foreign_outputs": [99999], "class_outputs": [[0]] * 10, "min_score": 0.5}
            ),
            "members[0].head.veto: names backbone output(s) [99999] outside 0..",
        ),
    ],
)
def test_bad_two_backbone_bundles_are_refused_in_one_line(ensemble_bundle, shared, tmp_path, edit, key) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(ensemble_bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    edit(manifest)
    (broken / "manifest.json").write_text(json.dumps(manifest, indent=2))
    done = sensord("classify", "--bundle", str(broken), str(shared / SIREN))
    assert done.returncode == 78, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_foreign_labels_come_from_the_ontology(shared: Path) -> None:
    """Foreign = neither a class, an ancestor of one, nor street background: a chainsaw, music, a hen are foreign;
    a siren, a bark (a Dog descendant), a car (traffic's sibling, under Vehicle) and speech are not."""
    from custom.convert.backbones.yamnet import read_class_map
    from custom.convert.head.veto import veto_source
    from custom.convert.ontology import Ontology

    ontology = Ontology.load(shared / "data/audioset/ontology.json")
    class_map = read_class_map(shared / "data/audioset/class_labels_indices.csv")
    source = veto_source("efficientat", class_map, ontology, np.zeros((1, len(class_map))))
    foreign = set(source.foreign)
    for name in ("Chainsaw", "Music", "Chicken, rooster", "Rain", "Air conditioning", "Drill"):
        assert class_map[ontology.mid(name)] in foreign, name
    for name in ("Siren", "Bark", "Car", "Speech", "Jackhammer", "Traffic noise, roadway noise"):
        assert class_map[ontology.mid(name)] not in foreign, name
    dog = CLASS_NAMES.index("Dog")
    assert class_map[ontology.mid("Bark")] in source.class_outputs[dog]  # a class's own outputs include descendants


@pytest.mark.parametrize("scale", [None, 0.1])
def test_the_veto_silences_what_the_backbone_hears_as_a_foreign_kind(
    ensemble_bundle: Path, shared: Path, tmp_path: Path, scale: float | None
) -> None:
    """The EfficientAT member given the converter's veto: on real chainsaw recordings (a kind no class covers) the
    classes its scores say are drowned by a foreign sound keep `scale` of their score in the average (a manifest
    without `scale`, as written before it existed: 0); a siren keeps its Siren score."""
    from custom.convert.backbones.yamnet import read_class_map
    from custom.convert.head.veto import veto_source
    from custom.convert.ontology import Ontology
    from custom.daemon.audio.audiofile import read_audio
    from custom.daemon.model.bundle import manifest_data
    from custom.daemon.model.inference import open_model

    def without_vetoes(name: str) -> tuple[Path, dict]:  # the build may have given a member a veto of its own
        copy = tmp_path / name
        shutil.copytree(ensemble_bundle, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        for m in manifest["members"]:
            m["head"].pop("veto", None)
        (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return copy, manifest

    plain_bundle = without_vetoes("plain")[0]
    plain = open_model(load_bundle(plain_bundle))
    vetoing, manifest = without_vetoes("vetoing")
    ontology = Ontology.load(shared / "data/audioset/ontology.json")
    class_map = read_class_map(shared / "data/audioset/class_labels_indices.csv")
    spec = veto_source("efficientat", class_map, ontology, np.zeros((1, len(class_map)))).spec(0.3, 1.0)
    member = next(m for m in manifest["members"] if m["backbone"] == "efficientat")
    member["head"]["veto"] = manifest_data(spec)
    if scale is None:
        del member["head"]["veto"]["scale"]
    else:
        member["head"]["veto"]["scale"] = scale
    (vetoing / "manifest.json").write_text(json.dumps(manifest, indent=2))
    model = open_model(load_bundle(vetoing))

    with open(shared / "data/train-audio/manifest.csv", newline="") as handle:
        chainsaws = [r["path"] for r in csv.DictReader(handle) if r["source_class"] == "chainsaw"][:6]
    silenced, masks = 0, []
    for path in chainsaws:
        window = read_audio(shared / "data/train-audio" / path, 16000).waveform
        got, before = model.scores(window), plain.scores(window)
        assert got.vetoed is not None
        masks.append(got.vetoed)
        np.testing.assert_allclose(got.scores[got.vetoed], before.scores[got.vetoed] * (scale or 0.0), atol=1e-6)
        np.testing.assert_allclose(got.scores[~got.vetoed], before.scores[~got.vetoed], atol=1e-6)
        silenced += int(got.vetoed[int(np.argmax(before.scores))])  # what the heads alone would have named
    assert silenced >= len(chainsaws) // 2, f"the chainsaw was heard as foreign in only {silenced} of {len(chainsaws)}"
    siren = model.scores(read_audio(shared / SIREN, 16000).waveform)
    assert siren.vetoed is not None and not siren.vetoed[list(model.bundle.class_names).index("Siren")]

    # the event names what the veto scaled down (empty when it did not act); a bundle without a veto says nothing
    files = [str(shared / "data/train-audio" / path) for path in chainsaws[:2]] + [str(shared / SIREN)]
    masks = [*masks[:2], siren.vetoed]
    assert masks[0].any() or masks[1].any(), "no chainsaw vetoed: the event check below proves nothing"
    for bundle, expected in ((vetoing, masks), (plain_bundle, [None] * len(files))):
        done = sensord("classify", "--bundle", str(bundle), "--json", *files)
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(events) == len(files)
        for event, mask in zip(events, expected, strict=True):
            jsonschema.validate(event, SCHEMA)
            names = None if mask is None else [n for n, hit in zip(model.bundle.class_names, mask, strict=True) if hit]
            assert event.get("vetoed") == names, event["file"]


def test_the_written_veto_is_the_setting_the_build_chose(ensemble_bundle: Path) -> None:
    """The members' `head.veto` entries spell out exactly the setting grouped CV picked (recorded in provenance)."""
    manifest = json.loads((ensemble_bundle / "manifest.json").read_text())
    chosen = manifest["provenance"]["cross_validated"]["head"]["veto"]
    vetoes = [(m["backbone"], m["head"]["veto"]) for m in manifest["members"] if "veto" in m["head"]]
    written = "none"
    if vetoes:
        assert len({(v["min_score"], v["max_own"]) for _, v in vetoes}) == 1, vetoes  # one setting, every source
        v = vetoes[0][1]
        own = f", own < {v['max_own']:g}" if v["max_own"] < 1.0 else ""
        written = f"{'+'.join(b for b, _ in vetoes)} >= {v['min_score']:g}{own}"
    assert written == chosen
