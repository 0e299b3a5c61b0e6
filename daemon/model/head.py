"""A trained head on the backbone's embedding: pooled patch embeddings of a window -> one score per class.

The head's features are built here, once, for both the daemon and the converter (which trains on exactly these
features), so training and inference can never pool differently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bundle import Bundle, BundleError, HeadSpec


def pool_features(embeddings: np.ndarray, scores: np.ndarray, pooling: str, with_scores: bool) -> np.ndarray:
    """(patches, dims) float embeddings and (patches, outputs) backbone scores -> (features,) float32."""
    parts = []
    if pooling in ("mean", "mean_max"):
        parts.append(embeddings.mean(axis=0))
    if pooling in ("max", "mean_max"):
        parts.append(embeddings.max(axis=0))
    if with_scores:
        parts.append(scores.mean(axis=0))
    return np.concatenate(parts).astype(np.float32)


class EmbeddingReader:
    """Finds and checks the embedding output of a backbone interpreter; dequantises what the row runner read."""

    def __init__(self, bundle: Bundle, head: HeadSpec, interpreter: Any) -> None:
        outputs = interpreter.get_output_details()
        where = bundle.file_path(bundle.backbone_model.file)
        if head.embedding_output >= len(outputs):
            raise BundleError(
                f"{where}: has {len(outputs)} output(s); the head needs output {head.embedding_output} (embedding)"
            )
        detail = outputs[head.embedding_output]
        shape = tuple(int(d) for d in detail["shape"])
        dtype = np.dtype(detail["dtype"]).name
        if shape != head.embedding.shape or dtype != head.embedding.dtype:
            raise BundleError(
                f"{where}: embedding output is {dtype}{list(shape)}, manifest says "
                f"{head.embedding.dtype}{list(head.embedding.shape)}"
            )
        self.index = detail["index"]
        scale, zero = detail.get("quantization", (0.0, 0))
        self.scale = float(scale) if scale else 1.0
        self.zero = float(zero) if scale else 0.0

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """Raw rows of the embedding tensor (as the row runner read them) -> float32."""
        return ((raw.astype(np.float32) - self.zero) * self.scale).astype(np.float32)
