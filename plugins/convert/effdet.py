"""Convert effdet (rwightman/efficientdet-pytorch) state dicts to and from ours.

Pure dict/tensor code: effdet itself is not imported. The layouts are those of effdet 0.4.1's
``EfficientDet`` (timm EfficientNet backbone, ``BiFpn`` with ``fnode`` lists, ``HeadNet`` with
repeat-first BatchNorm lists) and of :class:`plugins.core.efficientdet.EfficientDet`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from plugins.core.variants import EfficientDetVariant, get_variant

# per-block renames inside the timm EfficientNet blocks: theirs -> ours
_DS_BLOCK = {
    "conv_dw": "dw_conv",
    "bn1": "dw_bn",
    "se.conv_reduce": "se.reduce",
    "se.conv_expand": "se.expand",
    "conv_pw": "project_conv",
    "bn2": "project_bn",
}
_IR_BLOCK = {
    "conv_pw": "expand_conv",
    "bn1": "expand_bn",
    "conv_dw": "dw_conv",
    "bn2": "dw_bn",
    "se.conv_reduce": "se.reduce",
    "se.conv_expand": "se.expand",
    "conv_pwl": "project_conv",
    "bn3": "project_bn",
}
_SEP_CONV = {"conv_dw": "dw", "conv_pw": "pw", "conv": "pw", "bn": "bn"}
_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


class KeyMismatchError(KeyError):
    """A key that neither layout knows; the message names it."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def _node_offsets(num_levels: int) -> list[list[int]]:
    """effdet's ``inputs_offsets`` of every BiFPN node (top-down nodes first).

    Offsets index the list ``[inputs..., node outputs...]``; the position of an offset in its
    node's list is the input position of our :class:`~plugins.core.bifpn.FusionNode`.
    """
    ids = {i: [i] for i in range(num_levels)}
    nxt = num_levels
    nodes = []
    for i in range(num_levels - 2, -1, -1):
        nodes.append([ids[i][-1], ids[i + 1][-1]])
        ids[i].append(nxt)
        nxt += 1
    for i in range(1, num_levels):
        nodes.append(list(ids[i]) + [ids[i - 1][-1]])
        ids[i].append(nxt)
        nxt += 1
    return nodes


def _our_node(num_levels: int, k: int) -> str:
    if k < num_levels - 1:
        return f"top_down.{k}"
    return f"bottom_up.{k - (num_levels - 1)}"


def _their_node(num_levels: int, group: str, j: int) -> int:
    return j if group == "top_down" else j + num_levels - 1


def _backbone_levels(cfg: EfficientDetVariant) -> int:
    return min(cfg.max_level, 5) - cfg.min_level + 1


def _rename_block(rest: str, table: Mapping[str, str]) -> str | None:
    for src, dst in table.items():
        if rest.startswith(src + "."):
            return dst + rest[len(src) :]
    return None


def effdet_key_to_ours(key: str, cfg: EfficientDetVariant, ir_blocks: set[str]) -> str:
    """Map one effdet key to ours.

    Args:
        key: effdet state-dict key.
        cfg: the variant (for the number of levels).
        ir_blocks: ``"s.b"`` ids of backbone blocks with an expansion conv (``conv_pwl`` present).

    Raises:
        KeyMismatchError: the key is not part of effdet's EfficientDet layout.
    """
    n = cfg.num_levels
    if key.startswith("backbone."):
        rest = key[len("backbone.") :]
        if rest.startswith("conv_stem."):
            return "backbone.stem_conv." + rest[len("conv_stem.") :]
        if rest.startswith("bn1."):
            return "backbone.stem_bn." + rest[len("bn1.") :]
        m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)", rest)
        if m:
            block = f"{m.group(1)}.{m.group(2)}"
            table = _IR_BLOCK if block in ir_blocks else _DS_BLOCK
            renamed = _rename_block(m.group(3), table)
            if renamed is not None:
                return f"backbone.stages.{block}.{renamed}"
    elif key.startswith("fpn."):
        m = re.fullmatch(r"fpn\.resample\.(\d+)\.conv\.(conv|bn)\." + _PARAM, key)
        if m:
            extra = int(m.group(1)) - _backbone_levels(cfg)
            return f"fpn.extra.{extra}.proj.{m.group(2)}.{m.group(3)}"
        m = re.fullmatch(r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.(.+)", key)
        if m:
            r, k, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            prefix = f"fpn.layers.{r}.{_our_node(n, k)}"
            if rest == "combine.edge_weights":
                return prefix + ".fuse.weight"
            sub = re.fullmatch(r"combine\.resample\.(\d+)\.conv\.(conv|bn)\." + _PARAM, rest)
            if sub and k < 2 * n - 2:
                offsets = _node_offsets(n)[k]
                off = int(sub.group(1))
                if off in offsets:
                    pos = offsets.index(off)
                    return f"{prefix}.proj.{pos}.{sub.group(2)}.{sub.group(3)}"
            sub = re.fullmatch(r"after_combine\.conv\.(conv_dw|conv_pw|conv|bn)\." + _PARAM, rest)
            if sub:
                return f"{prefix}.conv.{_SEP_CONV[sub.group(1)]}.{sub.group(2)}"
    elif key.startswith(("class_net.", "box_net.")):
        head, rest = key.split(".", 1)
        m = re.fullmatch(r"conv_rep\.(\d+)\.(conv_dw|conv_pw|conv)\." + _PARAM, rest)
        if m:
            return f"{head}.convs.{m.group(1)}.{_SEP_CONV[m.group(2)]}.{m.group(3)}"
        m = re.fullmatch(r"bn_rep\.(\d+)\.(\d+)\.bn\." + _PARAM, rest)
        if m:
            return f"{head}.norms.{m.group(1)}.{m.group(2)}.{m.group(3)}"
        m = re.fullmatch(r"predict\.(conv_dw|conv_pw|conv)\." + _PARAM, rest)
        if m:
            return f"{head}.predict.{_SEP_CONV[m.group(1)]}.{m.group(2)}"
    raise KeyMismatchError(f"unexpected effdet key {key!r} for variant {cfg.name!r}")


def our_key_to_effdet(
    key: str, cfg: EfficientDetVariant, ir_blocks: set[str], separable: bool = True
) -> str:
    """Map one of our keys to effdet's (inverse of :func:`effdet_key_to_ours`).

    Raises:
        KeyMismatchError: the key is not part of our EfficientDet layout.
    """
    n = cfg.num_levels
    sep = {"dw": "conv_dw", "pw": "conv_pw" if separable else "conv", "bn": "bn"}
    if key.startswith("backbone."):
        rest = key[len("backbone.") :]
        if rest.startswith("stem_conv."):
            return "backbone.conv_stem." + rest[len("stem_conv.") :]
        if rest.startswith("stem_bn."):
            return "backbone.bn1." + rest[len("stem_bn.") :]
        m = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(.+)", rest)
        if m:
            block = f"{m.group(1)}.{m.group(2)}"
            table = _IR_BLOCK if block in ir_blocks else _DS_BLOCK
            renamed = _rename_block(m.group(3), {v: k for k, v in table.items()})
            if renamed is not None:
                return f"backbone.blocks.{block}.{renamed}"
    elif key.startswith("fpn."):
        m = re.fullmatch(r"fpn\.extra\.(\d+)\.proj\.(conv|bn)\." + _PARAM, key)
        if m:
            level = int(m.group(1)) + _backbone_levels(cfg)
            return f"fpn.resample.{level}.conv.{m.group(2)}.{m.group(3)}"
        m = re.fullmatch(r"fpn\.layers\.(\d+)\.(top_down|bottom_up)\.(\d+)\.(.+)", key)
        if m:
            r, k = int(m.group(1)), _their_node(n, m.group(2), int(m.group(3)))
            rest = m.group(4)
            prefix = f"fpn.cell.{r}.fnode.{k}"
            if rest == "fuse.weight":
                return prefix + ".combine.edge_weights"
            sub = re.fullmatch(r"proj\.(\d+)\.(conv|bn)\." + _PARAM, rest)
            if sub and k < 2 * n - 2:
                offsets = _node_offsets(n)[k]
                pos = int(sub.group(1))
                if pos < len(offsets):
                    off = offsets[pos]
                    return f"{prefix}.combine.resample.{off}.conv.{sub.group(2)}.{sub.group(3)}"
            sub = re.fullmatch(r"conv\.(dw|pw|bn)\." + _PARAM, rest)
            if sub:
                return f"{prefix}.after_combine.conv.{sep[sub.group(1)]}.{sub.group(2)}"
    elif key.startswith(("class_net.", "box_net.")):
        head, rest = key.split(".", 1)
        m = re.fullmatch(r"convs\.(\d+)\.(dw|pw)\." + _PARAM, rest)
        if m:
            return f"{head}.conv_rep.{m.group(1)}.{sep[m.group(2)]}.{m.group(3)}"
        m = re.fullmatch(r"norms\.(\d+)\.(\d+)\." + _PARAM, rest)
        if m:
            return f"{head}.bn_rep.{m.group(1)}.{m.group(2)}.bn.{m.group(3)}"
        m = re.fullmatch(r"predict\.(dw|pw)\." + _PARAM, rest)
        if m:
            return f"{head}.predict.{sep[m.group(1)]}.{m.group(2)}"
    raise KeyMismatchError(f"unexpected key {key!r} for variant {cfg.name!r}")


def _strip_prefix(state_dict: Mapping[str, object]) -> dict[str, object]:
    """Drop wrappers' prefixes (``model.`` of effdet's benches, ``module.`` of DDP)."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if k.startswith("anchors."):  # DetBench buffers, not part of the network
            continue
        out[k] = v
    return out


def convert_effdet_state_dict(
    effdet_state_dict: Mapping[str, object], variant: str | EfficientDetVariant
) -> dict[str, object]:
    """Rename an effdet ``EfficientDet`` state dict to :class:`~plugins.core.efficientdet.EfficientDet`.

    Tensors are passed through (not copied). ``model.`` / ``module.`` prefixes of effdet's
    ``DetBench*`` wrappers or DDP are stripped and the benches' ``anchors.*`` buffers dropped.

    Args:
        effdet_state_dict: ``{effdet key: tensor}`` (e.g. from ``tf_efficientdet_d0``).
        variant: our variant name (``"efficientdet_d0"`` ...) or an :class:`EfficientDetVariant`.

    Returns:
        ``{our key: tensor}``, loadable with ``strict=True`` into ``EfficientDet(variant)``.

    Raises:
        KeyMismatchError: a key of a layout other than effdet's EfficientDet (the message names it).
        ValueError: unknown variant.
    """
    cfg = get_variant(variant)
    sd = _strip_prefix(effdet_state_dict)
    ir_blocks = set()
    for k in sd:
        m = re.match(r"backbone\.blocks\.(\d+)\.(\d+)\.conv_pwl\.", k)
        if m:
            ir_blocks.add(f"{m.group(1)}.{m.group(2)}")
    return {effdet_key_to_ours(k, cfg, ir_blocks): v for k, v in sd.items()}


def convert_to_effdet_state_dict(
    state_dict: Mapping[str, object], variant: str | EfficientDetVariant
) -> dict[str, object]:
    """Inverse of :func:`convert_effdet_state_dict`: our keys -> effdet's ``EfficientDet`` keys.

    Args:
        state_dict: ``{our key: tensor}`` of :class:`~plugins.core.efficientdet.EfficientDet`.
        variant: our variant name or an :class:`EfficientDetVariant`.

    Returns:
        ``{effdet key: tensor}``.

    Raises:
        KeyMismatchError: a key that is not part of our layout.
    """
    cfg = get_variant(variant)
    ir_blocks = set()
    for k in state_dict:
        m = re.match(r"backbone\.stages\.(\d+)\.(\d+)\.expand_conv\.", k)
        if m:
            ir_blocks.add(f"{m.group(1)}.{m.group(2)}")
    return {our_key_to_effdet(k, cfg, ir_blocks, cfg.separable): v for k, v in state_dict.items()}


__all__ = [
    "KeyMismatchError",
    "convert_effdet_state_dict",
    "convert_to_effdet_state_dict",
    "effdet_key_to_ours",
    "our_key_to_effdet",
]
