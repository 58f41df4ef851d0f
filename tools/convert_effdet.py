#!/usr/bin/env python
"""Convert an effdet (efficientdet-pytorch) checkpoint into a plugins EfficientDet checkpoint.

Usage::

    python tools/convert_effdet.py --variant efficientdet_d0 tf_efficientdet_d0.pth out.pth

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


def _load(path: Path, ema: bool) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: input checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, wrong format, pickled code
        raise SystemExit(f"error: cannot read checkpoint {str(path)!r}: {exc}") from exc
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

    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, args.output)
    print(
        f"wrote {len(converted)} tensors ({args.variant}, {num_classes} classes) to {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
