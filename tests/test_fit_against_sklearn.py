"""The head's own logistic fits (sigmoid, and softmax with "other") and the average precision every report prints,
checked against scikit-learn.

Both are written in numpy/scipy so the committed head stays byte-identical; scikit-learn (a convert dependency) is
the independent reference that says they compute what their names promise."""

from __future__ import annotations

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402

from custom.convert.evaluate.metrics import average_precision  # noqa: E402
from custom.convert.head.fit import L2, fit_head, sigmoid, softmax  # noqa: E402


def _dataset(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features on unlike scales and offsets (as pooled embeddings are), three classes of unlike frequency."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, 12)) * rng.uniform(0.1, 5.0, 12) + rng.normal(0, 3, 12)
    w = rng.normal(size=(12, 3)) / x.std(axis=0)[:, None]
    logits = (x - x.mean(axis=0)) @ w + np.array([-2.5, -1.0, 0.5]) + rng.normal(0, 1.0, (400, 3))
    return x, logits > 0


def _reference(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """The same objective in scikit-learn: one binary problem per class on the standardised features, positives
    weighted by sqrt(negatives/positives), L2 on the weights only. fit_head minimises mean(loss) + l2/2 |w|^2 and
    scikit-learn C sum(loss) + 1/2 |w|^2: the same minimum at C = 1 / (l2 n)."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    coefs, intercepts = [], []
    for k in range(y.shape[1]):
        pos = y[:, k].sum()
        weight = np.where(y[:, k], np.sqrt(max(1, len(y) - pos) / max(1, pos)), 1.0)
        model = LogisticRegression(C=1.0 / (l2 * len(z)), tol=1e-12, max_iter=10_000).fit(
            z, y[:, k], sample_weight=weight
        )
        coefs.append(model.coef_[0] / std)  # back onto raw features, as fit_head returns them
        intercepts.append(model.intercept_[0] - mean @ (model.coef_[0] / std))
    return np.stack(coefs, axis=1), np.array(intercepts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigmoid_head_is_sklearns_weighted_logistic_regression(seed: int) -> None:
    x, y = _dataset(seed)
    head = fit_head(x, y, "sigmoid")
    w, b = head.w, head.b
    w_ref, b_ref = _reference(x, y, L2["sigmoid"])
    scale = np.abs(w_ref).max()
    assert np.abs(w - w_ref).max() < 5e-4 * scale, np.abs(w - w_ref).max()
    assert np.abs(b - b_ref).max() < 1e-3 * max(1.0, np.abs(b_ref).max())
    assert np.abs(head.scores(x) - sigmoid(x @ w_ref + b_ref)).max() < 5e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_softmax_head_is_sklearns_multinomial_regression_with_an_other_class(seed: int) -> None:
    """One label or none per window: the softmax head is scikit-learn's multinomial logistic regression over the
    classes plus "other" (index 3 here), same L2 on the standardised features, and drops "other" from its scores."""
    x, y = _dataset(seed)
    first = np.argmax(y, axis=1)
    single = np.zeros_like(y)
    single[np.arange(len(y)), first] = y.any(axis=1)
    target = np.where(single.any(axis=1), first, 3)
    head = fit_head(x, single, "softmax")
    assert head.w.shape == (12, 4)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    reference = LogisticRegression(C=1.0 / (L2["softmax"] * len(x)), tol=1e-12, max_iter=10_000)
    reference.fit((x - mean) / std, target)
    expected = reference.predict_proba((x - mean) / std)
    assert np.abs(softmax(x @ head.w + head.b) - expected).max() < 5e-4
    assert np.abs(head.scores(x) - expected[:, :3]).max() < 5e-4


@pytest.mark.parametrize("seed", range(20))
def test_average_precision_is_sklearns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.random(n) < rng.uniform(0.05, 0.9)
    labels[rng.integers(n)] = True  # at least one positive: sklearn's score needs one
    scores = rng.random(n) + labels * rng.uniform(0, 1)
    if seed % 2:
        scores = np.round(scores, 1)  # ties: sklearn takes a tie as one step too
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
