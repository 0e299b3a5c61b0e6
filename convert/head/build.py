"""`custom-convert head`: train a classifier head on backbone embeddings (YAMNet, EfficientAT mn04, or both compared)
from the real recordings in ../shared and write the best headed bundle.

Steps: expose each backbone's embedding as a second output (convert/head/backbones.py), run every training
recording (and seeded, label-honest mixes of the thin classes) through the bundle's own backbone code, choose the
pooling and features by cross-validation grouped by source recording, set per-class thresholds from the
out-of-fold scores, then fit on everything and export a linear head (sigmoid, or softmax with an "other" output;
features -> 10 scores) to TFLite.
Every figure printed or stored comes from out-of-fold scores: no window is scored by a head that trained on its
recording. The same run scores today's class mapping (YAMNet's own scores, mean over the window) on the same
windows, so the two can be compared honestly. With both backbones, their concatenated features and their averaged
heads are measured too (same folds, same thresholds rule) and every candidate's cost per window is timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.model.bundle import Bundle, BundleDraft, EnsembleDraft, write_bundle
from custom.daemon.model.inference import Model
from custom.wire import exitcodes

from .backbones import BACKBONES, HeadBackbone
from .bundle import HEAD_FILE, ensemble_draft, export_head, head_draft, head_spec, strided
from .choose import CHOICE_RULE, Candidate, pick
from .data import DataError, Recording
from .fit import Head, fit_head
from .folds import FOLDS, THRESHOLD_RULE
from .licences import FAMILIES, describe, parse_families
from .measure import HeadResult, Measured, measure

HELP = "train a head on YAMNet and/or EfficientAT embeddings from ../shared and write a headed bundle"


def _licence_filter(spec: str) -> frozenset[str]:
    try:
        return parse_families(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="folder laid out like ../shared")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced atomically)")
    parser.add_argument("--augment", type=int, default=4, help="mixes per thin-class recording (default 4)")
    parser.add_argument("--limit-per-label", type=int, help="at most N recordings per label (quick builds in tests)")
    parser.add_argument("--quantize", choices=("float32", "float16"), default="float16", help="head weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", type=Path, help="X.npz: features kept in X.<backbone>.npz (outside git), reused if data match"
    )
    parser.add_argument(
        "--backbone", choices=(*BACKBONES, "both"), default="both",
        help="train on this backbone's embedding; both: compare them and their combinations, ship the best",
    )  # fmt: skip
    parser.add_argument(
        "--ship", default="best", metavar="CANDIDATE",
        help="best (default: the choice rule), or a candidate by name to write regardless: yamnet, efficientat, "
        "averaged (both heads, a version-2 bundle)",
    )  # fmt: skip
    parser.add_argument(
        "--licences", type=_licence_filter, default=frozenset(FAMILIES), metavar="FAMILIES",
        help="train only on rows whose licence is in these families: all (default), or a comma-separated list of "
        f"{', '.join(FAMILIES)} (e.g. permissive: what a commercial deployment may use); the families and licences "
        "of what trained the head are recorded in the manifest",
    )  # fmt: skip
    parser.add_argument("--bundle-id", help="default: <backbone>-head-urban10")
    parser.add_argument("--version", default="2.0.0")


def build(args: argparse.Namespace, work: Path) -> tuple[Path, HeadResult]:
    """Train heads on the chosen backbone(s), compare them (and their combinations) by grouped CV, and write the best
    shippable headed bundle to args.out; returns its path and what was measured.

    Raises DataError (one line naming the file, with the exit code) on bad data."""
    started = time.monotonic()
    measured = measure(args, work)
    chosen = pick(measured.candidates, args.ship)
    bundle = write_and_verify(args, work, measured, chosen)
    result = measured.result
    if getattr(args, "mixtures", False):
        from .mixtures import street_mixtures

        result.mixtures = street_mixtures(measured, chosen, args.seed)
    head, mapping = result.figures["head"], result.figures["mapping"]
    print(
        f"chosen: {chosen.name} {json.dumps(result.chosen)}; grouped-CV top-1 {head['top1']:.3f} (mapping "
        f"{mapping['top1']:.3f}); 'other' windows with a label: seen kinds {head['false_alarm_other']:.3f} "
        f"(mapping {mapping['false_alarm_other']:.3f}), unseen kinds {head['false_alarm_unseen']:.3f}; "
        f"{chosen.cost_ms:.0f} ms/window (YAMNet {result.costs['mapping']:.0f})"
    )
    print("thresholds: " + ", ".join(f"{c.name} {c.threshold:.2f}" for c in bundle.classes))
    print(f"wrote {bundle.path} (bundle sha256 {bundle.sha256[:12]}…, {time.monotonic() - started:.0f} s)")
    return bundle.path, result


def write_and_verify(args: argparse.Namespace, work: Path, measured: Measured, chosen: Candidate) -> Bundle:
    """Fit the chosen head(s) on every window they train on, export, write the bundle (version 2 for averaged
    heads) with its provenance, then load the written bundle and check each head against its numpy fit."""
    result = measured.result
    singles = chosen.members or (chosen,)
    result.head_oof = chosen.oof
    result.chosen_name = chosen.name
    result.thresholds = chosen.thresholds
    result.veto_tries = chosen.veto_tries
    result.chosen = {c.name: c.variant.as_dict() for c in singles if c.variant is not None}
    if chosen.members:
        result.chosen["weights"] = dict(zip(chosen.backbones, chosen.weights, strict=True))
    result.figures["head"] = chosen.figures
    fits: dict[str, Head] = {}
    sources: dict[str, Path] = {}
    for single in singles:
        assert single.features is not None and single.keep is not None and single.variant is not None
        backbone = strided(measured.backbones[single.name], single.variant)
        fit = fit_head(single.features[single.keep], measured.y[single.keep], single.variant.output)
        fits[single.name] = fit
        head_file = HEAD_FILE if not chosen.members else f"head_{single.name}.tflite"
        (work / head_file).write_bytes(export_head(fit, args.quantize))
        sources |= {backbone.model_file: backbone.path, head_file: work / head_file}
    heads = ", ".join(f"{c.name}: linear {c.variant.output}, L2 {c.variant.l2}" for c in singles if c.variant)
    provenance = _provenance(args, [measured.backbones[c.name] for c in singles], measured, heads)
    strides = {c.name: c.variant.patch_stride if c.variant else 1 for c in singles}
    draft: BundleDraft | EnsembleDraft
    if chosen.members:
        draft = ensemble_draft(args, chosen, measured.backbones, sources, provenance)
    else:
        assert chosen.variant is not None and chosen.features is not None
        backbone = strided(measured.backbones[chosen.name], chosen.variant)
        head = head_spec(
            backbone, chosen.variant.pooling, chosen.variant.with_scores, chosen.features.shape[1], chosen.veto
        )
        draft = head_draft(args, backbone, head, sources, chosen.thresholds, provenance)
    bundle = write_bundle(draft, args.out)
    models = [Model(m) for m in bundle.members] if bundle.members else [Model(bundle)]
    check_rows = measured.real_rows[:: max(1, len(measured.real_rows) // 20)]
    worst = 0.0
    for single, model in zip(singles, models, strict=True):  # each written head agrees with its numpy fit
        assert single.features is not None
        ex, n = measured.examples[single.name], strides[single.name]
        got = np.stack([model.class_scores(np.hstack([ex.scores[r][::n], ex.embeddings[r][::n]])) for r in check_rows])
        worst = max(worst, float(np.abs(got - fits[single.name].scores(single.features[check_rows])).max()))
    if worst > 0.02:
        raise RuntimeError(f"exported head disagrees with its fit by {worst:.4f}")
    print(f"head TFLite ({args.quantize}) vs float fit: max |difference| {worst:.5f} on {len(check_rows)} windows")
    return bundle


def _provenance(
    args: argparse.Namespace, backbones: list[HeadBackbone], measured: Measured, heads: str
) -> dict[str, Any]:
    result = measured.result

    def summary(fig: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in fig.items() if k != "confusion"}

    sources: dict[str, Any] = {b.name: b.provenance for b in backbones}
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": "custom-convert head",
        **(backbones[0].provenance if len(backbones) == 1 else {"backbones": sources}),
        "training": {
            "recordings": len(measured.recordings),
            "held_out_rows_skipped": result.held_out_rows,
            "augment_per_thin_clip": args.augment,
            "seed": args.seed,
            "counts": result.counts,
            "licences": training_licences(measured.recordings, args.licences),
            "head": f"{heads}; weights {args.quantize}",
        },
        "thresholds": {"rule": THRESHOLD_RULE, "folds": f"{FOLDS}, grouped by source_recording"},
        "cross_validated": {
            "variants": result.variants,
            "chosen": result.chosen,
            "choice_rule": CHOICE_RULE,
            "candidates": [
                {k: c[k] for k in ("name", "shippable", "variant")}
                | {"cost_ms": round(c["cost_ms"], 1)}
                | summary(c["figures"])
                for c in result.candidates
            ],  # fmt: skip
            "head": summary(result.figures["head"]),
            "mapping": {**summary(result.figures["mapping"]), "cost_ms": round(result.costs["mapping"], 1)},
        },
    }


def training_licences(recordings: list[Recording], families: frozenset[str]) -> dict[str, Any]:
    """The filter and what trained the head, by licence family and by the manifests' own licence text: a city that
    distributes the model reads its terms here."""
    by_family: dict[str, int] = {f: 0 for f in FAMILIES}
    by_text: dict[str, int] = {}
    for r in recordings:
        by_family[r.licence_family] += 1
        by_text[r.licence or "(none given)"] = by_text.get(r.licence or "(none given)", 0) + 1
    return {
        "filter": describe(families),
        "recordings_by_family": by_family,
        "recordings_by_licence": dict(sorted(by_text.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build(args, Path(tmp))
        except DataError as exc:
            print(f"custom-convert head: {exc}")
            return exc.code
    return exitcodes.OK
