"""AudioSet embedding postprocess: PCA whitening + 8-bit quantisation, the one implementation.

The released AudioSet embeddings (and so our classifier's training data) went through exactly this step, so a live
VGGish embedding must too, or the classifier sees a different distribution than it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audioset_params import QUANTIZE_MAX_VAL, QUANTIZE_MIN_VAL

PCA_MEANS_NAME = "pca_means"
PCA_EIGEN_VECTORS_NAME = "pca_eigen_vectors"


@dataclass(frozen=True)
class AudioSetPCA:
    means: np.ndarray  # (128,)
    eigen_vectors: np.ndarray  # (128, 128), rows are components

    @classmethod
    def load(cls, path: Path | str) -> AudioSetPCA:
        with np.load(path, allow_pickle=False) as params:
            means = np.asarray(params[PCA_MEANS_NAME], dtype=np.float64).reshape(-1)
            vectors = np.asarray(params[PCA_EIGEN_VECTORS_NAME], dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != means.shape[0]:
            raise ValueError(f"{path}: PCA shapes do not match: means {means.shape}, eigen vectors {vectors.shape}")
        return cls(means=means, eigen_vectors=vectors)

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """(frames, 128) float VGGish embeddings -> (frames, 128) uint8, as in vggish_postprocess.Postprocessor."""
        pca = (np.asarray(embeddings, dtype=np.float64) - self.means) @ self.eigen_vectors.T  # (frames, 128)
        clipped = np.clip(pca, QUANTIZE_MIN_VAL, QUANTIZE_MAX_VAL)
        scaled = (clipped - QUANTIZE_MIN_VAL) * (255.0 / (QUANTIZE_MAX_VAL - QUANTIZE_MIN_VAL))
        quantized: np.ndarray = scaled.astype(np.uint8)  # truncation, as upstream
        return quantized
