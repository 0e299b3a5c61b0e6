"""Run a bundle on one window of mono audio at the bundle's rate and return one score per class.

This is the code path shared by `custom-sensord classify` and the live daemon. All per-bundle work (interpreters,
tensor checks, PCA, index tables) happens once in `Model.__init__`; `Model.scores` is the per-window hot path.
A version-2 bundle runs as an `EnsembleModel`: every member on the same window, scores averaged by weight.
`open_model` picks the one a bundle needs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..audio.pcm import resample
from .audioset_params import FRAMES_PER_CLIP
from .bundle import Bundle, BundleError, ModelSpec
from .frontend import Frontend
from .frontend_efficientat import EfficientATFrontend, EfficientATParams
from .head import EmbeddingReader, pool_features
from .postprocess import AudioSetPCA
from .runtime import RowRunner
from .veto import Veto


@dataclass(frozen=True)
class WindowScores:
    scores: np.ndarray  # (classes,) float32, in the bundle's class order
    patches: int  # how many patches the window gave
    frontend_ms: float
    model_ms: float
    vetoed: np.ndarray | None = None  # (classes,) bool: classes the bundle's veto scaled down


def _runner(bundle: Bundle, spec: ModelSpec, threads: int, runtime: str | None, batched: bool) -> RowRunner:
    """A row runner for one of the bundle's models, its tensors checked against the manifest.

    The manifest's first dimension may be -1 ("any batch"); it must then be free in the model too. Old bundles
    with a fixed [1, ...] input keep loading and run one patch per invoke.
    """
    path = bundle.file_path(spec.file)
    try:
        runner = RowRunner(path, threads=threads, preferred=runtime, batched=batched)
    except (ValueError, RuntimeError) as exc:
        if type(exc).__name__ == "RuntimeMissingError":
            raise
        raise BundleError(f"{path}: not a loadable TFLite model: {exc}") from None
    inp = runner.interpreter.get_input_details()[0]
    out = runner.interpreter.get_output_details()[0]
    for what, detail, got_shape, want in (
        ("input", inp, runner.input_signature, spec.input),
        ("output", out, runner.output_signature, spec.output),
    ):
        got_dtype = np.dtype(detail["dtype"]).name
        shapes = (got_shape, tuple(int(d) for d in detail["shape"]))  # bundles made before -1 wrote the shape
        if want.shape not in shapes or got_dtype != want.dtype:
            raise BundleError(
                f"{path}: {what} tensor is {got_dtype}{list(got_shape)}, manifest says {want.dtype}{list(want.shape)}"
            )
    return runner


def aggregate_patches(patch_scores: np.ndarray, how: str) -> np.ndarray:
    """(patches, outputs) -> (outputs,) over the window."""
    pooled: np.ndarray
    if how == "max":
        pooled = patch_scores.max(axis=0)
    elif how == "mean":
        pooled = patch_scores.mean(axis=0)
    else:  # "top3_mean": robust to one loud patch, sensitive to short events
        pooled = np.sort(patch_scores, axis=0)[-3:].mean(axis=0)
    return pooled


class Model:
    """A loaded bundle, ready to score windows."""

    def __init__(self, bundle: Bundle, threads: int = 1, runtime: str | None = None, batched: bool = True) -> None:
        """`batched=False` forces one invoke per patch even where the model takes a batch (bench comparison)."""
        self.bundle = bundle
        if isinstance(bundle.frontend, EfficientATParams):
            self.frontend: Frontend | EfficientATFrontend = EfficientATFrontend(bundle.frontend)
        else:
            self.frontend = Frontend(bundle.frontend)
        self._logits = bundle.backbone == "efficientat"  # EfficientAT outputs logits: sigmoid before pooling
        self.backbone = _runner(bundle, bundle.backbone_model, threads, runtime, batched)
        self.classifier = None
        self.pca = None
        if bundle.backbone == "vggish":
            assert bundle.classifier_model is not None and bundle.postprocess is not None  # checked by load_bundle
            self.classifier = _runner(bundle, bundle.classifier_model, threads, runtime, batched)
            pca_path = bundle.file_path(bundle.postprocess["file"])
            try:
                self.pca = AudioSetPCA.load(pca_path)
            except (OSError, ValueError, KeyError) as exc:
                raise BundleError(f"{pca_path}: bad PCA parameters: {exc}") from None
        else:
            width = bundle.backbone_model.output.shape[-1]
            for c in bundle.classes:
                bad = [i for i in c.backbone_outputs if not 0 <= i < width]
                if bad:
                    raise BundleError(f"{bundle.path}: class {c.name}: backbone output(s) {bad} outside 0..{width - 1}")
            # (outputs, classes) 0/1 table: class score = max over its outputs, done as one masked max per window
            self._class_mask = np.zeros((width, len(bundle.classes)), dtype=bool)
            for j, c in enumerate(bundle.classes):
                self._class_mask[list(c.backbone_outputs), j] = True
        self.head = self.embedding = None
        self.veto: Veto | None = None
        if bundle.head is not None:
            self.embedding = EmbeddingReader(bundle, bundle.head, self.backbone.interpreter)
            self.head = _runner(bundle, bundle.head.model, threads, runtime, batched)
            if bundle.head.veto is not None:
                self.veto = Veto(bundle.head.veto, bundle.backbone_model.output.shape[-1])
        self.min_samples = bundle.frontend.patch_samples
        self.input_rate_hz = bundle.frontend.sample_rate_hz  # what `scores` takes
        self.band_rate_hz = bundle.band_rate_hz  # what `band_scores` takes

    def _patches(self, waveform: np.ndarray) -> np.ndarray:
        if len(waveform) < self.min_samples:
            waveform = np.pad(waveform, (0, self.min_samples - len(waveform)))
        if self.bundle.backbone_model.input_kind == "waveform" and isinstance(self.frontend, Frontend):
            return self.frontend.waveform_patches(waveform)  # bundle reading pairs waveform input with this front end
        return self.frontend.log_mel_patches(waveform)

    def backbone_outputs(self, waveform: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(patches, backbone outputs) for a window, plus front-end and model time in ms.

        With a head, each patch's row is its scores followed by its dequantised embedding."""
        t0 = time.perf_counter()
        patches = self._patches(waveform)
        t1 = time.perf_counter()
        # one invoke for the whole window where the model takes a batch
        if self.embedding is None:
            scores = self.backbone(patches)
        else:
            scores, raw = self.backbone.run(patches, extra=(self.embedding.index,))
        if self._logits:
            scores = 1.0 / (1.0 + np.exp(-scores))
        outputs = scores if self.embedding is None else np.concatenate([scores, self.embedding.dequantize(raw)], 1)
        return outputs, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3

    def class_scores(self, outputs: np.ndarray) -> np.ndarray:
        """Backbone outputs of one window -> (classes,) scores."""
        if self.classifier is not None:
            assert self.pca is not None
            embeddings = self.pca(outputs)[:FRAMES_PER_CLIP]  # (<=10, 128) uint8
            frames = np.zeros((1, FRAMES_PER_CLIP, embeddings.shape[1]), dtype=np.uint8)
            frames[0, : len(embeddings)] = embeddings
            return self.classifier(frames).reshape(-1).astype(np.float32)
        if self.head is not None:
            assert self.bundle.head is not None
            width = self.bundle.backbone_model.output.shape[-1]
            spec = self.bundle.head
            features = pool_features(outputs[:, width:], outputs[:, :width], spec.pooling, spec.with_scores)
            return self.head(features).reshape(-1).astype(np.float32)
        pooled = aggregate_patches(outputs[:, : self._class_mask.shape[0]], self.bundle.aggregation)  # (521,)
        scores: np.ndarray = np.where(self._class_mask, pooled[:, None], 0.0).max(axis=0).astype(np.float32)
        return scores

    def band_scores(self, band: np.ndarray) -> WindowScores:
        """Score one window limited to the bundle's band (at band_rate_hz), brought to the front end's rate first
        (EfficientAT's 32 kHz front end on a 16 kHz band: a head never meets a band it did not see in training)."""
        return self.scores(resample(band, self.band_rate_hz, self.input_rate_hz))

    def scores(self, waveform: np.ndarray, apply_veto: bool = True) -> WindowScores:
        """Score one window of mono float32 audio at the bundle's rate (bundle.frontend.sample_rate_hz).
        `apply_veto` False: the scores as the head gave them, the veto's mask alongside (an ensemble scales the
        weighted mean once, as the converter measured it)."""
        outputs, frontend_ms, backbone_ms = self.backbone_outputs(waveform)
        t0 = time.perf_counter()
        scores = self.class_scores(outputs)
        vetoed = None
        if self.veto is not None:
            vetoed = self.veto(outputs[:, : self.veto.width])
            if apply_veto:
                scores = scores * self.veto.factors(vetoed)
        model_ms = backbone_ms + (time.perf_counter() - t0) * 1e3
        return WindowScores(scores, len(outputs), frontend_ms, model_ms, vetoed)


class EnsembleModel:
    """A version-2 bundle: each member (backbone + head) scores the same window at its own rate; the class scores are
    the weighted mean. Takes the window at the members' common band rate (the manifest's band_rate_hz) and resamples
    it once per front-end rate the members need, not once per member.

    With `threads` >= the member count, the members run side by side, each on `threads // members` interpreter
    threads: EfficientAT gains nothing from a second interpreter thread, but both backbones at once fill two cores
    (TFLite and numpy release the GIL), so the window costs about the slower member, not the sum."""

    def __init__(self, bundle: Bundle, threads: int = 1, runtime: str | None = None, batched: bool = True) -> None:
        assert bundle.members  # load_bundle checked them, and that they share one band
        self.bundle = bundle
        self.parallel = threads >= len(bundle.members) > 1
        each = max(1, threads // len(bundle.members)) if self.parallel else threads
        self.members = tuple(Model(member, each, runtime, batched) for member in bundle.members)
        self.weights = tuple(float(w) for w in bundle.weights)
        self.input_rate_hz = self.band_rate_hz = bundle.band_rate_hz
        self.member_rates_hz = tuple(sorted({member.input_rate_hz for member in self.members}))

    def band_scores(self, band: np.ndarray) -> WindowScores:
        return self.scores(band)

    def scores(self, waveform: np.ndarray) -> WindowScores:
        """Score one window of mono float32 audio at the band rate (bundle.band_rate_hz)."""
        t0 = time.perf_counter()
        at_rate = {rate: resample(waveform, self.band_rate_hz, rate) for rate in self.member_rates_hz}
        resample_ms = (time.perf_counter() - t0) * 1e3
        if self.parallel:
            # a pool per window costs ~0.1 ms against ~20 ms of work, and leaves no thread behind on a reload
            with ThreadPoolExecutor(max_workers=len(self.members) - 1, thread_name_prefix="member") as pool:
                others = [pool.submit(m.scores, at_rate[m.input_rate_hz], False) for m in self.members[1:]]
                first = self.members[0]
                results = [first.scores(at_rate[first.input_rate_hz], False), *(f.result() for f in others)]
        else:
            results = [m.scores(at_rate[m.input_rate_hz], apply_veto=False) for m in self.members]
        total = np.zeros(len(self.bundle.classes), dtype=np.float32)
        factor = np.ones_like(total)  # a member's veto scales the class in the average, not just its share
        vetoed = None
        for result, weight, member in zip(results, self.weights, self.members, strict=True):
            total += np.float32(weight) * result.scores
            if result.vetoed is not None and member.veto is not None:
                factor = np.minimum(factor, member.veto.factors(result.vetoed))
                vetoed = result.vetoed if vetoed is None else vetoed | result.vetoed
        total *= factor
        return WindowScores(
            total,
            max(r.patches for r in results),
            resample_ms + sum(r.frontend_ms for r in results),
            sum(r.model_ms for r in results),
            vetoed,
        )


def open_model(
    bundle: Bundle, threads: int = 1, runtime: str | None = None, batched: bool = True
) -> Model | EnsembleModel:
    """The model a bundle needs: one backbone (version 1) or several averaged (version 2)."""
    if bundle.members:
        return EnsembleModel(bundle, threads, runtime, batched)
    return Model(bundle, threads, runtime, batched)
