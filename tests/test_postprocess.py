"""The AudioSet postprocess (PCA, clip to [-2, 2], 8-bit) against the formula, on the real vggish_pca_params.npz.

The reference below is written the way upstream vggish_postprocess.Postprocessor writes it (means as a column,
matrix times (x.T - means), transposed back), so it is a second derivation of the same formula, not a copy of ours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from custom.daemon.model.postprocess import AudioSetPCA


@pytest.fixture(scope="module")
def pca_path(shared: Path) -> Path:
    return shared / "models" / "vggish_pca_params.npz"


@pytest.fixture(scope="module")
def pca(pca_path: Path) -> AudioSetPCA:
    return AudioSetPCA.load(pca_path)


def upstream_postprocess(embeddings: np.ndarray, npz: Path) -> np.ndarray:
    with np.load(npz) as params:
        matrix = params["pca_eigen_vectors"]
        means = params["pca_means"].reshape(-1, 1)  # upstream reshapes the 1-D means to (128, 1)
    pca_applied = np.dot(matrix, (embeddings.T - means)).T
    clipped = np.clip(pca_applied, -2.0, 2.0)
    return ((clipped - -2.0) * (255.0 / (2.0 - -2.0))).astype(np.uint8)


def embeddings_for(pca: AudioSetPCA, pca_values: np.ndarray) -> np.ndarray:
    """Embeddings whose PCA projection is exactly `pca_values` (rows), by solving E (x - m) = v."""
    return (np.linalg.solve(pca.eigen_vectors, pca_values.T).T + pca.means).astype(np.float64)


def test_real_pca_file_shapes(pca: AudioSetPCA) -> None:
    assert pca.means.shape == (128,)
    assert pca.eigen_vectors.shape == (128, 128)


def test_hand_computed_levels(pca: AudioSetPCA) -> None:
    # PCA value -> uint8: (v + 2) * 63.75, truncated; beyond +-2 clips to the ends.
    values = np.array([-3.0, -1.0, 0.0, 1.0, 2.5, 1.99, -1.99, 0.5])
    expected = np.array([0, 63, 127, 191, 255, 254, 0, 159], dtype=np.uint8)
    pca_values = np.tile(values, 16)[None, :]  # one frame, 128 components
    out = pca(embeddings_for(pca, pca_values))
    assert out.dtype == np.uint8 and out.shape == (1, 128)
    np.testing.assert_array_equal(out[0], np.tile(expected, 16))


def test_means_map_to_midpoint(pca: AudioSetPCA) -> None:
    out = pca(pca.means[None, :])
    np.testing.assert_array_equal(out, np.full((1, 128), 127, dtype=np.uint8))


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (10, 128), elements=st.floats(-3.0, 3.0, width=32)))
def test_matches_upstream_formula(pca_path: Path, pca: AudioSetPCA, embeddings: np.ndarray) -> None:
    ours = pca(embeddings)
    ref = upstream_postprocess(embeddings.astype(np.float64), pca_path)
    # Float rounding may put a value on the other side of an integer step: allow one step, rarely.
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01


def test_realistic_embeddings_match_upstream_exactly(pca_path: Path, pca: AudioSetPCA) -> None:
    rng = np.random.default_rng(0)
    # embeddings spread like VGGish's: around the means, PCA values mostly inside the [-2, 2] range
    embeddings = embeddings_for(pca, rng.normal(0.0, 1.2, size=(500, 128)))
    np.testing.assert_array_equal(pca(embeddings), upstream_postprocess(embeddings, pca_path))


def test_rejects_mismatched_shapes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, pca_means=np.zeros(128), pca_eigen_vectors=np.zeros((128, 64)))
    with pytest.raises(ValueError, match="PCA shapes"):
        AudioSetPCA.load(bad)
