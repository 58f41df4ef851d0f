#!/usr/bin/env python
"""Convert EfficientDet / CornerNet checkpoints between Detectron2 and MMDetection.

Both adapters keep the core modules under fixed attribute paths (the adapters contract), so a
checkpoint moves across by renaming key prefixes; the tensors are untouched:

=============  ================================  ================================
model          Detectron2 (``model``)             MMDetection (``state_dict``)
=============  ================================  ================================
EfficientDet   ``backbone.body.``                 ``backbone.body.``
               ``backbone.fpn.``                  ``neck.fpn.``
               ``head.class_net.``                ``bbox_head.class_net.``
               ``head.box_net.``                  ``bbox_head.box_net.``
CornerNet      ``backbone.body.``                 ``backbone.body.``
               ``head.net.``                      ``bbox_head.net.``
=============  ================================  ================================

A key outside these prefixes is an error (it would not load on the other side).

EMA weights. Detectron2 (:mod:`plugins.d2.ema`) stores the trained weights under ``model`` and
the average under ``ema["state"]``; an mmengine checkpoint written with ``EMAHook`` stores the
average under ``state_dict`` and the trained weights under ``ema_state_dict`` (keys
``module.<name>`` plus ``steps``). Without ``--ema`` only the trained weights are converted
(``model`` <-> ``state_dict``, or ``ema_state_dict`` when present); with ``--ema`` both are
carried over into the other side's layout, so evaluation there uses the average.
Optimizer, scheduler and iteration counters are not converted.

Usage::

    python tools/convert_checkpoint.py output/model_final.pth work_dirs/effdet_mm.pth
    python tools/convert_checkpoint.py work_dirs/epoch_12.pth model_d2.pth --to d2 --ema

The direction defaults to what the input holds (``model`` -> mm, ``state_dict`` -> d2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugins.safe_load import (  # noqa: E402
    CheckpointError,
    load_checkpoint_file,
    register_installed_framework_types,
    save_checkpoint_file,
)

register_installed_framework_types()  # mmengine checkpoints hold HistoryBuffer objects

__all__ = [
    "PREFIXES",
    "detect_arch",
    "d2_to_mm_state_dict",
    "mm_to_d2_state_dict",
    "d2_to_mm_checkpoint",
    "mm_to_d2_checkpoint",
    "convert_file",
    "main",
]

PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "efficientdet": (
        ("backbone.body.", "backbone.body."),
        ("backbone.fpn.", "neck.fpn."),
        ("head.class_net.", "bbox_head.class_net."),
        ("head.box_net.", "bbox_head.box_net."),
    ),
    "cornernet": (
        ("backbone.body.", "backbone.body."),
        ("head.net.", "bbox_head.net."),
    ),
}
"""Per architecture, ``(detectron2 prefix, mmdetection prefix)`` pairs."""

_SIDES = ("d2", "mm")
_EMA_PREFIX = "module."  # mmengine's averaged-model wrapper names


def detect_arch(state_dict: Mapping[str, Any], side: str) -> str:
    """Tell the architecture of a state dict from its head keys.

    Args:
        state_dict: model state dict of one side.
        side: ``"d2"`` or ``"mm"``.

    Returns:
        ``"efficientdet"`` or ``"cornernet"``.

    Raises:
        ValueError: unknown ``side`` or no recognisable head keys.
    """
    if side not in _SIDES:
        raise ValueError(f"side: expected one of {list(_SIDES)}, got {side!r}")
    column = 0 if side == "d2" else 1
    for arch in ("cornernet", "efficientdet"):
        head_prefix = PREFIXES[arch][-1][column]
        if any(key.startswith(head_prefix) for key in state_dict):
            return arch
    sample = sorted(state_dict)[:3]
    raise ValueError(
        f"state_dict: no EfficientDet or CornerNet head keys for side {side!r} (first keys: {sample})"
    )


def _swap(state_dict: Mapping[str, Any], arch: str | None, src: str) -> dict:
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
    arch = detect_arch(state_dict, src) if arch is None else arch
    if arch not in PREFIXES:
        raise ValueError(f"arch: expected one of {sorted(PREFIXES)}, got {arch!r}")
    pairs = PREFIXES[arch] if src == "d2" else tuple((m, d) for d, m in PREFIXES[arch])
    out: dict = {}
    for key, value in state_dict.items():
        for old, new in pairs:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            allowed = [old for old, _ in pairs]
            raise ValueError(
                f"state_dict: key {key!r} is outside the {arch} prefixes {allowed} of side {src!r}"
            )
    return out


def d2_to_mm_state_dict(state_dict: Mapping[str, Any], arch: str | None = None) -> dict:
    """Rename a Detectron2 model state dict to the MMDetection detector's names.

    Args:
        state_dict: Detectron2 ``model`` state dict.
        arch: ``"efficientdet"`` or ``"cornernet"``; ``None`` detects it. Default ``None``.

    Returns:
        dict with the same tensor objects under MMDetection names.

    Raises:
        ValueError: unknown architecture or a key outside the contract's prefixes.
    """
    return _swap(state_dict, arch, "d2")


def mm_to_d2_state_dict(state_dict: Mapping[str, Any], arch: str | None = None) -> dict:
    """Rename an MMDetection detector state dict to the Detectron2 meta-arch's names.

    Args:
        state_dict: mmengine ``state_dict``.
        arch: ``"efficientdet"`` or ``"cornernet"``; ``None`` detects it. Default ``None``.

    Returns:
        dict with the same tensor objects under Detectron2 names.

    Raises:
        ValueError: unknown architecture or a key outside the contract's prefixes.
    """
    return _swap(state_dict, arch, "mm")


def d2_to_mm_checkpoint(
    checkpoint: Mapping[str, Any], arch: str | None = None, use_ema: bool = False
) -> dict:
    """Detectron2 checkpoint (``model``, optional ``ema``) -> mmengine checkpoint.

    Args:
        checkpoint: dict with ``"model"`` (and, for ``use_ema``, ``"ema"`` from
            :class:`plugins.d2.ema.ModelEMA`).
        arch: architecture, ``None`` to detect. Default ``None``.
        use_ema: write the average as ``state_dict`` and the trained weights as
            ``ema_state_dict`` (mmengine ``EMAHook`` layout). Default ``False``.

    Returns:
        ``{"state_dict": ..., "meta": {...}}`` (plus ``"ema_state_dict"`` with ``use_ema``).

    Raises:
        ValueError: no ``model`` entry, or ``use_ema`` without an ``ema`` entry.
    """
    if "model" not in checkpoint:
        raise ValueError(f"checkpoint: expected a 'model' entry, got keys {sorted(checkpoint)}")
    model = d2_to_mm_state_dict(checkpoint["model"], arch)
    arch = detect_arch(model, "mm") if arch is None else arch
    meta = {"converted_from": "detectron2", "arch": arch, "ema": bool(use_ema)}
    if not use_ema:
        return {"state_dict": model, "meta": meta}
    ema = checkpoint.get("ema")
    if not isinstance(ema, Mapping) or "state" not in ema:
        raise ValueError("checkpoint: use_ema needs an 'ema' entry with a 'state' dict")
    average = d2_to_mm_state_dict(ema["state"], arch)
    raw = {_EMA_PREFIX + key: value for key, value in model.items()}
    raw["steps"] = torch.tensor(int(ema.get("num_updates", 0)))
    return {"state_dict": average, "ema_state_dict": raw, "meta": meta}


def mm_to_d2_checkpoint(
    checkpoint: Mapping[str, Any], arch: str | None = None, use_ema: bool = False
) -> dict:
    """mmengine checkpoint (``state_dict``, optional ``ema_state_dict``) -> Detectron2's.

    Args:
        checkpoint: dict with ``"state_dict"``; with an ``EMAHook`` it also holds
            ``"ema_state_dict"`` and ``state_dict`` is then the average.
        arch: architecture, ``None`` to detect. Default ``None``.
        use_ema: also write ``ema`` (a :class:`plugins.d2.ema.ModelEMA` state). Default
            ``False``.

    Returns:
        ``{"model": ...}`` (plus ``"ema"`` with ``use_ema``): ``model`` always holds the
        trained weights.

    Raises:
        ValueError: no ``state_dict`` entry, or ``use_ema`` without ``ema_state_dict``.
    """
    if "state_dict" not in checkpoint:
        raise ValueError(
            f"checkpoint: expected a 'state_dict' entry, got keys {sorted(checkpoint)}"
        )
    state = checkpoint["state_dict"]
    ema_entry = checkpoint.get("ema_state_dict")
    if ema_entry is None:
        if use_ema:
            raise ValueError("checkpoint: use_ema needs an 'ema_state_dict' entry (EMAHook)")
        return {"model": mm_to_d2_state_dict(state, arch)}
    raw = {
        key[len(_EMA_PREFIX) :]: value
        for key, value in ema_entry.items()
        if key.startswith(_EMA_PREFIX)
    }
    out: dict = {"model": mm_to_d2_state_dict(raw, arch)}
    if use_ema:
        steps = ema_entry.get("steps", 0)
        out["ema"] = {
            "num_updates": int(steps),
            "state": mm_to_d2_state_dict(state, arch),
        }
    return out


def convert_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str | None = None,
    arch: str | None = None,
    use_ema: bool = False,
    overwrite: bool = False,
) -> str:
    """Convert the checkpoint file ``src`` and save it as ``dst``.

    Args:
        src: input checkpoint (``torch.save`` file).
        dst: output path (parent folders are created).
        to: ``"mm"`` or ``"d2"``; ``None`` picks from the input (``model`` -> ``"mm"``,
            ``state_dict`` -> ``"d2"``). Default ``None``.
        arch: ``"efficientdet"`` / ``"cornernet"`` or ``None`` to detect. Default ``None``.
        use_ema: carry EMA weights (see the module docstring). Default ``False``.
        overwrite: replace an existing ``dst``. Default ``False`` (an existing ``dst`` is an
            error; ``dst`` may never be ``src``).

    Returns:
        The direction used, ``"mm"`` or ``"d2"``.

    Raises:
        ValueError: the input is neither layout, or an invalid ``to``.
        CheckpointError: the input is unreadable, or needs types outside the allow-list.
        FileExistsError: ``dst`` exists (without ``overwrite``) or is ``src``.
    """
    checkpoint = load_checkpoint_file(src)  # weights only, allow-list (plugins.safe_load)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"src: expected a checkpoint dict, got {type(checkpoint).__name__}")
    if to is None:
        if "model" in checkpoint:
            to = "mm"
        elif "state_dict" in checkpoint:
            to = "d2"
        else:
            raise ValueError(
                f"src: expected a Detectron2 ('model') or mmengine ('state_dict') checkpoint, "
                f"got keys {sorted(checkpoint)}"
            )
    if to not in _SIDES:
        raise ValueError(f"to: expected one of {list(_SIDES)}, got {to!r}")
    if to == "mm":
        out = d2_to_mm_checkpoint(checkpoint, arch, use_ema)
    else:
        out = mm_to_d2_checkpoint(checkpoint, arch, use_ema)
    save_checkpoint_file(out, dst, overwrite=overwrite, inputs=[src])
    return to


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="input checkpoint")
    parser.add_argument("dst", help="output checkpoint")
    parser.add_argument(
        "--to", choices=_SIDES, default=None, help="target framework (default: from the input)"
    )
    parser.add_argument(
        "--arch", choices=sorted(PREFIXES), default=None, help="default: detected from the keys"
    )
    parser.add_argument("--ema", action="store_true", help="carry the EMA weights over too")
    parser.add_argument("--overwrite", action="store_true", help="replace dst if it exists")
    args = parser.parse_args(argv)
    try:
        to = convert_file(args.src, args.dst, args.to, args.arch, args.ema, args.overwrite)
    except (ValueError, CheckpointError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} ({'MMDetection' if to == 'mm' else 'Detectron2'} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
