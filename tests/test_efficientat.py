"""EfficientAT mn04 as a second backbone: its numpy front end, its exposed embeddings, and its bundle end to end.

Real parts only: the real `efficientat_mn04_as.tflite`, real clips from ../shared, the real TFLite runtimes and
`custom-sensord classify` as a subprocess. The front end is checked here against a direct computation written
from EfficientAT's definition (explicit DFT, explicit Kaldi triangles); `bench/efficientat_frontend_check.py` checks
it against EfficientAT's own torch code where torch is installed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from custom.daemon.audio.audiofile import read_audio
from custom.daemon.model.bundle import BundleError, load_bundle
from custom.daemon.model.frontend_efficientat import EFFICIENTAT, EfficientATFrontend
from tests.conftest import ROOT

MODEL = "models/efficientat_mn04_as.tflite"
SIREN = "data/clips/siren/us8k_102871-8-0-8.flac"  # 4 s
BIRD = "data/clips/bird/xc563936_t000.flac"  # ~10 s
CHATTER = "data/clips/chatter/moodist_cafe_t113.flac"  # 10 s


def _direct_log_mel(waveform: np.ndarray, frames: range) -> np.ndarray:
    """EfficientAT's eval-time features for the given frames, computed the slow, obvious way."""
    x = np.concatenate([[0.0], waveform.astype(np.float64)])
    emphasized = np.convolve(x, [1.0, -0.97], mode="valid")  # EfficientAT's conv1d [-0.97, 1] as a convolution
    half = 512
    padded = np.concatenate([emphasized[half:0:-1], emphasized, emphasized[-2 : -half - 2 : -1]])  # reflect
    n = np.arange(800)
    window = np.zeros(1024)
    window[112:912] = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / 799)  # symmetric Hann, centred in the 1024 frame
    k = np.arange(513)[:, None]
    dft = np.exp(-2j * np.pi * k * np.arange(1024)[None, :] / 1024)  # (513, 1024)
    banks = np.zeros((128, 513))
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    delta = (mel(15000.0) - mel(0.0)) / 129
    for m in range(128):
        left, center, right = m * delta, (m + 1) * delta, (m + 2) * delta
        for b in range(512):  # Kaldi's banks stop below Nyquist; bin 512 keeps weight 0
            f = mel(b * 32000 / 1024)
            banks[m, b] = max(0.0, min((f - left) / (center - left), (right - f) / (right - center)))
    out = []
    for t in frames:
        spectrum = dft @ (padded[t * 320 : t * 320 + 1024] * window)
        out.append((np.log(banks @ np.abs(spectrum) ** 2 + 1e-5) + 4.5) / 5.0)
    return np.stack(out, axis=1)  # (128, len(frames))


@pytest.mark.parametrize("use_scipy", [False, True], ids=["numpy-float64", "scipy-float32"])
def test_frontend_matches_direct_computation_on_a_real_clip(shared: Path, use_scipy: bool) -> None:
    """Both FFT paths (scipy's float32 where the `fastfft` extra is installed, numpy's float64 otherwise)."""
    waveform = read_audio(shared / CHATTER, EFFICIENTAT.sample_rate_hz).waveform[: EFFICIENTAT.patch_samples]
    ours = EfficientATFrontend(use_scipy=use_scipy).log_mel(waveform)
    assert ours.shape == (128, 1001)  # 10 s at 32 kHz: exactly the model's input
    frames = range(0, 1001, 50)
    direct = _direct_log_mel(waveform, frames)
    assert np.abs(ours[:, list(frames)] - direct).max() < 1e-3
    assert ours[:, list(frames)].std() > 0.1  # real sound, not the log floor everywhere


def test_short_clip_is_padded_to_one_model_input(shared: Path) -> None:
    waveform = read_audio(shared / SIREN, EFFICIENTAT.sample_rate_hz).waveform  # 4 s
    patches = EfficientATFrontend().log_mel_patches(waveform)
    assert patches.shape == (1, 128, 1001)
    assert np.allclose(patches[0, :, -100:], (math.log(1e-5) + 4.5) / 5.0, atol=1e-6)  # padded silence at the floor


@pytest.fixture(scope="module")
def embedder(shared: Path):
    from custom.convert.backbones.efficientat_embed import EfficientATEmbedder

    return EfficientATEmbedder(shared / MODEL)


def test_exposed_embeddings_reproduce_the_models_own_logits(embedder, shared: Path) -> None:
    """The 384-d and 512-d outputs are the tensors that feed the last layers: the model's own weights applied to
    them in numpy give its 527 logits, and exposing them leaves the logits bit-identical."""
    from custom.convert.backbones.efficientat_embed import logits_from_embeddings
    from custom.daemon.model.runtime import load_interpreter

    weights = embedder.weights()
    original = load_interpreter(shared / MODEL)
    inp, out = original.get_input_details()[0], original.get_output_details()[0]
    for clip in (SIREN, BIRD, CHATTER):
        waveform = read_audio(shared / clip, 16000).waveform
        result = embedder(waveform, 16000)
        assert result["pooled"].shape == (1, 384) and result["hidden"].shape == (1, 512)
        hidden, logits = logits_from_embeddings(result["pooled"], weights)
        scale = np.abs(result["logits"]).max()
        assert np.abs(hidden - result["hidden"]).max() < 1e-4
        assert np.abs(logits - result["logits"]).max() < 1e-5 * max(1.0, scale)
        patch = embedder.frontend.log_mel_patches(read_audio(shared / clip, 32000).waveform)[0]
        original.set_tensor(inp["index"], patch[None, :, :, None])
        original.invoke()
        assert np.array_equal(original.get_tensor(out["index"]), result["logits"])


def test_expose_outputs_refuses_tensors_that_are_not_computed(shared: Path, embedder) -> None:
    from custom.convert.tflite.outputs import expose_outputs

    model_bytes = (shared / MODEL).read_bytes()
    with pytest.raises(ValueError, match="not computed"):
        expose_outputs(model_bytes, [embedder.tensors.fc1_weights])  # a constant weight
    with pytest.raises(ValueError, match="does not exist"):
        expose_outputs(model_bytes, [10**6])


def test_edited_model_runs_in_tflite_runtime_214(embedder, shared: Path, tmp_path: Path) -> None:
    python = os.environ.get("CUSTOM_TFLITE214_PYTHON")
    if not python:
        pytest.fail("CUSTOM_TFLITE214_PYTHON is not set: tests/run.sh creates the tflite-runtime 2.14 venv")
    model = tmp_path / "edited.tflite"
    model.write_bytes(embedder.model_bytes)
    patch = embedder.frontend.log_mel_patches(read_audio(shared / BIRD, 32000).waveform)[:1]
    np.save(tmp_path / "input.npy", patch[:, :, :, None])
    script = (
        "import sys, numpy as np\n"
        "from tflite_runtime.interpreter import Interpreter\n"
        "it = Interpreter(model_path=sys.argv[1]); it.allocate_tensors()\n"
        "it.set_tensor(it.get_input_details()[0]['index'], np.load(sys.argv[2])); it.invoke()\n"
        "np.savez(sys.argv[3], **{str(d['index']): it.get_tensor(d['index']) for d in it.get_output_details()})\n"
    )
    done = subprocess.run(
        [python, "-c", script, str(model), str(tmp_path / "input.npy"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.load(tmp_path / "out.npz")
    ours = embedder(read_audio(shared / BIRD, 32000).waveform)
    t = embedder.tensors
    assert sorted(theirs.files) == sorted(str(i) for i in (t.logits, t.pooled, t.hidden))
    assert np.allclose(theirs[str(t.pooled)].reshape(-1), ours["pooled"][0], atol=1e-4)
    assert np.allclose(theirs[str(t.hidden)].reshape(-1), ours["hidden"][0], atol=1e-4)
    assert np.allclose(theirs[str(t.logits)].reshape(-1), ours["logits"][0], atol=1e-3)


@pytest.fixture(scope="module")
def efficientat_bundle(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mapping bundle built by the real converter command (no --clips: default thresholds, to keep CI quick)."""
    from custom.convert.backbones.efficientat import shared_layout_args
    from custom.convert.cli import main as convert

    args = shared_layout_args(shared)
    args = args[: args.index("--clips")]
    out = tmp_path_factory.mktemp("bundles") / "efficientat"
    assert convert(["efficientat", *args, "--out", str(out)]) == 0
    return out


def test_bundle_classifies_real_clips_through_classify(efficientat_bundle: Path, shared: Path) -> None:
    bundle = load_bundle(efficientat_bundle)
    assert bundle.backbone == "efficientat" and bundle.frontend.sample_rate_hz == 32000
    schema = json.loads((ROOT / "wire/event.schema.json").read_text())
    command = [sys.executable, "-m", "custom.daemon.cli", "classify", "--json", "--bundle", str(efficientat_bundle)]
    done = subprocess.run(
        [*command, str(shared / SIREN), str(shared / BIRD)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(events) == 2
    for event in events:
        jsonschema.validate(event, schema)
        assert event["model"]["bundle_id"] == "efficientat-mn04-urban10"
    assert [e["top"]["name"] for e in events] == ["Siren", "Bird"]


def test_efficientat_class_without_backbone_outputs_is_refused(efficientat_bundle: Path, tmp_path: Path) -> None:
    manifest = json.loads((efficientat_bundle / "manifest.json").read_text())
    del manifest["classes"][3]["backbone_outputs"]
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in manifest["files"]:
        (bad / name).symlink_to(efficientat_bundle / name)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"classes\[3\]\.backbone_outputs.*efficientat"):
        load_bundle(bad)


def test_frontend_matches_efficientat_torch_reference(shared: Path) -> None:
    """EfficientAT's own preprocessing in torch, where torch is installed (never in CI: it is not a dependency)."""
    torch = pytest.importorskip("torch")
    from bench.efficientat_frontend_check import reference_log_mel

    waveform = read_audio(shared / CHATTER, EFFICIENTAT.sample_rate_hz).waveform[: EFFICIENTAT.patch_samples]
    assert np.abs(EfficientATFrontend().log_mel(waveform) - reference_log_mel(torch, waveform)).max() < 1e-3


@pytest.mark.parametrize(
    ("model", "code", "needle"),
    [("models/missing.tflite", 66, "no such file"), ("models/yamnet_classification.tflite", 78, "not a 10 s")],
)
def test_converter_bad_model_is_one_line(shared: Path, tmp_path: Path, model: str, code: int, needle: str) -> None:
    from custom.convert.backbones.efficientat import shared_layout_args

    args = shared_layout_args(shared)
    args[args.index("--tflite") + 1] = str(shared / model)
    command = [sys.executable, "-m", "custom.convert.cli", "efficientat", *args, "--out", str(tmp_path / "b")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == code
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "b").exists()


def test_daemon_runs_the_bundle_to_the_broker(
    efficientat_bundle: Path, shared: Path, broker, subscriber_factory, make_daemon, tmp_path: Path
) -> None:
    """`custom-sensord run` on a replayed siren recording: windows resampled to 32 kHz, events on a real broker."""
    from testing.daemon import daemon_config

    subscriber = subscriber_factory(broker, ["custom/test-sensor/events"])
    config = daemon_config(efficientat_bundle, broker.port, tmp_path / "spool.sqlite")
    daemon = make_daemon(config, args=["--input", str(shared / SIREN), "--loop"]).start()
    messages = subscriber.wait_count("custom/test-sensor/events", 2, timeout=120)
    assert len(messages) >= 2, daemon.log()
    schema = json.loads((ROOT / "wire/event.schema.json").read_text())
    for event in (m.json() for m in messages[:2]):
        jsonschema.validate(event, schema)
        assert event["model"]["bundle_id"] == "efficientat-mn04-urban10"
        assert event["top"]["name"] == "Siren"
    assert daemon.stop() == 0
