"""The head's report (`reports/head/REPORT.md` + confusion PNG), generated from one build's grouped-CV figures.

Written by `custom-convert default-bundle --report DIR`, so the committed report can always be re-made from ../shared.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.audio.audiofile import read_audio
from custom.daemon.model.bundle import load_bundle
from custom.daemon.model.inference import open_model

from ..classes import CLASS_NAMES, URBAN_CLASSES
from .choose import CHOICE_RULE, OUTPUT_RULE
from .folds import FOLDS, THRESHOLD_RULE
from .measure import HeadResult
from .openset import UNSEEN_FALSE_ALARM_TARGET
from .thresholds import SEEN_FALSE_ALARM_TARGET
from .veto import VETO_SCALE

TIMING_WINDOWS = 20


def _fmt(value: float) -> str:
    return "–" if value != value else f"{value:.2f}"  # NaN -> dash


def per_window_ms(headed: Path, shared: Path) -> tuple[float, float]:
    """Median ms per 10 s window (front end + models, 1 thread) of today's mapping bundle and the headed one,
    interleaved on the same real audio (read at each bundle's rate) so machine load hits both alike."""
    from ..cli import main as convert

    with tempfile.TemporaryDirectory() as tmp:
        mapping_dir = Path(tmp) / "mapping"
        convert(["yamnet", "--tflite", str(shared / "models/yamnet_classification.tflite"), "--out", str(mapping_dir)])
        models = [open_model(load_bundle(mapping_dir)), open_model(load_bundle(headed))]
        paths = sorted((shared / "data/clips/traffic").glob("*"))[:4]
        windows = []
        for model in models:
            rate = model.input_rate_hz
            audio = np.concatenate([read_audio(p, rate).waveform for p in paths])
            windows.append(np.resize(audio, 10 * rate).astype(np.float32))
        times: list[list[float]] = [[], []]
        for _ in range(TIMING_WINDOWS):
            for i, model in enumerate(models):
                t0 = time.perf_counter()
                model.scores(windows[i])
                times[i].append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def confusion_png(path: Path, matrix: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    rates = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "k")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted top class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LABELS = {"yamnet": "YAMNet head", "efficientat": "EfficientAT head", "concatenated": "both, concatenated*"}


def label(name: str) -> str:
    """Column name of a candidate: "averaged (efficientat 0.7)" reads as both heads averaged, that share first."""
    if name.startswith("averaged"):
        return "both, heads averaged " + name.removeprefix("averaged ")
    return LABELS.get(name, name)


def describe_choice(chosen: dict[str, Any]) -> str:
    parts = []
    for backbone, v in chosen.items():
        if backbone == "weights":
            continue
        parts.append(
            f"{label(backbone)}: pooling `{v['pooling']}`, backbone scores appended {v['with_scores']}, augmented "
            f"mixes {v['augmented']}, proxy recordings {v['proxies']}, output {v.get('output', 'sigmoid')}, L2 "
            f"{v['l2']}"
        )
    if "weights" in chosen:
        parts.append("scores averaged with weights " + ", ".join(f"{b} {w:.1f}" for b, w in chosen["weights"].items()))
    return "; ".join(parts)


def _proxy_table(result: HeadResult) -> list[str]:
    """Per-class top-1 recall of each backbone's best variant with and without the scene-level recordings."""
    lines = ["", "### Proxy (scene-level) recordings: per-class top-1 recall, best variant with / without them", ""]
    best: dict[tuple[str, bool], dict[str, Any]] = {}
    for v in result.variants:
        key = (v.get("backbone", "yamnet"), v.get("proxies", True))
        if "top1_recall" in v and (key not in best or v["top1"] > best[key]["top1"]):
            best[key] = v
    backbones = sorted({b for b, _ in best})
    if not all((b, False) in best and (b, True) in best for b in backbones):
        return []
    lines += ["| class | " + " | ".join(f"{b} with / without" for b in backbones) + " |"]
    lines += ["| --- " * (len(backbones) + 1) + "|"]
    for k, name in enumerate(CLASS_NAMES):
        cells = [f"{_fmt(best[(b, True)]['top1_recall'][k])} / {_fmt(best[(b, False)]['top1_recall'][k])}"
                 for b in backbones]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = [f"{best[(b, True)]['top1']:.3f} / {best[(b, False)]['top1']:.3f}" for b in backbones]
    lines.append("| top-1, all classes | " + " | ".join(cells) + " |")
    return lines


def _veto_table(result: HeadResult) -> list[str]:
    if not result.veto_tries:
        return []
    lines = [
        "",
        "### AudioSet-score veto: every setting tried on the shipped candidate (grouped CV)",
        "",
        f"A class keeps only {VETO_SCALE:g} of its score in a window when the named backbone(s)' strongest score",
        "on a foreign AudioSet label (not one of our classes, an ancestor of one, or street background: people,",
        "vehicles but boats, engines but light ones and idling, alarms, generic impacts, channel) is at least the",
        "given score and beats the class's own AudioSet score (and, with `own <`, that own score is below the given",
        "level: the backbone hears no trace of the class). Foreign labels come from the ontology alone. The setting",
        "shipped is the one whose thresholds, raised until both false-alarm budgets hold, publish the most clips'",
        "own class (label recall). The headline's unseen-kind rate chooses the setting nested too: each kind is",
        "judged by the setting and thresholds chosen on the other kinds.",
        "",
        "| veto | label recall | wrong label | top-1 | min top-1 recall | 'other' seen kinds | unseen kinds (this "
        "setting, nested thresholds) | unseen, before raise |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in result.veto_tries:
        lines.append(
            f"| {t['veto']} | {t['label_recall']:.3f} | {t['wrong_label']:.3f} | {t['top1']:.3f} | "
            f"{np.nanmin(t['top1_recall']):.2f} | {t['false_alarm_other']:.3f} | {t['false_alarm_unseen']:.3f} | "
            f"{t['false_alarm_unseen_before_raise']:.3f} |"
        )
    return lines


def _output_table(result: HeadResult) -> list[str]:
    """Every output layer (and pair of them, averaged) judged as shipped: after its veto and unseen-kind raise."""
    if not result.output_tries:
        return []
    lines = [
        "", "### Head output layers (grouped CV, each after its own veto and unseen-kind raise)", "",
        f"Rule: {OUTPUT_RULE}. Sigmoid: ten independent yes/no scores; softmax: the ten classes and an explicit "
        "'other' compete (convert/head/fit.py).", "",
        "| candidate | outputs | veto | label recall | min class | wrong label | 'other' seen kinds | unseen kinds "
        "(nested) | top-1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for t in result.output_tries:
        outputs = ", ".join(f"{b} {o}" for b, o in t["outputs"].items())
        lines.append(
            f"| {t['name']} | {outputs} | {t['veto']} | {t['label_recall']:.3f} | {t['min_recall']:.2f} | "
            f"{t['wrong_label']:.3f} | {t['false_alarm_other']:.3f} | {t['false_alarm_unseen']:.3f} | {t['top1']:.3f} |"
        )
    return lines


def _unseen_by_kind(result: HeadResult) -> list[str]:
    by_kind = result.figures["head"].get("false_alarm_unseen_by_kind") or {}
    if not by_kind:
        return []
    lines = ["", "### Shipped head: unseen-kind windows with a label, per kind (nested)", ""]
    lines += ["| kind | " + " | ".join(by_kind) + " |", "| --- " * (len(by_kind) + 1) + "|"]
    lines.append("| share labelled | " + " | ".join(f"{v:.2f}" for v in by_kind.values()) + " |")
    return lines


def _mixture_table(result: HeadResult) -> list[str]:
    """Label recall per class against the A-weighted SNR of street background (convert/head/mixtures.py)."""
    mix = result.mixtures
    if not mix:
        return []
    snrs = mix["snrs_db"]
    used = ", ".join(f"{kind} {n}" for kind, n in mix["backgrounds"].items())
    lines = [
        "",
        "## Under street background (mixtures, out of fold)",
        "",
        f"Each of the {mix['clips']} single-label clips laid over a street background recording of the same test fold",
        f"(backgrounds used: {used}) at an A-weighted SNR over the event; label recall of the shipped candidate at",
        "its thresholds (the event's class among the labels; a traffic or chatter background may add its own).",
        "",
        "| class | " + " | ".join(f"{s:g} dB" for s in snrs) + " |",
        "| --- " * (len(snrs) + 1) + "|",
    ]
    for k, name in enumerate(CLASS_NAMES):
        lines.append(f"| {name} | " + " | ".join(_fmt(mix["per_class"][s][k]) for s in snrs) + " |")
    lines.append("| **all clips** | " + " | ".join(f"**{mix['overall'][s]:.3f}**" for s in snrs) + " |")
    alone = mix.get("backgrounds_alone", {})
    if alone:
        cells = ", ".join(f"{k} {v:.3f} ({mix['backgrounds_alone_windows'][k]})" for k, v in alone.items())
        lines += ["", f"Backgrounds alone (out of fold), share of windows with a label not their own: {cells}."]
    return lines


def _licence_table(result: HeadResult, comparisons: list[dict[str, Any]]) -> list[str]:
    """The shipped build beside the builds a licence filter would make (`--compare-licences`)."""
    if not comparisons:
        return []
    head = result.figures["head"]
    recordings = sum(n for name, by in result.counts.items() if name != "(augmented mixes)" for n in by.values())
    lines = [
        "",
        "## Builds under a licence filter (`--licences`, each its own grouped CV, same rules)",
        "",
        "Families (convert/head/licences.py): permissive (commercial use allowed), noncommercial (CC BY-NC, academic "
        "use),",
        "unstated (no licence from the source). A filter that leaves a class without recordings cannot be built.",
        "",
        "| filter | recordings | shipped candidate | label recall | min class | wrong label | 'other' seen | "
        "unseen (nested) | top-1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| all (shipped) | {recordings} recordings | {label(result.chosen_name)} | "
        f"{head['label_recall']:.3f} | {np.nanmin(head['recall']):.2f} | {head['wrong_label']:.3f} | "
        f"{head['false_alarm_other']:.3f} | {head['false_alarm_unseen']:.3f} | {head['top1']:.3f} |",
    ]
    for c in comparisons:
        f = c.get("figures")
        if f is None:
            lines.append(f"| {c['filter']} | {c['summary']} | | | | | | | |")
            continue
        lines.append(
            f"| {c['filter']} | {c['recordings']} recordings | {label(c['candidate'])} | {f['label_recall']:.3f} | "
            f"{np.nanmin(f['recall']):.2f} | {f['wrong_label']:.3f} | {f['false_alarm_other']:.3f} | "
            f"{f['false_alarm_unseen']:.3f} | {f['top1']:.3f} |"
        )
    return lines


def write_report(
    out: Path, result: HeadResult, headed: Path, shared: Path | None, comparisons: list[dict[str, Any]] | None = None
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    columns = _Columns.of(result)
    for c, name, file in zip(columns.candidates, columns.names, columns.files, strict=True):
        confusion_png(out / f"confusion_{file}.png", np.asarray(c["figures"]["confusion"]),
                      f"{name.rstrip('*')}, grouped CV (top-1)")  # fmt: skip
    mapping = result.figures["mapping"]
    confusion_png(out / "confusion_mapping.png", np.asarray(mapping["confusion"]), "YAMNet mapping (top-1)")
    lines = [
        *_introduction(result),
        *_headline(result, columns),
        *_timing(headed, shared),
        *_per_class(result, columns),
        *_variant_table(result),
        *_output_table(result),
        *_proxy_table(result),
        *_veto_table(result),
        *_unseen_by_kind(result),
        *_mixture_table(result),
        *_licence_table(result, comparisons or []),
        *_training_set(result),
    ]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


@dataclass(frozen=True)
class _Columns:
    """The report's columns: every candidate compared (or the shipped head alone), then today's mapping."""

    candidates: list[dict[str, Any]]
    names: list[str]  # column headings
    files: list[str]  # confusion_<file>.png
    figs: list[dict[str, Any]]  # each column's figures, the mapping's last

    @classmethod
    def of(cls, result: HeadResult) -> _Columns:
        head = result.figures["head"]
        shipped = {"name": result.chosen_name, "figures": head, "cost_ms": float("nan"), "shippable": True}
        candidates = result.candidates or [shipped]
        return cls(
            candidates,
            [label(c["name"]) for c in candidates],
            [c["name"].split()[0] for c in candidates],
            [c["figures"] for c in candidates] + [result.figures["mapping"]],
        )


def _row(what: str, values: list[str], target: str = "") -> str:
    return f"| {what} | " + " | ".join(values) + f" | {target} |"


def _introduction(result: HeadResult) -> list[str]:
    return [
        "# Trained heads on YAMNet and EfficientAT embeddings: grouped cross-validation report",
        "",
        "Generated by `custom-convert default-bundle --out DIR --report reports/head` from `../shared`; do not edit.",
        f"Every figure is out-of-fold: {FOLDS} folds grouped by `source_recording`, so no window is scored by a head",
        "that trained on its recording (augmented mixes train a fold only if none of their recordings is tested in",
        "it). The mapping column is today's bundle (YAMNet's own scores, mean over the window, class by AudioSet mid)",
        "on the same windows in the same run; its thresholds are best-F1 on all clips, as shipped (optimistic).",
        "Every head column uses the same folds, the same windows and the same thresholds rule.",
        "",
        f"Shipped: **{label(result.chosen_name)}** ({describe_choice(result.chosen)}). Choice: {CHOICE_RULE}.",
        "\\* measured, not shippable: one head over both backbones' features is not a bundle layout.",
        "",
        "Open set: 'other' windows of a kind the head never saw are scored by a head trained without every window",
        "of that kind (leave-one-negative-kind-out); thresholds are then raised until at most "
        f"{UNSEEN_FALSE_ALARM_TARGET:.0%} of them get a label, and the unseen-kind rate reported is nested (each kind",
        "judged by thresholds raised on the other kinds only), so it is not tuned on itself.",
        "",
    ]


def _headline(result: HeadResult, columns: _Columns) -> list[str]:
    head, figs = result.figures["head"], columns.figs
    lines = [
        "## Headline",
        "",
        "| | " + " | ".join(columns.names) + " | YAMNet mapping (today) | target |",
        "| --- " * (len(columns.names) + 3) + "|",
        _row(
            f"label recall on {head['clips']} clips: their class among the published labels",
            [f"{f['label_recall']:.3f}" for f in figs],
            ">= 0.90",
        ),
        _row("min per-class label recall", [f"{np.nanmin(f['recall']):.2f}" for f in figs], ">= 0.80"),
        _row("wrong label: clips with a label of another class", [f"{f['wrong_label']:.3f}" for f in figs], "<= 0.04"),
        _row("no label at all", [f"{f['no_label']:.3f}" for f in figs]),
        _row(
            "label recall, every real positive window (clips and train-audio)",
            [f"{f['label_recall_all_real']:.3f}" for f in figs],
        ),
        _row(f"top-1 on {head['clips']} clips (10 classes)", [f"{f['top1']:.3f}" for f in figs], ">= 0.92"),
        _row("macro AP on clips", [f"{f['macro_ap']:.3f}" for f in figs]),
        _row("min per-class top-1 recall", [f"{np.nanmin(f['top1_recall']):.2f}" for f in figs], ">= 0.80"),
        _row(
            f"top-1 / min per-class recall, the {head.get('clips_exact', 0)} exact-labelled clips only (no proxy)",
            [
                f"{f['top1_exact']:.3f} / {np.nanmin(f['top1_recall_exact']):.2f}" if "top1_exact" in f else ""
                for f in figs
            ],
        ),
        *_false_alarm_rows(head, figs),
    ]
    if result.costs:
        ms = [c["cost_ms"] for c in columns.candidates] + [result.costs["mapping"]]
        base = result.costs["mapping"]
        lines.append(
            _row(
                "ms per 10 s window, 1 thread (median, during the build)",
                [f"{m:.0f} ({m / base:.2f}x)" for m in ms],
                "<= 1.5x",
            )  # fmt: skip
        )
    return lines


def _false_alarm_rows(head: dict[str, Any], figs: list[dict[str, Any]]) -> list[str]:
    return [
        _row(
            f"'other' windows with any label, kinds seen in training ({head['other_windows']}, grouped CV)",
            [f"{f['false_alarm_other']:.3f}" for f in figs],
            f"<= {SEEN_FALSE_ALARM_TARGET}",
        ),
        _row(
            "'other' windows with any label, kind never seen (nested)",
            [f"{f['false_alarm_unseen']:.3f}" for f in figs],
            f"<= {UNSEEN_FALSE_ALARM_TARGET}",
        ),
        _row(
            "same, before thresholds were raised for unseen kinds",
            [f"{f.get('false_alarm_unseen_before_raise', float('nan')):.3f}" for f in figs],
        ),
        _row("AudioSet-score veto (convert/head/veto.py)", [str(f.get("veto", "none")) for f in figs]),
        _row(
            "top-1 / unseen-kind (nested) without the veto",
            [
                f"{f['top1_without_veto']:.3f} / {f['false_alarm_unseen_without_veto']:.3f}" if "veto" in f else ""
                for f in figs
            ],
        ),
    ]


def _timing(headed: Path, shared: Path | None) -> list[str]:
    if shared is None or not shared.is_dir():
        return []
    mapping_ms, head_ms = per_window_ms(headed, shared)
    return [
        "",
        f"Shipped bundle vs today's mapping bundle, per 10 s window (front end + models, 1 thread, median of "
        f"{TIMING_WINDOWS}, interleaved): {head_ms:.1f} ms vs {mapping_ms:.1f} ms ({head_ms / mapping_ms:.2f}x).",
    ]


def _per_class(result: HeadResult, columns: _Columns) -> list[str]:
    names, figs = columns.names, columns.figs
    lines = [
        "",
        "## Per class (clips, out-of-fold)",
        "",
        "top-1 recall = share of the class's clips whose highest score is that class.",
        "",
        "| class | " + " | ".join(names) + " | mapping |",
        "| --- " * (len(names) + 2) + "|",
    ]
    for k, name in enumerate(CLASS_NAMES):
        lines.append(f"| {name} | " + " | ".join(_fmt(f["top1_recall"][k]) for f in figs) + " |")
    lines += [
        "",
        "Precision / label recall (the class among the published labels) at each column's own per-class thresholds "
        "(shipped thresholds in the last column):",
        "",
        "| class | " + " | ".join(names) + " | mapping | shipped threshold |",
        "| --- " * (len(names) + 3) + "|",
    ]
    for k, name in enumerate(CLASS_NAMES):
        cells = [f"{_fmt(f['precision'][k])} / {_fmt(f['recall'][k])}" for f in figs]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result.thresholds[k]:.2f} |")
    return lines + [
        "",
        f"Thresholds: {THRESHOLD_RULE}.",
        "",
        " ".join(f"![{n.rstrip('*')}](confusion_{f}.png)" for f, n in zip(columns.files, names, strict=True))
        + " ![YAMNet mapping](confusion_mapping.png)",
    ]


def _variant_table(result: HeadResult) -> list[str]:
    return [
        "",
        "## Pooling and features per backbone (grouped CV)",
        "",
        "Chosen per backbone with sigmoid outputs: the best label recall (then top-1); within 0.01 of it, the larger "
        "patch hop. The chosen variant is then fitted with a softmax output too (the last row per backbone). Figures "
        "at each variant's own thresholds, before the veto and the unseen-kind raise.",
        "",
        "| backbone | pooling | patch hop x | + backbone scores | augmented mixes | proxy recordings | output | "
        "label recall | wrong label | top-1 | macro AP | 'other' with a label |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {v.get('backbone', 'yamnet')} | {v['pooling']} | {v.get('patch_stride', 1)} | {v['with_scores']} | "
            f"{v['augmented']} | {v.get('proxies', True)} | {v.get('output', 'sigmoid')} | "
            f"{v.get('label_recall', np.nan):.3f} | {v.get('wrong_label', np.nan):.3f} | {v['top1']:.3f} | "
            f"{v['macro_ap']:.3f} | {v['false_alarm_other']:.3f} |"
            for v in result.variants
        ],
    ]


def _training_set(result: HeadResult) -> list[str]:
    lines = [
        "",
        "## Training set (recordings per label and source; held-out recordings excluded)",
        "",
        "| label | clips | train-audio |",
        "| --- | --- | --- |",
    ]
    labels = [c.clip_label for c in URBAN_CLASSES] + ["other", "(augmented mixes)"]
    labels += sorted(k for k in result.counts if k.endswith("(proxy)"))
    for row_label in labels:
        counts = result.counts.get(row_label, {})
        lines.append(f"| {row_label} | {counts.get('clips', 0)} | {counts.get('train-audio', 0)} |")
    return lines + [
        "",
        f"Held-out rows skipped (id hashes to `holdout-recordings.sha256`): {result.held_out_rows}.",
        "Sources and licences: `../shared/data/clips/README.md`, `../shared/data/train-audio/README.md` (UrbanSound8K,",
        "ESC-50: CC BY-NC 3.0; many ambience and more/ rows have no licence stated); the shipped bundle's licences by",
        "family and text: its manifest's `provenance.training.licences` and `models/default/MODEL_CARD.md`. No audio",
        "from anywhere else was used.",
        "",
    ]
