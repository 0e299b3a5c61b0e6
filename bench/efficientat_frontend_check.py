"""Check the numpy EfficientAT front end against EfficientAT's own torch preprocessing, on real clips.

    python -m bench.efficientat_frontend_check [--clips N]  # repo root; needs torch (CPU build); not in CI

The reference below is EfficientAT's `AugmentMelSTFT.forward` in eval mode (fschmid56/EfficientAT, commit
bcaaae82530fc70fa3ce1274fd6278fe6aaaa008, models/preprocess.py), run in torch: conv1d pre-emphasis, torch.stft,
power, Kaldi mel banks, log, fast normalisation. Only `torchaudio.compliance.kaldi.get_mel_banks` is rewritten here in
torch (same formulas, float32 as torchaudio computes them), so the check needs no torchaudio wheel. The numpy front
end pre-emphasises without dropping a sample, which equals the reference run on the window with one zero sample in
front, so that is what the reference is given. Prints max/mean |difference| of the normalised log-mel per clip and
overall. Torch is imported only here, never by the sensor or the converter.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from custom.daemon.audio.audiofile import read_audio
from custom.daemon.model.frontend_efficientat import EFFICIENTAT, EfficientATFrontend
from testing.shared import shared_dir


def kaldi_mel_banks_torch(torch, num_bins: int, n_fft: int, sr: int, low: float, high: float):  # noqa: ANN001
    """torchaudio.compliance.kaldi.get_mel_banks with vtln_warp_factor 1.0 (no warp), float32 like the original."""
    num_fft_bins = n_fft // 2
    fft_bin_width = sr / n_fft

    def mel(f):  # noqa: ANN001, ANN202
        return 1127.0 * (1.0 + f / 700.0).log()

    mel_low = 1127.0 * np.log(1.0 + low / 700.0)
    mel_high = 1127.0 * np.log(1.0 + high / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    freqs_mel = mel(fft_bin_width * torch.arange(num_fft_bins)).unsqueeze(0)
    up = (freqs_mel - left) / (center - left)
    down = (right - freqs_mel) / (right - center)
    return torch.max(torch.zeros(1), torch.min(up, down))  # (num_bins, num_fft_bins)


def reference_log_mel(torch, waveform_32k: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024).eval()(x), fmax 15 kHz."""
    p = EFFICIENTAT
    x = torch.from_numpy(np.concatenate([[0.0], waveform_32k]).astype(np.float32))[None]
    coefficient = torch.as_tensor([[[-p.preemphasis, 1.0]]])
    x = torch.nn.functional.conv1d(x.unsqueeze(1), coefficient).squeeze(1)
    window = torch.hann_window(p.stft_window_samples, periodic=False)
    spec = torch.stft(
        x,
        p.fft_length,
        hop_length=p.hop_samples,
        win_length=p.stft_window_samples,
        center=True,
        normalized=False,
        window=window,
        return_complex=True,
    )
    power = spec.real**2 + spec.imag**2  # == (view_as_real(spec) ** 2).sum(-1), the original's return_complex=False
    banks = kaldi_mel_banks_torch(torch, p.mel_bands, p.fft_length, p.sample_rate_hz, p.mel_min_hz, p.mel_max_hz)
    banks = torch.nn.functional.pad(banks, (0, 1), mode="constant", value=0)
    mel = torch.matmul(banks, power)
    return ((torch.log(mel + p.log_offset) + p.norm_shift) / p.norm_scale)[0].numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=10, help="clips of shared/data/clips to check")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("efficientat_frontend_check: torch is not installed (pip install torch, CPU build): skipped")
        return 0
    manifest = shared_dir() / "data/clips/manifest.csv"
    rows = [line.split(",")[0] for line in manifest.read_text().splitlines()[1:]]
    picked = rows[:: max(1, len(rows) // args.clips)][: args.clips]
    frontend = EfficientATFrontend()
    worst, total, count = 0.0, 0.0, 0
    print(f"{'clip':<48} {'frames':>6} {'max |diff|':>11} {'mean |diff|':>12}")
    for rel in picked:
        waveform = read_audio(manifest.parent / rel, EFFICIENTAT.sample_rate_hz).waveform[: EFFICIENTAT.patch_samples]
        ours = frontend.log_mel(waveform)
        ref = reference_log_mel(torch, waveform)
        if ours.shape != ref.shape:
            print(f"{rel}: shape {ours.shape} != reference {ref.shape}")
            return 1
        diff = np.abs(ours.astype(np.float64) - ref)
        worst, total, count = max(worst, float(diff.max())), total + float(diff.sum()), count + diff.size
        print(f"{rel:<48} {ours.shape[1]:>6} {diff.max():>11.2e} {diff.mean():>12.2e}")
    mean = total / count
    print(f"all {len(picked)} clips: max |diff| {worst:.2e}, mean |diff| {mean:.2e} (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
