"""`custom-convert default-bundle --out DIR`: build the bundle every sensor ships with, from ../shared, in one command.

It builds the candidates in one run: YAMNet with today's class mapping (`custom-convert yamnet` on the shared
layout) and heads trained on YAMNet's and EfficientAT's embeddings (`custom-convert head --backbone both`, which
picks the best head on grouped CV by label recall within the false-alarm budgets, weighing cost per window). The best
headed bundle ships if, and only if, it beats the mapping on the same run's grouped cross-validation: higher label
recall on the 10 classes (a clip's class among the published labels), and no more false alarms on held-out "other"
recordings than max(5%, the mapping's). The comparison is written into the shipped manifest's
provenance (`default_choice`). The tests and the benchmarks build it this way; with `--commit-dir models/default`
it is also written as the repository commits it (convert/prebuilt.py), which the quickstart and the installer
assemble without TensorFlow (`custom-sensord bundle assemble`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.model.bundle import MANIFEST_NAME, load_bundle
from custom.wire import exitcodes

from .head.build import add_arguments as add_head_arguments
from .head.build import build as build_head
from .head.data import DataError
from .head.measure import HeadResult

HELP = "build the default bundle from ../shared (headed iff the head beats the mapping on grouped CV)"
FALSE_ALARM_CAP = 0.05  # share of "other" windows that may get a label, unless the mapping already has more


def _default_shared() -> Path:
    return Path(os.environ.get("CUSTOM_SHARED", "../shared"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_head_arguments(parser)
    parser.set_defaults(shared=_default_shared())
    parser.add_argument("--report", type=Path, help="also write the head report (REPORT.md + confusion PNG) here")
    parser.add_argument(
        "--commit-dir",
        type=Path,
        help="also write the bundle as the repository commits it (e.g. models/default): the manifest and head(s), "
        "each backbone replaced by a recipe (published model in ../shared/models + its sha256 + the tensor exposed), "
        "which `custom-sensord bundle assemble` turns back into the bundle without TensorFlow. The head is "
        "byte-identical from build to build (seeded mixes, one-thread L-BFGS and TFLite); tests/test_prebuilt.py "
        "rebuilds it and compares",
    )
    parser.add_argument(
        "--quick", action="store_true", help="for tests: 1 mix per thin clip and at most 12 recordings per label"
    )
    parser.add_argument(
        "--compare-licences", action="append", default=[], metavar="FAMILIES",
        help="with --report: also measure the build that --licences FAMILIES would make (same rules, its own grouped "
        "CV; repeatable) and put it beside the shipped one in the report and the model card, so a city that cannot "
        "use non-commercial or unstated data sees what it gives up",
    )  # fmt: skip


def decide(
    figures: dict[str, Any], candidates: Sequence[dict[str, Any]] = (), costs: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Whether the head ships, and why, from the candidates' grouped-CV figures of one run."""
    head, mapping = figures["head"], figures["mapping"]
    cap = max(FALSE_ALARM_CAP, mapping["false_alarm_other"])
    wins = head["label_recall"] > mapping["label_recall"] and head["false_alarm_other"] <= cap
    return {
        "shipped": "head" if wins else "mapping",
        "rule": "head iff its grouped-CV label recall (clips whose class is among the published labels) beats the "
        f"mapping's and its 'other' false-alarm share <= max({FALSE_ALARM_CAP}, mapping's)",
        "head": {
            "label_recall": round(head["label_recall"], 4),
            "wrong_label": round(head["wrong_label"], 4),
            "top1": round(head["top1"], 4),
            "false_alarm_other": round(head["false_alarm_other"], 4),
            "false_alarm_unseen": round(head["false_alarm_unseen"], 4),
        },
        "mapping": {
            "label_recall": round(mapping["label_recall"], 4),
            "wrong_label": round(mapping["wrong_label"], 4),
            "top1": round(mapping["top1"], 4),
            "false_alarm_other": round(mapping["false_alarm_other"], 4),
            **({"cost_ms": round(costs["mapping"], 1)} if costs and "mapping" in costs else {}),
        },
        "heads_compared": [
            {
                "name": c["name"],
                "shippable": c["shippable"],
                "label_recall": round(c["figures"]["label_recall"], 4),
                "min_label_recall": round(float(np.nanmin(c["figures"]["recall"])), 4),
                "wrong_label": round(c["figures"]["wrong_label"], 4),
                "top1": round(c["figures"]["top1"], 4),
                "min_top1_recall": round(float(np.nanmin(c["figures"]["top1_recall"])), 4),
                "false_alarm_other": round(c["figures"]["false_alarm_other"], 4),
                "false_alarm_unseen": round(c["figures"]["false_alarm_unseen"], 4),
                "cost_ms": round(c["cost_ms"], 1),
                "veto": c.get("veto", "none"),
            }
            for c in candidates
        ],
    }


def compare_licences(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Each --compare-licences build measured (never written): its shipped candidate's figures, or why it cannot be
    built (a class left with no recording under that filter)."""
    from .head.choose import choose_candidate
    from .head.licences import describe, parse_families
    from .head.measure import measure

    rows = []
    for spec in args.compare_licences:
        families = parse_families(spec)
        variant = argparse.Namespace(**{**vars(args), "licences": families})
        try:
            folder = work / ("licences-" + "-".join(sorted(families)))
            folder.mkdir()
            measured = measure(variant, folder)
        except DataError as exc:
            rows.append({"filter": describe(families), "summary": f"cannot be built: {exc}", "figures": None})
            continue
        chosen = choose_candidate(measured.candidates)
        f = chosen.figures
        rows.append({
            "filter": describe(families), "candidate": chosen.name, "recordings": len(measured.recordings),
            "figures": {k: f[k] for k in ("label_recall", "wrong_label", "false_alarm_other", "false_alarm_unseen",
                                          "top1", "recall")},
            "summary": f"{len(measured.recordings)} recordings, ships {chosen.name}: label recall "
            f"{f['label_recall']:.3f} (lowest class {np.nanmin(f['recall']):.2f}), wrong label {f['wrong_label']:.3f}, "
            f"'other' labelled {f['false_alarm_other']:.3f} seen / {f['false_alarm_unseen']:.3f} unseen kinds, "
            f"top-1 {f['top1']:.3f}",
        })  # fmt: skip
        print(f"--compare-licences {spec}: {rows[-1]['summary']}", flush=True)
    return rows


def _record_choice(bundle_dir: Path, choice: dict[str, Any]) -> None:
    """Add the decision to the manifest's provenance (atomically; the files it pins are unchanged)."""
    manifest = bundle_dir / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    data.setdefault("provenance", {})["default_choice"] = choice
    staging = manifest.with_name(f".{MANIFEST_NAME}.new")
    staging.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(staging, manifest)


def _replace(out: Path, bundle: Path) -> None:
    """Copy `bundle` to `out` beside it first, then swap: `out` is never half-written."""
    import shutil

    staged = out.with_name(f".{out.name}.new")
    shutil.rmtree(staged, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle, staged)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staged, out)


def _commit(args: argparse.Namespace, out: Path, result: HeadResult, comparisons: list[dict[str, Any]]) -> int:
    """--commit-dir: the bundle as the repository commits it (heads + manifest with its assembly recipe) and its
    model card."""
    from custom.daemon.model.assemble import AssemblyError

    from .head.model_card import write_model_card
    from .prebuilt import commit

    try:
        commit(out, args.shared, args.commit_dir)
    except (ValueError, AssemblyError) as exc:
        print(f"custom-convert default-bundle: --commit-dir: {exc}")
        return int(getattr(exc, "code", exitcodes.DATA_ERROR))
    card = write_model_card(
        args.commit_dir / "MODEL_CARD.md", json.loads((out / MANIFEST_NAME).read_text()), result, comparisons
    )
    print(f"wrote {args.commit_dir} with {card.name} (commit it; assemble: custom-sensord bundle assemble)")
    return exitcodes.OK


def run(args: argparse.Namespace) -> int:
    from .backbones.yamnet import shared_layout_args
    from .cli import main as convert

    if args.quick:
        args.augment = min(args.augment, 1)
        args.limit_per_label = args.limit_per_label or 12
    out = args.out
    with tempfile.TemporaryDirectory(prefix="default-bundle.") as tmp:
        work = Path(tmp)
        args.out = work / "headed"
        args.mixtures = args.report is not None  # label recall under street background, for the report and card
        try:
            headed, result = build_head(args, work)
        except DataError as exc:
            print(f"custom-convert default-bundle: {exc}")
            return exc.code
        choice = decide(result.figures, result.candidates, result.costs)
        comparisons = compare_licences(args, work) if args.report is not None else []
        if args.report is not None:
            from .head.report import write_report

            write_report(args.report, result, headed, args.shared, comparisons)
        print(
            f"default bundle: {choice['shipped']} ({result.chosen_name} head; grouped-CV label recall head "
            f"{choice['head']['label_recall']:.3f} vs mapping {choice['mapping']['label_recall']:.3f}; "
            f"'other' with a label {choice['head']['false_alarm_other']:.3f} vs "
            f"{choice['mapping']['false_alarm_other']:.3f})",
            flush=True,
        )
        if choice["shipped"] == "head":
            chosen = headed
        else:
            chosen = work / "mapping"
            status = convert(["yamnet", *shared_layout_args(args.shared), "--out", str(chosen)])
            if status != exitcodes.OK:
                return status
        _record_choice(chosen, choice)
        load_bundle(chosen)  # still valid after the provenance edit
        _replace(out, chosen)
    if args.commit_dir is not None:
        status = _commit(args, out, result, comparisons)
        if status != exitcodes.OK:
            return status
    bundle = load_bundle(out)
    print(f"wrote {out} ({bundle.bundle_id}, sha256 {bundle.sha256[:12]}…)")
    return exitcodes.OK
