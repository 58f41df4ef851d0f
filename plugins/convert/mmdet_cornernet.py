"""Map MMDetection CornerNet state dicts onto :class:`plugins.core.cornernet.CornerNet` and back.

mmdet's detector holds ``backbone.*`` (``HourglassNet``) and ``bbox_head.*`` (``CornerHead``);
ours holds ``backbone.*`` (:class:`~plugins.core.hourglass.HourglassNet`) and ``head.*``
(:class:`~plugins.core.cornernet.CornerNetHead`). Every tensor maps 1:1, unchanged; only the
names differ:

- backbone: ``hourglass_modules`` -> ``hourglasses``, hourglass levels ``up1 / low1 / low2 /
  low3`` -> ``skip / down / inner / up``, residual blocks ``conv1 / bn1 / conv2 / bn2 /
  downsample`` -> ``conv_a / norm_a / conv_b / norm_b / shortcut``, ``ConvModule.bn`` ->
  ``norm``, ``conv1x1s / remap_convs / inters`` -> ``merge_in / merge_out / inter_blocks``,
  the stem's one-block ``ResLayer`` ``stem.1.0`` -> ``stem.1``;
- head: branch-major ``bbox_head.<branch>.<level>`` -> level-major
  ``head.levels.<level>.<branch>``; corner pooling ``direction1_conv / direction2_conv /
  aftpool_conv / conv1 / conv2`` -> ``branch_a / branch_b / merge / skip / fuse``; prediction
  branches ``0.conv / 1.conv`` -> ``hidden / out``.

Pure dict code: nothing here imports mmdet.
"""

from __future__ import annotations

from collections.abc import Mapping

_BACKBONE_TOKENS = {
    "hourglass_modules": "hourglasses",
    "up1": "skip",
    "low1": "down",
    "low2": "inner",
    "low3": "up",
    "conv1": "conv_a",
    "bn1": "norm_a",
    "conv2": "conv_b",
    "bn2": "norm_b",
    "downsample": "shortcut",
    "bn": "norm",
    "conv1x1s": "merge_in",
    "remap_convs": "merge_out",
    "inters": "inter_blocks",
}
_BACKBONE_TOKENS_INV = {v: k for k, v in _BACKBONE_TOKENS.items()}

_POOL_TOKENS = {
    "direction1_conv": "branch_a",
    "direction2_conv": "branch_b",
    "aftpool_conv": "merge",
    "conv1": "skip",
    "conv2": "fuse",
    "bn": "norm",
}
_POOL_TOKENS_INV = {v: k for k, v in _POOL_TOKENS.items()}

_POOL_BRANCHES = ("tl_pool", "br_pool")
_PRED_BRANCHES = ("tl_heat", "br_heat", "tl_emb", "br_emb", "tl_off", "br_off")
_PRED_TOKENS = {"0": "hidden", "1": "out"}
_PRED_TOKENS_INV = {v: k for k, v in _PRED_TOKENS.items()}


def _unwrap(sd: Mapping) -> Mapping:
    if not isinstance(sd, Mapping):
        raise ValueError(f"sd: expected a state dict (mapping), got {type(sd).__name__}")
    inner = sd.get("state_dict")
    return inner if isinstance(inner, Mapping) else sd


def _bad(key: str, what: str) -> ValueError:
    return ValueError(f"sd: unexpected key {key!r} (not part of {what})")


def hourglass_key_from_mmdet(key: str) -> str:
    """mmdet ``HourglassNet`` parameter name (without ``backbone.``) -> ours."""
    parts = key.split(".")
    if parts[:3] == ["stem", "1", "0"]:
        parts = ["stem", "1"] + parts[3:]
    return ".".join(_BACKBONE_TOKENS.get(p, p) for p in parts)


def hourglass_key_to_mmdet(key: str) -> str:
    """Our :class:`~plugins.core.hourglass.HourglassNet` parameter name -> mmdet's."""
    parts = [_BACKBONE_TOKENS_INV.get(p, p) for p in key.split(".")]
    if parts[:2] == ["stem", "1"]:
        parts = ["stem", "1", "0"] + parts[2:]
    return ".".join(parts)


def corner_head_key_from_mmdet(key: str) -> str:
    """mmdet ``CornerHead`` parameter name (without ``bbox_head.``) -> ours (without ``head.``)."""
    parts = key.split(".")
    if len(parts) < 3 or not parts[1].isdigit():
        raise _bad(key, "mmdet's CornerHead")
    branch, level, rest = parts[0], parts[1], parts[2:]
    if branch in _POOL_BRANCHES:
        rest = [_POOL_TOKENS.get(p, p) for p in rest]
    elif branch in _PRED_BRANCHES:
        if len(rest) != 3 or rest[0] not in _PRED_TOKENS or rest[1] != "conv":
            raise _bad(key, "mmdet's CornerHead")
        rest = [_PRED_TOKENS[rest[0]], rest[2]]
    else:
        raise _bad(key, "mmdet's CornerHead")
    return ".".join(["levels", level, branch] + rest)


def corner_head_key_to_mmdet(key: str) -> str:
    """Our :class:`~plugins.core.cornernet.CornerNetHead` parameter name -> mmdet's."""
    parts = key.split(".")
    if len(parts) < 4 or parts[0] != "levels" or not parts[1].isdigit():
        raise _bad(key, "CornerNetHead")
    level, branch, rest = parts[1], parts[2], parts[3:]
    if branch in _POOL_BRANCHES:
        rest = [_POOL_TOKENS_INV.get(p, p) for p in rest]
    elif branch in _PRED_BRANCHES:
        if len(rest) != 2 or rest[0] not in _PRED_TOKENS_INV:
            raise _bad(key, "CornerNetHead")
        rest = [_PRED_TOKENS_INV[rest[0]], "conv", rest[1]]
    else:
        raise _bad(key, "CornerNetHead")
    return ".".join([branch, level] + rest)


def _num_merges(keys: list[str], prefix: str) -> int:
    found = {k[len(prefix) :].split(".")[0] for k in keys if k.startswith(prefix)}
    return len(found)


def convert_mmdet_cornernet_state_dict(sd: Mapping, strict: bool = True) -> dict:
    """mmdet ``CornerNet`` state dict -> :class:`plugins.core.cornernet.CornerNet` state dict.

    Args:
        sd: mmdet detector state dict (``backbone.*``, ``bbox_head.*``), or a checkpoint dict
            holding it under ``"state_dict"``.
        strict: raise on keys outside backbone/head; ``False`` drops them. Default ``True``.

    Returns:
        dict: ``backbone.*`` / ``head.*`` keys, the same tensor objects. mmdet's unused
        ``backbone.inters`` block of a single-stack hourglass is dropped.

    Raises:
        ValueError: ``sd`` is not a mapping, or (``strict``) holds an unknown key.
    """
    sd = _unwrap(sd)
    keys = list(sd.keys())
    merges = _num_merges(keys, "backbone.conv1x1s.")
    out: dict = {}
    for key, value in sd.items():
        if key.startswith("backbone."):
            sub = key[len("backbone.") :]
            if sub.startswith("inters.") and int(sub.split(".")[1]) >= merges:
                continue  # mmdet builds one unused block when num_stacks == 1
            out["backbone." + hourglass_key_from_mmdet(sub)] = value
        elif key.startswith("bbox_head."):
            out["head." + corner_head_key_from_mmdet(key[len("bbox_head.") :])] = value
        elif strict:
            raise _bad(key, "mmdet's CornerNet (backbone.* / bbox_head.*)")
    return out


def to_mmdet_cornernet_state_dict(sd: Mapping, strict: bool = True) -> dict:
    """:class:`plugins.core.cornernet.CornerNet` state dict -> mmdet ``CornerNet`` layout.

    Inverse of :func:`convert_mmdet_cornernet_state_dict` (a single-stack model lacks mmdet's
    unused ``backbone.inters.0``; load it into mmdet with ``strict=False``).

    Args:
        sd: our state dict (``backbone.*``, ``head.*``), or a dict holding it under
            ``"state_dict"``.
        strict: raise on keys outside backbone/head; ``False`` drops them. Default ``True``.

    Returns:
        dict with mmdet's ``backbone.*`` / ``bbox_head.*`` names, the same tensor objects.
    """
    sd = _unwrap(sd)
    out: dict = {}
    for key, value in sd.items():
        if key.startswith("backbone."):
            out["backbone." + hourglass_key_to_mmdet(key[len("backbone.") :])] = value
        elif key.startswith("head."):
            out["bbox_head." + corner_head_key_to_mmdet(key[len("head.") :])] = value
        elif strict:
            raise _bad(key, "CornerNet (backbone.* / head.*)")
    return out


__all__ = [
    "convert_mmdet_cornernet_state_dict",
    "corner_head_key_from_mmdet",
    "corner_head_key_to_mmdet",
    "hourglass_key_from_mmdet",
    "hourglass_key_to_mmdet",
    "to_mmdet_cornernet_state_dict",
]
