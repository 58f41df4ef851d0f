"""EfficientNet B0-B7 as a multi-level feature extractor, plus the TF-"same" conv helpers.

Paper: EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks, Tan & Le 2019,
https://arxiv.org/abs/1905.11946.

The network is built from MBConv blocks (inverted residual with expansion, depthwise conv,
squeeze-and-excitation, SiLU, linear projection, stochastic depth) scaled by the compound
width/depth coefficients. ``tf_same=True`` reproduces TensorFlow's asymmetric "SAME" padding,
which the TensorFlow-trained EfficientDet weights rely on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugins.core._validate import check_choice, check_positive, check_tensor

# name -> (width multiplier, depth multiplier, train resolution, classifier dropout)
EFFICIENTNET_COEFFICIENTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5),
}


@dataclass(frozen=True)
class StageSpec:
    """One stage of the B0 baseline (Table 1 of the EfficientNet paper).

    Attributes:
        repeats: number of blocks before depth scaling.
        kernel: depthwise kernel size.
        stride: stride of the first block.
        expand: expansion ratio of the inverted bottleneck (1 = no expansion conv).
        channels: output channels before width scaling.
        se_ratio: squeeze-excitation ratio relative to the block's input channels.
    """

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int
    se_ratio: float = 0.25


B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)
B0_STEM_CHANNELS = 32


def round_filters(channels: float, width_mult: float = 1.0, divisor: int = 8) -> int:
    """Scale a channel count by ``width_mult`` and round to a multiple of ``divisor``.

    Rounds to the nearest multiple (at least ``divisor``) and bumps up one step when rounding
    would lose more than 10 % of the channels, as the reference EfficientNet does.

    Args:
        channels: base channel count.
        width_mult: width multiplier. Default 1.0.
        divisor: channel granularity. Default 8.

    Returns:
        The rounded channel count.
    """
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


def round_repeats(repeats: int, depth_mult: float = 1.0) -> int:
    """Scale a stage's block count by ``depth_mult``, rounding up (``ceil``)."""
    return int(math.ceil(repeats * depth_mult))


def _same_pad_amount(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Total TF-"SAME" padding along one axis for an input of ``size`` pixels.

    ``size`` may be a symbolic size (``torch.SymInt``, dynamic-shape export): no branch on it.
    """
    out = -(-size // stride)
    return torch.sym_max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def _symbolic(*sizes: object) -> bool:
    """Whether any size is symbolic (``torch.SymInt`` while exporting with dynamic shapes)."""
    return not all(isinstance(s, int) for s in sizes)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding that depends on the input size.

    The padding (possibly one pixel more at the bottom/right) is computed once per input size
    and cached; symmetric cases are handed to the convolution itself so that no padded copy of
    the input is made. At a fixed size (``torch.export``, ONNX) the padding is a constant;
    with symbolic sizes (dynamic shapes) it is an explicit ``F.pad`` of the symbolic amounts,
    not cached: the same values either way.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)
        self._pad_cache: dict[
            tuple[int, int], tuple[tuple[int, int, int, int], tuple[int, int]]
        ] = {}

    def _amounts(self, h: int, w: int) -> tuple[int, int]:
        ph = _same_pad_amount(h, self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = _same_pad_amount(w, self.kernel_size[1], self.stride[1], self.dilation[1])
        return ph, pw

    def _plan(self, h: int, w: int) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
        if _symbolic(h, w):
            ph, pw = self._amounts(h, w)
            return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), (0, 0)
        key = (h, w)
        plan = self._pad_cache.get(key)
        if plan is None:
            ph, pw = self._amounts(h, w)
            if ph % 2 == 0 and pw % 2 == 0:
                plan = ((0, 0, 0, 0), (ph // 2, pw // 2))
            else:
                plan = ((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), (0, 0))
            self._pad_cache[key] = plan
        return plan

    def forward(self, x: Tensor) -> Tensor:
        explicit, implicit = self._plan(x.shape[-2], x.shape[-1])
        if _symbolic(*explicit) or explicit != (0, 0, 0, 0):
            x = F.pad(x, explicit)
        return F.conv2d(
            x, self.weight, self.bias, self.stride, implicit, self.dilation, self.groups
        )


class PointwiseConv2d(nn.Conv2d):
    """1x1 convolution that runs as a matrix product on channels-last inputs.

    A channels-last ``(B, C, H, W)`` tensor is a contiguous ``(B, H, W, C)`` array, so the 1x1
    conv is ``linear`` over the last axis with no layout copies (the generic CPU path for 1x1
    convs copies to and from NCHW). Other inputs use ``F.conv2d``. Parameters and state-dict keys
    are those of ``nn.Conv2d(in_channels, out_channels, 1)``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            w = self.weight.reshape(self.out_channels, self.in_channels)
            y = F.linear(x.permute(0, 2, 3, 1), w, self.bias)
            return y.permute(0, 3, 1, 2)
        return F.conv2d(x, self.weight, self.bias)


class MaxPool2dSame(nn.Module):
    """Max-pooling with TensorFlow "SAME" padding (padded cells never win the max).

    Args:
        kernel_size: pooling window. Default 3.
        stride: pooling stride. Default 2.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self._plan_cache: dict[tuple[int, int], tuple] = {}

    def _plan(self, h: int, w: int) -> tuple:
        if _symbolic(h, w):  # dynamic shapes: explicit -inf padding of symbolic amounts
            ph = _same_pad_amount(h, self.kernel_size, self.stride)
            pw = _same_pad_amount(w, self.kernel_size, self.stride)
            return ("explicit", (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), False)
        key = (h, w)
        plan = self._plan_cache.get(key)
        if plan is None:
            k, s = self.kernel_size, self.stride
            ph, pw = _same_pad_amount(h, k, s), _same_pad_amount(w, k, s)
            if ph % 2 == 0 and pw % 2 == 0:
                plan = ("implicit", (ph // 2, pw // 2), False)
            else:
                # One extra cell at the end: pooling with ceil_mode lets the last window hang
                # over the edge, which equals -inf padding when the output sizes agree.
                pad = (ph // 2, pw // 2)
                out_h = math.ceil((h + 2 * pad[0] - k) / s) + 1
                out_w = math.ceil((w + 2 * pad[1] - k) / s) + 1
                fits = all(2 * p <= k for p in pad)
                if fits and out_h == -(-h // s) and out_w == -(-w // s):
                    plan = ("implicit", pad, True)
                else:
                    plan = ("explicit", (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), False)
            self._plan_cache[key] = plan
        return plan

    def forward(self, x: Tensor) -> Tensor:
        kind, pad, ceil_mode = self._plan(x.shape[-2], x.shape[-1])
        if kind == "explicit":
            x = F.pad(x, pad, value=float("-inf"))
            pad = (0, 0)
        return F.max_pool2d(x, self.kernel_size, self.stride, pad, ceil_mode=ceil_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    tf_same: bool = False,
) -> nn.Conv2d:
    """Build a convolution with "same"-style padding.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size (odd).
        stride: stride. Default 1.
        groups: groups (``in_channels`` for depthwise). Default 1.
        bias: add a bias. Default ``False``.
        tf_same: TensorFlow "SAME" padding (asymmetric for strided convs); otherwise symmetric
            ``(kernel_size - 1) // 2`` padding. Default ``False``.

    Returns:
        A :class:`PointwiseConv2d` for 1x1 convs, a plain ``nn.Conv2d`` whenever the padding is
        static, else a :class:`Conv2dSame`.
    """
    static = stride == 1 and (kernel_size - 1) % 2 == 0
    if kernel_size == 1 and stride == 1 and groups == 1:
        return PointwiseConv2d(in_channels, out_channels, bias=bias)
    if tf_same and not static:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
    padding = ((stride - 1) + (kernel_size - 1)) // 2 if not tf_same else (kernel_size - 1) // 2
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias
    )


def max_pool_same(kernel_size: int = 3, stride: int = 2, tf_same: bool = False) -> nn.Module:
    """Max-pooling that halves the resolution (rounding up) with TF or symmetric padding."""
    if tf_same:
        return MaxPool2dSame(kernel_size, stride)
    return nn.MaxPool2d(kernel_size, stride, padding=((stride - 1) + (kernel_size - 1)) // 2)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``.

    Survivors are scaled by ``1 / (1 - rate)``. Identity when not training or ``rate == 0``.

    Args:
        x: ``(B, ...)`` residual branch output.
        rate: drop probability in ``[0, 1)``.
        training: apply only when ``True``.
    """
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> 1x1 reduce -> SiLU -> 1x1 expand -> sigmoid gate.

    Paper: Squeeze-and-Excitation Networks, https://arxiv.org/abs/1709.01507.

    Args:
        channels: channels of the gated tensor.
        reduced: channels of the bottleneck.
    """

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(F.silu(self.reduce(s)))
        return x * s.sigmoid()


class MBConv(nn.Module):
    """Mobile inverted bottleneck block with squeeze-excitation (EfficientNet's MBConv).

    Paper: https://arxiv.org/abs/1905.11946 (also MobileNetV2, https://arxiv.org/abs/1801.04381).

    ``expand (1x1) -> BN -> SiLU -> depthwise kxk -> BN -> SiLU -> SE -> project (1x1) -> BN``,
    plus an identity shortcut with stochastic depth when shape is preserved. With
    ``expand_ratio == 1`` the expansion conv is omitted.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size.
        stride: depthwise stride.
        expand_ratio: expansion ratio.
        se_ratio: squeeze-excitation ratio relative to ``in_channels`` (0 disables).
        drop_path_rate: stochastic-depth rate of the residual branch. Default 0.
        tf_same: TensorFlow "SAME" padding. Default ``False``.
        bn_eps: BatchNorm eps. Default 1e-3.
        bn_momentum: BatchNorm momentum (PyTorch convention). Default 0.1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: float,
        se_ratio: float = 0.25,
        drop_path_rate: float = 0.0,
        tf_same: bool = False,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        mid = round_filters(in_channels * expand_ratio, 1.0) if expand_ratio != 1 else in_channels
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self.expand_conv = PointwiseConv2d(in_channels, mid)
            self.expand_bn = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self.dw_conv = conv2d(mid, mid, kernel_size, stride, groups=mid, tf_same=tf_same)
        self.dw_bn = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        if se_ratio > 0:
            self.se = SqueezeExcite(mid, round(mid * (se_ratio / expand_ratio)))
        else:
            self.se = None
        self.project_conv = PointwiseConv2d(mid, out_channels)
        self.project_bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_path_rate = float(drop_path_rate)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride)``."""
        y = x
        if self.has_expansion:
            y = F.silu(self.expand_bn(self.expand_conv(y)), inplace=True)
        y = F.silu(self.dw_bn(self.dw_conv(y)), inplace=True)
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project_conv(y))
        if self.residual:
            y = drop_path(y, self.drop_path_rate, self.training) + x
        return y


class EfficientNet(nn.Module):
    """EfficientNet feature extractor (no classifier head).

    Paper: https://arxiv.org/abs/1905.11946.

    Args:
        width_mult: compound width coefficient (B0 = 1.0). Default 1.0.
        depth_mult: compound depth coefficient (B0 = 1.0). Default 1.0.
        out_strides: strides of the returned feature maps, among the stage-end strides
            (2, 4, 8, 16, 32). Default ``(8, 16, 32)`` (EfficientDet's P3-P5).
        drop_path_rate: maximum stochastic-depth rate, linearly increased over the blocks
            (block ``i`` of ``n`` uses ``rate * i / n``). Default 0.2.
        tf_same: TensorFlow "SAME" padding (needed for TF-trained weights). Default ``True``.
        bn_eps: BatchNorm eps. Default 1e-3.
        bn_momentum: BatchNorm momentum (PyTorch convention). Default 0.1.
        in_channels: image channels. Default 3.

    Attributes:
        out_channels: channels of each returned feature map.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        out_strides: Sequence[int] = (8, 16, 32),
        drop_path_rate: float = 0.2,
        tf_same: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_positive("width_mult", width_mult)
        check_positive("depth_mult", depth_mult)
        check_positive("in_channels", in_channels)
        self.in_channels = int(in_channels)
        stem = round_filters(B0_STEM_CHANNELS, width_mult)
        self.stem_conv = conv2d(in_channels, stem, 3, stride=2, tf_same=tf_same)
        self.stem_bn = nn.BatchNorm2d(stem, eps=bn_eps, momentum=bn_momentum)

        repeats = [round_repeats(s.repeats, depth_mult) for s in B0_STAGES]
        total = sum(repeats)
        index = 0
        channels = stem
        stride = 2
        stage_strides = []
        stage_channels = []
        self.stages = nn.ModuleList()
        for spec, n in zip(B0_STAGES, repeats):
            out = round_filters(spec.channels, width_mult)
            blocks = []
            for j in range(n):
                blocks.append(
                    MBConv(
                        channels,
                        out,
                        spec.kernel,
                        spec.stride if j == 0 else 1,
                        spec.expand,
                        spec.se_ratio,
                        drop_path_rate * index / total,
                        tf_same,
                        bn_eps,
                        bn_momentum,
                    )
                )
                channels = out
                index += 1
            stride *= spec.stride
            stage_strides.append(stride)
            stage_channels.append(out)
            self.stages.append(nn.Sequential(*blocks))

        # a stage is tapped when it is the last one at its stride
        taps = {}
        for i, s in enumerate(stage_strides):
            taps[s] = i
        for s in out_strides:
            check_choice("out_strides", s, sorted(taps))
        self._tap_stages = [taps[s] for s in out_strides]
        self.out_strides = tuple(int(s) for s in out_strides)
        self.out_channels = tuple(stage_channels[i] for i in self._tap_stages)
        self._last_stage = max(self._tap_stages)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TF-style init: conv ~ N(0, sqrt(2 / fan_out)), BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Extract features.

        Args:
            images: ``(B, in_channels, H, W)`` float images.

        Returns:
            One tensor per ``out_strides`` entry, ``(B, out_channels[i], ceil(H / s), ceil(W / s))``.

        Raises:
            ValueError: ``images`` is not a 4-D float tensor with ``in_channels`` channels.
        """
        check_tensor("images", images, (None, self.in_channels, None, None), floating=True)
        x = F.silu(self.stem_bn(self.stem_conv(images)), inplace=True)
        tapped: dict[int, Tensor] = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            tapped[i] = x
            if i == self._last_stage:
                break
        return [tapped[i] for i in self._tap_stages]


def efficientnet(name: str, **kwargs) -> EfficientNet:
    """Build a named EfficientNet (``"efficientnet_b0"`` ... ``"efficientnet_b7"``).

    Args:
        name: key of :data:`EFFICIENTNET_COEFFICIENTS`.
        **kwargs: forwarded to :class:`EfficientNet` (``out_strides``, ``tf_same``, ...).
    """
    check_choice("name", name, list(EFFICIENTNET_COEFFICIENTS))
    width, depth, _, _ = EFFICIENTNET_COEFFICIENTS[name]
    return EfficientNet(width, depth, **kwargs)


__all__ = [
    "EFFICIENTNET_COEFFICIENTS",
    "B0_STAGES",
    "StageSpec",
    "round_filters",
    "round_repeats",
    "Conv2dSame",
    "PointwiseConv2d",
    "MaxPool2dSame",
    "conv2d",
    "max_pool_same",
    "drop_path",
    "SqueezeExcite",
    "MBConv",
    "EfficientNet",
    "efficientnet",
]
