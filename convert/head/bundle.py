"""A trained head as bundle files: the TFLite export and the version-1 or version-2 draft that carries it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from custom.daemon.model.bundle import (
    TRAINED_BAND_RATE_HZ,
    BundleDraft,
    ClassSpec,
    EnsembleDraft,
    HeadSpec,
    MemberDraft,
    ModelSpec,
    TensorSpec,
)
from custom.daemon.model.frontend import FrontendParams

from ..classes import CLASS_NAMES, URBAN_CLASSES
from .backbones import HeadBackbone
from .choose import Candidate, Variant
from .data import WINDOW_S
from .fit import Head
from .veto import VetoChoice

HEAD_FILE = "head.tflite"


def export_head(head: Head, mode: str) -> bytes:
    """The head as TFLite: features (1, dims) -> (1, 10) class scores, whatever its output layer, so the daemon
    runs every head alike. A softmax head's "other" output is computed and sliced off."""
    import tensorflow as tf

    from ..tflite.export import export_tflite

    # fixed names: Keras numbers unnamed layers per process ("dense_3"), and the names land in the .tflite, so an
    # export after other Keras work would differ byte for byte from the committed head (models/default)
    dims, outputs = head.w.shape
    inputs = tf.keras.Input((dims,), batch_size=1, name="features")
    dense = tf.keras.layers.Dense(outputs, activation=head.output, name="head")
    scores = dense(inputs)
    if outputs > len(CLASS_NAMES):
        scores = tf.keras.layers.Lambda(lambda s: s[:, : len(CLASS_NAMES)], name="classes")(scores)
    model = tf.keras.Model(inputs, scores, name="head")
    dense.set_weights([head.w, head.b])
    return export_tflite(model, (1, dims), mode)


def head_draft(args, backbone: HeadBackbone, head: HeadSpec, sources: dict[str, Path], cuts, provenance) -> BundleDraft:
    return BundleDraft(
        bundle_id=args.bundle_id or f"{backbone.name}-head-urban10",
        version=args.version,
        backbone=backbone.name,
        frontend=backbone.frontend,
        backbone_model=backbone.spec,
        classes=[
            ClassSpec(c.name, c.audioset_name, c.mid, t, idx)
            for c, t, idx in zip(URBAN_CLASSES, cuts, backbone.mapping, strict=True)
        ],
        sources=sources,
        aggregation="mean",
        provenance=provenance,
        head=head,
    )


def head_spec(
    backbone: HeadBackbone, pooling: str, with_scores: bool, dims: int, veto: VetoChoice | None = None
) -> HeadSpec:
    """`veto`: the candidate's; this head carries it if its backbone is one of the veto's sources."""
    model = ModelSpec(
        file=HEAD_FILE,
        input_kind="features",
        input=TensorSpec((1, dims), "float32"),
        output=TensorSpec((1, 10), "float32"),
    )
    spec = veto.spec_for(backbone.name) if veto else None
    return HeadSpec(model, 1, backbone.embedding, pooling, with_scores, CLASS_NAMES, veto=spec)


def strided(backbone: HeadBackbone, variant: Variant) -> HeadBackbone:
    """The backbone as the variant runs it: its front end's patch hop times the variant's stride."""
    if variant.patch_stride == 1 or not isinstance(backbone.frontend, FrontendParams):
        return backbone
    hop = backbone.frontend.patch_hop_frames * variant.patch_stride
    return dataclasses.replace(backbone, frontend=dataclasses.replace(backbone.frontend, patch_hop_frames=hop))


def ensemble_draft(
    args: argparse.Namespace, chosen: Candidate, backbones: dict[str, HeadBackbone], sources: dict[str, Path],
    provenance: dict[str, Any],
) -> EnsembleDraft:  # fmt: skip
    members = []
    for single, weight in zip(chosen.members, chosen.weights, strict=True):
        assert single.variant is not None and single.features is not None
        backbone = strided(backbones[single.name], single.variant)
        spec = head_spec(
            backbone, single.variant.pooling, single.variant.with_scores, single.features.shape[1], chosen.veto
        )
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, file=f"head_{single.name}.tflite"))
        members.append(MemberDraft(backbone.name, backbone.frontend, backbone.spec, spec, weight))
    return EnsembleDraft(
        bundle_id=args.bundle_id or "-".join(chosen.backbones) + "-heads-urban10",
        version=args.version,
        members=members,
        classes=[
            ClassSpec(c.name, c.audioset_name, c.mid, t) for c, t in zip(URBAN_CLASSES, chosen.thresholds, strict=True)
        ],  # fmt: skip
        sources=sources,
        band_rate_hz=TRAINED_BAND_RATE_HZ,
        window_s=WINDOW_S,
        provenance=provenance,
    )
