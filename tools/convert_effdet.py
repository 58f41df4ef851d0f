#!/usr/bin/env python
"""Convert an effdet (efficientdet-pytorch) checkpoint into a plugins EfficientDet checkpoint.

Usage::

    python tools/convert_effdet.py --variant efficientdet_d0 tf_efficientdet_d0.pth out.pth
    python tools/convert_effdet.py --variant efficientdet_d0 --format d2 tf_efficientdet_d0.pth d0_d2.pth
    python tools/convert_effdet.py --variant efficientdet_d0 --format mm tf_efficientdet_d0.pth d0_mm.pth

``--format core`` (default) writes the bare ``plugins.core.EfficientDet`` state dict; ``d2`` a
Detectron2 checkpoint (``{"model": ...}``) for ``MODEL.WEIGHTS`` of ``configs/efficientdet_dN.yaml``;
``mm`` an mmengine checkpoint (``{"state_dict": ..., "meta": ...}``) for
``configs/mmdet/efficientdet_dN.py`` (``load_from``).

The input may be a bare state dict or a training checkpoint holding one under ``state_dict``,
``state_dict_ema`` (with ``--ema``) or ``model``. The converted dict is checked against
``EfficientDet(variant, num_classes)`` before it is written; missing or unexpected keys and shape
mismatches are listed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.convert.effdet import KeyMismatchError, convert_effdet_state_dict  # noqa: E402
from plugins.core.efficientdet import EfficientDet  # noqa: E402
from plugins.core.variants import EFFICIENTDET_VARIANTS  # noqa: E402
from plugins.safe_load import (  # noqa: E402
    CheckpointError,
    load_checkpoint_file,
    save_checkpoint_file,
)

# The sibling tool, imported from this directory: pb1-detectron2 installs detectron2's own
# top-level "tools" package into site-packages, which shadows `import tools.convert_checkpoint`.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_checkpoint import d2_to_mm_checkpoint  # noqa: E402

# plugins.core.EfficientDet attribute -> Detectron2 meta-arch attribute (the mm layout follows
# from tools/convert_checkpoint.py's prefix table).
CORE_TO_D2_PREFIXES = (
    ("backbone.", "backbone.body."),
    ("fpn.", "backbone.fpn."),
    ("class_net.", "head.class_net."),
    ("box_net.", "head.box_net."),
)


# COCO's 80 used category ids (1..90 less 10 unused ids). effdet's 90-class heads predict class k
# for category id k + 1; Detectron2 and MMDetection number the 80 classes by sorted category id.
COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_80_IDS = tuple(i for i in range(1, 91) if i not in COCO_UNUSED_IDS)


def coco90_to_coco80(state_dict: dict, num_anchors: int) -> dict:
    """Keep the class-head outputs of COCO's 80 used categories (channel ``a * K + k`` layout)."""
    keep = torch.tensor([a * 90 + cat_id - 1 for a in range(num_anchors) for cat_id in COCO_80_IDS])
    out = dict(state_dict)
    for key, value in state_dict.items():
        if key.startswith("class_net.predict.") and value.shape[0] == num_anchors * 90:
            out[key] = value.index_select(0, keep).clone()
    return out


def core_to_framework_checkpoint(state_dict: dict, fmt: str) -> dict:
    """Wrap a ``plugins.core.EfficientDet`` state dict as a ``core`` / ``d2`` / ``mm`` checkpoint."""
    if fmt == "core":
        return state_dict
    d2 = {}
    for key, value in state_dict.items():
        for core_prefix, d2_prefix in CORE_TO_D2_PREFIXES:
            if key.startswith(core_prefix):
                d2[d2_prefix + key[len(core_prefix) :]] = value
                break
        else:
            raise ValueError(f"state_dict: key {key!r} is not an EfficientDet key")
    checkpoint = {"model": d2}
    return checkpoint if fmt == "d2" else d2_to_mm_checkpoint(checkpoint, "efficientdet")


def _load(path: Path, ema: bool) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: input checkpoint {str(path)!r} does not exist")
    try:
        obj = load_checkpoint_file(path)
    except CheckpointError as exc:  # corrupt file, wrong format, pickled code (refused)
        raise SystemExit(f"error: {exc}") from exc
    if isinstance(obj, dict):
        keys = ("state_dict_ema", "state_dict", "model") if ema else ("state_dict", "model")
        for key in keys:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise SystemExit(f"error: {str(path)!r} does not hold a state dict of tensors")
    return obj


def _num_classes(state_dict: dict, num_anchors: int) -> int | None:
    for key in ("class_net.predict.pw.bias", "class_net.predict.pw.weight"):
        if key in state_dict:
            return state_dict[key].shape[0] // num_anchors
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the converter; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variant", required=True, choices=sorted(EFFICIENTDET_VARIANTS), help="our variant"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the checkpoint's class head (default: read from the checkpoint)",
    )
    parser.add_argument("--ema", action="store_true", help="prefer the EMA weights if present")
    parser.add_argument(
        "--format",
        choices=("core", "d2", "mm"),
        default="core",
        help="output layout: bare core state dict, Detectron2 or mmengine checkpoint",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the output file if it exists"
    )
    parser.add_argument("input", type=Path, help="effdet checkpoint (.pth)")
    parser.add_argument("output", type=Path, help="where to write the converted state dict")
    args = parser.parse_args(argv)

    source = _load(args.input, args.ema)
    try:
        converted = convert_effdet_state_dict(source, args.variant)
    except KeyMismatchError as exc:
        raise SystemExit(
            f"error: {str(args.input)!r} is not an effdet EfficientDet checkpoint: {exc}"
        ) from exc

    variant = EFFICIENTDET_VARIANTS[args.variant]
    num_classes = args.num_classes or _num_classes(converted, variant.num_anchors) or 90
    with torch.device("meta"):
        model = EfficientDet(variant, num_classes=num_classes)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(converted)
        if tuple(converted[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        lines = [
            f"error: {str(args.input)!r} does not match {args.variant} ({num_classes} classes)"
        ]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                lines.append(f"  {title} keys ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        raise SystemExit("\n".join(lines))

    if args.format != "core" and num_classes == 90:
        converted = coco90_to_coco80(converted, variant.num_anchors)
        num_classes = 80
        print("class head: 90 COCO ids -> the 80 used COCO categories (framework label order)")
    try:
        save_checkpoint_file(
            core_to_framework_checkpoint(converted, args.format),
            args.output,
            overwrite=args.overwrite,
            inputs=[args.input],
        )
    except FileExistsError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(
        f"wrote {len(converted)} tensors ({args.variant}, {num_classes} classes, "
        f"{args.format} layout) to {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
