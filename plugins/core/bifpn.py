"""Bidirectional feature pyramid network (BiFPN).

Paper: EfficientDet: Scalable and Efficient Object Detection, Tan et al. 2020,
https://arxiv.org/abs/1911.09070 (section 3, figure 2d).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from plugins.core._validate import check_choice, check_positive, check_tensor
from plugins.core.efficientnet import conv2d, max_pool_same
from plugins.core.fusion import FUSION_METHODS, WeightedFusion


def glorot_uniform_(weight: Tensor, groups: int = 1) -> Tensor:
    """In-place Glorot (Xavier) uniform init of a conv weight, TF style (fan_out / groups).

    Args:
        weight: ``(C_out, C_in / groups, kh, kw)`` conv weight.
        groups: conv groups; depthwise convs divide the fan-out by it. Default 1.
    """
    receptive = weight[0][0].numel()
    fan_in = weight.shape[1] * receptive
    fan_out = weight.shape[0] * receptive // groups
    limit = math.sqrt(3.0 / max(1.0, (fan_in + fan_out) / 2.0))
    return nn.init.uniform_(weight, -limit, limit)


class ConvBN(nn.Module):
    """``conv (k x k) -> BatchNorm``, no activation; used for 1x1 channel projections.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel size. Default 1.
        bias: conv bias. Default ``True`` (the TF EfficientDet checkpoints keep it).
        bn_eps: BatchNorm eps. Default 1e-3.
        bn_momentum: BatchNorm momentum (PyTorch convention). Default 0.01.
        tf_same: TensorFlow "SAME" padding. Default ``True``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        bias: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        tf_same: bool = True,
    ) -> None:
        super().__init__()
        self.conv = conv2d(in_channels, out_channels, kernel_size, bias=bias, tf_same=tf_same)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        return self.bn(self.conv(x))


class SeparableConv(nn.Module):
    """Depthwise-separable 3x3 conv (depthwise, then pointwise) with an optional BatchNorm.

    With ``separable=False`` a single full ``kernel_size`` conv (``.pw``) is used instead.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size. Default 3.
        bias: bias of the pointwise conv. Default ``True``.
        norm: append a BatchNorm (``.bn``). Default ``True``.
        separable: depthwise-separable (``True``) or a plain conv. Default ``True``.
        bn_eps: BatchNorm eps. Default 1e-3.
        bn_momentum: BatchNorm momentum (PyTorch convention). Default 0.01.
        tf_same: TensorFlow "SAME" padding. Default ``True``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        norm: bool = True,
        separable: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        tf_same: bool = True,
    ) -> None:
        super().__init__()
        if separable:
            self.dw = conv2d(
                in_channels, in_channels, kernel_size, groups=in_channels, tf_same=tf_same
            )
            self.pw = conv2d(in_channels, out_channels, 1, bias=bias, tf_same=tf_same)
        else:
            self.dw = None
            self.pw = conv2d(in_channels, out_channels, kernel_size, bias=bias, tf_same=tf_same)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        if self.dw is not None:
            x = self.dw(x)
        x = self.pw(x)
        if self.bn is not None:
            x = self.bn(x)
        return x


class ExtraLevel(nn.Module):
    """Make the next coarser pyramid level: optional 1x1 conv + BN to ``out_channels``, then a
    stride-2 3x3 max-pool (TF "same" padding when ``tf_same``).

    Args:
        in_channels: channels of the finer level.
        out_channels: BiFPN width.
        conv_bias: bias of the projection conv. Default ``True``.
        bn_eps: BatchNorm eps. Default 1e-3.
        bn_momentum: BatchNorm momentum. Default 0.01.
        tf_same: TensorFlow "SAME" padding. Default ``True``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        conv_bias: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        tf_same: bool = True,
    ) -> None:
        super().__init__()
        if in_channels != out_channels:
            self.proj = ConvBN(
                in_channels, out_channels, 1, conv_bias, bn_eps, bn_momentum, tf_same
            )
        else:
            self.proj = None
        self.pool = max_pool_same(3, 2, tf_same)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, out_channels, ceil(H / 2), ceil(W / 2))``."""
        if self.proj is not None:
            x = self.proj(x)
        return self.pool(x)


class FusionNode(nn.Module):
    """One BiFPN node: bring inputs to the node's level and width, fuse, SiLU, conv, BN.

    Inputs are given relative to the node's level: ``shifts[i]`` is ``0`` for the same level,
    ``+1`` for the next coarser level (nearest upsampling) and ``-1`` for the next finer level
    (stride-2 max-pooling). ``inputs[0]`` must be at the node's own level; it sets the output
    size. Inputs whose channels differ from ``width`` get their own 1x1 conv + BN
    (``proj[str(i)]``).

    Args:
        in_channels: channels of each input.
        shifts: level offset of each input (``-1``, ``0``, ``+1``).
        width: output channels.
        fusion: fusion method, see :class:`~plugins.core.fusion.WeightedFusion`. Default ``"fast"``.
        separable: depthwise-separable output conv. Default ``True``.
        conv_bias: biases of convs followed by BN. Default ``True``.
        bn_eps: BatchNorm eps. Default 1e-3.
        bn_momentum: BatchNorm momentum. Default 0.01.
        tf_same: TensorFlow "SAME" padding. Default ``True``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        shifts: Sequence[int],
        width: int,
        fusion: str = "fast",
        separable: bool = True,
        conv_bias: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        tf_same: bool = True,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(shifts) or not shifts or shifts[0] != 0:
            raise ValueError(f"shifts: expected the first input at shift 0, got {list(shifts)}")
        self.shifts = tuple(int(s) for s in shifts)
        self.proj = nn.ModuleDict(
            {
                str(i): ConvBN(c, width, 1, conv_bias, bn_eps, bn_momentum, tf_same)
                for i, c in enumerate(in_channels)
                if c != width
            }
        )
        self.pool = max_pool_same(3, 2, tf_same) if -1 in self.shifts else None
        self.fuse = WeightedFusion(len(in_channels), fusion)
        self.conv = SeparableConv(
            width, width, 3, conv_bias, True, separable, bn_eps, bn_momentum, tf_same
        )

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Fuse ``inputs`` (list of ``(B, C_i, H_i, W_i)``) into ``(B, width, H_0, W_0)``."""
        size = inputs[0].shape[-2:]
        ready = []
        for i, (x, shift) in enumerate(zip(inputs, self.shifts)):
            key = str(i)
            if key in self.proj:
                x = self.proj[key](x)
            if shift > 0:
                x = F.interpolate(x, size=size, mode="nearest")
            elif shift < 0:
                x = self.pool(x)
            ready.append(x)
        return self.conv(F.silu(self.fuse(ready), inplace=True))


class BiFPNLayer(nn.Module):
    """One top-down + bottom-up BiFPN pass over ``num_levels`` levels.

    ``top_down[k]`` builds the intermediate node of level ``num_levels - 2 - k`` from the same
    level's input and the next coarser intermediate (the coarsest input for ``k = 0``).
    ``bottom_up[k]`` builds the output of level ``k + 1`` from the level's input, its
    intermediate node (absent on the coarsest level) and the finer output. The finest output is
    the finest intermediate node.

    Args:
        in_channels: channels of each input level (finest first).
        width: node channels.
        **node_kwargs: forwarded to :class:`FusionNode`.
    """

    def __init__(self, in_channels: Sequence[int], width: int, **node_kwargs) -> None:
        super().__init__()
        n = len(in_channels)
        self.num_levels = n
        self.top_down = nn.ModuleList(
            FusionNode([in_channels[i], width], [0, 1], width, **node_kwargs)
            for i in range(n - 2, -1, -1)
        )
        self.bottom_up = nn.ModuleList()
        for i in range(1, n):
            if i < n - 1:
                chans, shifts = [in_channels[i], width, width], [0, 0, -1]
            else:
                chans, shifts = [in_channels[i], width], [0, -1]
            self.bottom_up.append(FusionNode(chans, shifts, width, **node_kwargs))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """``num_levels`` maps (finest first) -> ``num_levels`` maps of ``width`` channels."""
        n = self.num_levels
        inter: list[Tensor] = list(feats)
        for k, node in enumerate(self.top_down):
            i = n - 2 - k
            inter[i] = node([feats[i], inter[i + 1]])
        outs = [inter[0]]
        for i, node in enumerate(self.bottom_up, start=1):
            if i < n - 1:
                outs.append(node([feats[i], inter[i], outs[-1]]))
            else:
                outs.append(node([feats[i], outs[-1]]))
        return outs


class BiFPN(nn.Module):
    """Stack of BiFPN layers over backbone features plus extra pooled levels.

    Paper: https://arxiv.org/abs/1911.09070.

    The backbone gives the finest ``len(in_channels)`` levels (e.g. P3-P5); the remaining
    ``num_levels - len(in_channels)`` levels (e.g. P6, P7) are made from the coarsest one by
    :class:`ExtraLevel` (1x1 conv + BN when the channels differ, then stride-2 max-pool).

    Args:
        in_channels: channels of the backbone levels, finest first, e.g. ``(40, 112, 320)``.
        width: BiFPN channels (``fpn_channels``). Default 64.
        num_levels: number of output levels (P3-P7 -> 5). Default 5.
        repeats: number of stacked BiFPN layers. Default 3.
        fusion: ``"fast"``, ``"softmax"`` or ``"sum"``. Default ``"fast"``.
        separable: depthwise-separable node convs. Default ``True``.
        conv_bias: keep biases on convs followed by BN (TF checkpoints have them). Default ``True``.
        bn_eps: BatchNorm eps. Default 1e-3.
        bn_momentum: BatchNorm momentum (PyTorch convention). Default 0.01.
        tf_same: TensorFlow "SAME" padding for the pooling. Default ``True``.

    Attributes:
        extra: ``ModuleList`` of :class:`ExtraLevel`.
        layers: ``ModuleList`` of :class:`BiFPNLayer`.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        width: int = 64,
        num_levels: int = 5,
        repeats: int = 3,
        fusion: str = "fast",
        separable: bool = True,
        conv_bias: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        tf_same: bool = True,
    ) -> None:
        super().__init__()
        check_positive("width", width)
        check_positive("repeats", repeats)
        check_choice("fusion", fusion, FUSION_METHODS)
        if not in_channels:
            raise ValueError("in_channels: expected at least one backbone level, got none")
        if num_levels < max(2, len(in_channels)):
            raise ValueError(
                f"num_levels: expected >= max(2, len(in_channels)) = "
                f"{max(2, len(in_channels))}, got {num_levels}"
            )
        self.in_channels = tuple(int(c) for c in in_channels)
        self.width = int(width)
        self.num_levels = int(num_levels)
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, tf_same=tf_same)
        self.extra = nn.ModuleList()
        chans = list(self.in_channels)
        for _ in range(num_levels - len(in_channels)):
            self.extra.append(ExtraLevel(chans[-1], width, conv_bias, **bn))
            chans.append(width)
        self.layers = nn.ModuleList()
        for _ in range(repeats):
            self.layers.append(
                BiFPNLayer(
                    chans, width, fusion=fusion, separable=separable, conv_bias=conv_bias, **bn
                )
            )
            chans = [width] * num_levels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TF-style init: Glorot-uniform convs with zero bias, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                glorot_uniform_(m.weight, m.groups)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Run the pyramid.

        Args:
            feats: ``len(in_channels)`` backbone maps, finest first, ``(B, in_channels[i], H_i, W_i)``
                with ``H_{i+1} = ceil(H_i / 2)``.

        Returns:
            ``num_levels`` maps ``(B, width, H_l, W_l)``, finest first.

        Raises:
            ValueError: wrong number of maps, or a map that is not 4-D with the expected channels.
        """
        if len(feats) != len(self.in_channels):
            raise ValueError(
                f"feats: expected {len(self.in_channels)} feature maps, got {len(feats)}"
            )
        sizes: dict[str, int] = {}
        for i, (x, c) in enumerate(zip(feats, self.in_channels)):
            check_tensor(f"feats[{i}]", x, ("B", c, None, None), floating=True, sizes=sizes)
        levels = list(feats)
        for make in self.extra:
            levels.append(make(levels[-1]))
        for layer in self.layers:
            levels = layer(levels)
        return levels


__all__ = [
    "glorot_uniform_",
    "ConvBN",
    "SeparableConv",
    "ExtraLevel",
    "FusionNode",
    "BiFPNLayer",
    "BiFPN",
]
