"""Every window's features from the daemon's own backbone code (a probe bundle with an untrained head), cached
outside git when the data match.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from custom.daemon.model.bundle import sha256_file, write_bundle
from custom.daemon.model.inference import Model

from ..classes import URBAN_CLASSES
from .backbones import HeadBackbone
from .bundle import HEAD_FILE, export_head, head_draft, head_spec
from .data import THIN_CLASSES, BackboneFeatures, Examples, build_examples, load_examples, save_examples
from .fit import Head
from .licences import FAMILIES, describe

CACHE_VERSION = 3  # 2: mix offsets drawn as a fraction (rate-independent); 3: EfficientAT STFT in float32 (scipy)


def probe(args, backbone: HeadBackbone, work: Path) -> Model:
    """A bundle with an untrained head, so features come from the daemon's own backbone code path."""
    folder = work / f"probe-{backbone.name}"
    folder.mkdir(parents=True, exist_ok=True)
    dims = backbone.embedding_dims
    head = folder / HEAD_FILE
    head.write_bytes(export_head(Head(np.zeros((dims, 10), np.float32), np.zeros(10, np.float32)), "float32"))
    draft = head_draft(
        args, backbone, head_spec(backbone, "mean", False, dims), {backbone.model_file: backbone.path,
        HEAD_FILE: head}, [0.5] * 10, {},
    )  # fmt: skip
    return Model(write_bundle(draft, folder / "bundle"))


def window_examples(args, backbone: HeadBackbone, probe: Model, recordings, shared: Path) -> Examples:
    from tqdm import tqdm

    thin = sum(1 for r in recordings if r.source == "clips" and r.labels and URBAN_CLASSES[r.labels[0]].clip_label in
               THIN_CLASSES)  # fmt: skip
    key = json.dumps(
        {
            "backbone": sha256_file(backbone.path),
            "manifests": [
                sha256_file(shared / m) for m in ("data/train-audio/manifest.csv", "data/clips/manifest.csv")
            ],
            "recordings": len(recordings),
            "augment": args.augment,
            "seed": args.seed,
            "version": CACHE_VERSION,
        },
        sort_keys=True,
    )
    subset = "" if args.licences == frozenset(FAMILIES) else "-" + describe(args.licences).replace(",", "-")
    cache = None if args.cache is None else args.cache.with_name(f"{args.cache.stem}{subset}.{backbone.name}.npz")
    examples = load_examples(cache, key) if cache is not None else None
    if examples is not None:
        print(f"{backbone.name} features: {len(examples.real)} windows from {cache}")
        return examples
    total = len(recordings) + thin * args.augment
    with tqdm(total=total, desc=f"{backbone.name} windows", unit="win", disable=None, mininterval=5) as bar:
        examples = build_examples(
            recordings, BackboneFeatures(probe), augment_per_clip=args.augment, seed=args.seed,
            rate_hz=backbone.rate_hz, progress=bar.update,
        )  # fmt: skip
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_examples(cache, examples, key)
    return examples
