"""The head's fit: multi-label logistic regression on a window's pooled features, the same maths the exported
TFLite head computes (sigmoid(x @ w + b)). scipy's L-BFGS rather than scikit-learn keeps the committed head
byte-identical; tests/test_fit_against_sklearn.py checks it against scikit-learn's LogisticRegression on the same
objective.
"""

from __future__ import annotations

import numpy as np

from custom.daemon.model.head import pool_features

from .data import Examples

L2 = 0.1  # weight decay: on ../shared, grouped-CV top-1 0.823 at 0.1 vs 0.805 at 1.0 and 0.751 at 0.01 (mean_max)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_linear(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label logistic regression on standardised features (L-BFGS, deterministic); weights folded back so
    that sigmoid(x @ w + b) works on raw features. Positives are up-weighted by sqrt(negatives/positives)."""
    from scipy.optimize import minimize

    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    n, d = z.shape
    pos = y.sum(axis=0)
    weight = np.where(y, np.sqrt(np.maximum(1.0, n - pos) / np.maximum(1.0, pos)), 1.0)  # (n, classes)
    k = y.shape[1]

    def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = flat[: d * k].reshape(d, k), flat[d * k :]
        p = sigmoid(z @ w + b)
        eps = 1e-7
        value = -np.sum(weight * (y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))) / n
        value += 0.5 * l2 * np.sum(w * w)
        g = weight * (p - y) / n
        return value, np.concatenate([(z.T @ g + l2 * w).ravel(), g.sum(axis=0)])

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small matrices: BLAS threads only fight each other (and other work) for cores
        result = minimize(loss, np.zeros(d * k + k), jac=True, method="L-BFGS-B", options={"maxiter": 300})
    w, b = result.x[: d * k].reshape(d, k), result.x[d * k :]
    w_raw = w / std[:, None]
    return w_raw.astype(np.float32), (b - mean @ w_raw).astype(np.float32)


def window_features(examples: Examples, pooling: str, with_scores: bool, stride: int = 1) -> np.ndarray:
    """Pooled features of every window; `stride` 2 keeps every other patch, exactly the patches a front end with twice
    the patch hop cuts (patch i starts at i x hop), so one feature pass serves both hops."""
    return np.stack(
        [pool_features(e[::stride], s[::stride], pooling, with_scores)
         for e, s in zip(examples.embeddings, examples.scores, strict=True)]
    )  # fmt: skip
