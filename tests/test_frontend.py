"""The numpy front end against independent formulas and against the real YAMNet models in ../shared."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile

from custom.daemon.audio.pcm import to_model_rate, to_mono_float32
from custom.daemon.model.frontend import VGGISH, YAMNET, Frontend, FrontendParams, mel_matrix
from custom.daemon.model.runtime import load_interpreter


def _mel(f_hz: float) -> float:
    return 1127.0 * math.log(1.0 + f_hz / 700.0)


def _reference_mel_weights(params: FrontendParams) -> np.ndarray:
    """Triangle weights written out from the published definition, one scalar at a time."""
    bins = params.fft_length // 2 + 1
    lo, hi = _mel(params.mel_min_hz), _mel(params.mel_max_hz)
    edges = [lo + (hi - lo) * i / (params.mel_bands + 1) for i in range(params.mel_bands + 2)]
    weights = np.zeros((bins, params.mel_bands))
    for k in range(1, bins):  # the DC bin carries no weight
        m = _mel(k * params.sample_rate_hz / params.fft_length)
        for b in range(params.mel_bands):
            left, centre, right = edges[b], edges[b + 1], edges[b + 2]
            weights[k, b] = max(0.0, min((m - left) / (centre - left), (right - m) / (right - centre)))
    return weights


def test_vggish_parameters_follow_the_published_values():
    assert VGGISH.sample_rate_hz == 16000
    assert VGGISH.window_samples == 400 and VGGISH.hop_samples == 160  # 25 ms / 10 ms
    assert VGGISH.fft_length == 2 ** math.ceil(math.log2(VGGISH.window_samples))
    assert (VGGISH.mel_bands, VGGISH.mel_min_hz, VGGISH.mel_max_hz) == (64, 125.0, 7500.0)
    assert VGGISH.log_offset == 0.01 and YAMNET.log_offset == 0.001
    assert VGGISH.patch_hop_frames == 96 and YAMNET.patch_hop_frames == 48
    assert VGGISH.patch_samples == 15600  # 0.975 s: one 96-frame patch


def test_mel_matrix_matches_the_formula():
    np.testing.assert_allclose(mel_matrix(VGGISH), _reference_mel_weights(VGGISH), atol=1e-12)


def test_vggish_log_mel_matches_a_direct_dft():
    """Frame 7 of a chirp, computed with an explicit DFT sum and a periodic Hann from its formula."""
    rng = np.random.default_rng(1)
    wave = 0.3 * np.sin(2 * np.pi * np.cumsum(np.linspace(200, 5000, 16000)) / 16000) + 0.01 * rng.standard_normal(
        16000
    )
    wave = wave.astype(np.float32)
    frontend = Frontend(VGGISH)
    log_mel = frontend.log_mel(wave)
    assert log_mel.shape == (1 + (16000 - 400) // 160, 64)

    frame = wave[7 * 160 : 7 * 160 + 400].astype(np.float64)
    n = np.arange(400)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / 400)
    k = np.arange(257)[:, None]
    dft = np.abs(np.sum(frame * hann * np.exp(-2j * np.pi * k * n / 512), axis=1))
    expected = np.log(dft @ _reference_mel_weights(VGGISH) + 0.01)
    np.testing.assert_allclose(log_mel[7], expected, atol=2e-4)


def test_ten_second_window_gives_ten_vggish_patches_and_twenty_yamnet_patches():
    wave = np.zeros(160000, dtype=np.float32)
    assert Frontend(VGGISH).log_mel_patches(wave).shape == (10, 96, 64)
    assert Frontend(YAMNET).log_mel_patches(wave).shape == (19, 96, 64)
    assert Frontend(YAMNET).waveform_patches(wave).shape == (19, 15600)


def test_input_conversion_any_dtype_rate_and_channels():
    t = np.arange(48000) / 48000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1)
    as_int16 = (stereo * 16384).astype(np.int16)
    mono = to_model_rate(as_int16, 48000)
    assert mono.dtype == np.float32 and mono.ndim == 1
    assert abs(len(mono) - 16000) <= 1
    assert np.sqrt(np.mean(mono[100:-100] ** 2)) == pytest.approx(0.5 / math.sqrt(2), rel=0.01)
    assert to_mono_float32(np.array([0, 128, 255], dtype=np.uint8))[1] == 0.0


def _run(interpreter, x: np.ndarray) -> np.ndarray:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).reshape(-1)


def _real_patches(shared, frontend: Frontend) -> list[np.ndarray]:
    clips = ["siren/us8k_102871-8-0-8.flac", "dog/us8k_115537-3-0-0.flac", "bird/esc50_1-38560-A-14.flac"]
    pieces = []
    for name in clips:
        audio, rate = soundfile.read(shared / "data/clips" / name, dtype="float32")
        pieces.extend(frontend.waveform_patches(to_model_rate(audio, rate))[:4])
    pieces.append(to_mono_float32(np.fromfile(shared / "models/yamnet_testdata/yamnet_test_audio.bin", "<i2")))
    return pieces


def test_our_log_mel_equals_the_reference_front_end_inside_tf_hub_yamnet(shared):
    """TF-Hub YAMNet computes the reference log-mel in its graph; read that tensor and compare."""
    from ai_edge_litert.interpreter import Interpreter

    model = Interpreter(str(shared / "models/yamnet_classification.tflite"), experimental_preserve_all_tensors=True)
    model.allocate_tensors()
    (log_mel_tensor,) = [d["index"] for d in model.get_tensor_details() if d["name"] == "log_mel_spectrogram"]
    frontend = Frontend(YAMNET)
    worst = 0.0
    for piece in _real_patches(shared, frontend):
        _run(model, piece)
        worst = max(worst, float(np.abs(model.get_tensor(log_mel_tensor) - frontend.log_mel(piece)).max()))
    print(f"max |log-mel difference| vs the reference graph: {worst:.2e}")
    assert worst < 1e-4


def test_our_front_end_feeding_the_spectrogram_model_scores_like_tf_hub_yamnet(shared):
    """End to end: Coral's patch-input model on our log-mel vs TF-Hub's model on the waveform. The two int8
    bodies were quantised separately, so scores differ in steps of ~1/128 even with identical input."""
    waveform_model = load_interpreter(shared / "models/yamnet_classification.tflite")
    patch_model = load_interpreter(shared / "models/yamnet_spectra_in.tflite")
    frontend = Frontend(YAMNET)
    differences, agree = [], 0
    pieces = _real_patches(shared, frontend)
    for piece in pieces:
        reference = _run(waveform_model, piece)
        ours = _run(patch_model, frontend.log_mel(piece)[None].astype(np.float32))
        differences.append(float(np.abs(reference - ours).max()))
        agree += int(np.argmax(reference)) == int(np.argmax(ours))
    print(
        f"score difference over {len(pieces)} patches x 521: max {max(differences):.4f}, "
        f"median {np.median(differences):.4f}; top-1 agrees on {agree}/{len(pieces)}"
    )
    assert max(differences) < 0.15 and agree >= 0.8 * len(pieces)


def test_coral_test_spectrogram_is_peak_normalised_audio_with_the_vggish_offset(shared):
    """Coral's patch sits ~+1.4 above ours: it was made from audio scaled to peak 1.0 (x 32768/8078 = e^1.40)
    with log offset 0.01 instead of YAMNet's 0.001. With both undone, it matches our front end."""
    audio = np.fromfile(shared / "models/yamnet_testdata/yamnet_test_audio.bin", "<i2")
    coral = np.fromfile(shared / "models/yamnet_testdata/yamnet_test_spectra.bin", "<f4").reshape(96, 64)
    ours = Frontend(YAMNET).log_mel(to_mono_float32(audio))
    assert 1.3 < float(np.mean(coral - ours)) < 1.5
    peak_normalised = to_mono_float32(audio) / (np.abs(audio).max() / 32768.0)
    explained = Frontend(FrontendParams(log_offset=0.01)).log_mel(peak_normalised)
    assert float(np.abs(coral - explained).max()) < 1e-3
