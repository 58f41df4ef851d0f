"""Stacked hourglass backbone used by CornerNet.

Papers: Stacked Hourglass Networks for Human Pose Estimation, Newell et al. 2016,
https://arxiv.org/abs/1603.06937; CornerNet: Detecting Objects as Paired Keypoints, Law & Deng
2018, https://arxiv.org/abs/1808.01244 (section 4.1, Hourglass-104).

The arguments mirror mmdet's ``HourglassNet`` and its parameters map 1:1 onto it (see
``plugins.convert.mmdet_cornernet``). The defaults build Hourglass-104 (two stacks, five
downsamplings, 256-256-384-384-384-512 channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugins.core._validate import check_positive, check_tensor
from plugins.core.corner_pool import ConvNormAct

HOURGLASS_104 = dict(
    downsample_times=5,
    num_stacks=2,
    stage_channels=(256, 256, 384, 384, 384, 512),
    stage_blocks=(2, 2, 2, 2, 2, 4),
    feat_channel=256,
)
"""Keyword arguments of Hourglass-104 (CornerNet's backbone, the defaults)."""

HOURGLASS_TINY = dict(
    downsample_times=2,
    num_stacks=2,
    stage_channels=(8, 8, 16),
    stage_blocks=(1, 1, 1),
    feat_channel=8,
)
"""Keyword arguments of a tiny two-stack hourglass for tests."""


class ResidualBlock(nn.Module):
    """Basic residual block: two 3x3 conv-BN with ReLU and a 1x1 conv-BN projection shortcut.

    Paper: https://arxiv.org/abs/1512.03385 (ResNet basic block).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (and of the shortcut). Default 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(out_channels)
        self.conv_b = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module | None = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = None

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, H, W)`` -> ``(B, out, H / stride, W / stride)``."""
        y = self.act(self.norm_a(self.conv_a(x)))
        y = self.norm_b(self.conv_b(y))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.act(y + identity)


def residual_stack(
    in_channels: int,
    out_channels: int,
    num_blocks: int,
    stride: int = 1,
    change_first: bool = True,
) -> nn.Sequential:
    """A chain of :class:`ResidualBlock`.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        num_blocks: number of blocks; at least one block is always built.
        stride: stride of the block that changes the shape. Default 1.
        change_first: the first block changes channels/stride (``True``, ResNet style) or the
            last one does (``False``, used on the way up an hourglass). Default ``True``.

    Returns:
        nn.Sequential of ``max(1, num_blocks)`` blocks.
    """
    n = max(1, int(num_blocks))
    if change_first:
        blocks = [ResidualBlock(in_channels, out_channels, stride)]
        blocks += [ResidualBlock(out_channels, out_channels) for _ in range(n - 1)]
    else:
        blocks = [ResidualBlock(in_channels, in_channels) for _ in range(n - 1)]
        blocks.append(ResidualBlock(in_channels, out_channels, stride))
    return nn.Sequential(*blocks)


class HourglassStage(nn.Module):
    """One recursive hourglass level.

    ``out = skip(x) + upsample(up(inner(down(x))))``, where ``down`` halves the resolution,
    ``inner`` is the next (deeper) level or, at the bottom, a plain residual stack, and the
    upsampling is nearest-neighbour to the size of ``skip(x)``.

    Args:
        depth: number of downsamplings below this level (>= 1).
        channels: channels of this level and the deeper ones, ``len >= depth + 1``.
        blocks: residual blocks per level, ``len >= depth + 1``.
    """

    def __init__(self, depth: int, channels: Sequence[int], blocks: Sequence[int]) -> None:
        super().__init__()
        c_here, c_next = channels[0], channels[1]
        n_here, n_next = blocks[0], blocks[1]
        self.skip = residual_stack(c_here, c_here, n_here)
        self.down = residual_stack(c_here, c_next, n_here, stride=2)
        if depth > 1:
            self.inner: nn.Module = HourglassStage(depth - 1, channels[1:], blocks[1:])
        else:
            self.inner = residual_stack(c_next, c_next, n_next)
        self.up = residual_stack(c_next, c_here, n_here, change_first=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, channels[0], H, W)`` -> same shape."""
        skip = self.skip(x)
        low = self.up(self.inner(self.down(x)))
        return skip + F.interpolate(low, size=skip.shape[-2:], mode="nearest")


class HourglassNet(nn.Module):
    """Stacked hourglass network (CornerNet's Hourglass-104 by default).

    Papers: https://arxiv.org/abs/1603.06937 (stacked hourglass),
    https://arxiv.org/abs/1808.01244 (CornerNet's variant).

    A stride-4 stem (7x7 conv-BN-ReLU stride 2, residual block stride 2) feeds ``num_stacks``
    hourglasses. After each hourglass a 3x3 conv-BN-ReLU gives that stack's output feature;
    between stacks the input of the previous stack and its output are merged with 1x1
    conv-BN layers, a ReLU and a residual block (intermediate supervision).

    Args:
        downsample_times: downsamplings inside each hourglass. Default 5.
        num_stacks: number of stacked hourglasses (1 for Hourglass-52, 2 for -104). Default 2.
        stage_channels: channels of the hourglass levels, ``len > downsample_times``.
            Default ``(256, 256, 384, 384, 384, 512)``.
        stage_blocks: residual blocks per level, same length. Default ``(2, 2, 2, 2, 2, 4)``.
        feat_channel: channels of the output features. Default 256.
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) while training.
            Default ``False``.
        channels_last: keep the weights and activations in ``torch.channels_last`` memory
            format inside the network. For inference: Hourglass-104 forward at 511 px on CPU
            is ~10 % faster (see BENCHMARKS.md). Not for CPU training with torch 2.13: the
            backward of a channels-last 1x1 stride-2 convolution with 8 input channels at
            64x64 (this network's stem block when ``stage_channels[0]`` is 16) crashes the
            process (segfault / heap corruption, reproduced outside this package). Values
            agree with NCHW to float rounding; the returned features are contiguous NCHW
            either way. Default ``False``.

    Shapes:
        ``forward((B, 3, H, W)) -> list of num_stacks tensors (B, feat_channel, H / 4, W / 4)``
        (sizes rounded like the strided convolutions: ``ceil`` of each halving).
    """

    def __init__(
        self,
        downsample_times: int = 5,
        num_stacks: int = 2,
        stage_channels: Sequence[int] = (256, 256, 384, 384, 384, 512),
        stage_blocks: Sequence[int] = (2, 2, 2, 2, 2, 4),
        feat_channel: int = 256,
        norm_eval: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        check_positive("downsample_times", downsample_times)
        check_positive("num_stacks", num_stacks)
        check_positive("feat_channel", feat_channel)
        if len(stage_channels) != len(stage_blocks):
            raise ValueError(
                f"stage_blocks: expected {len(stage_channels)} entries (one per stage_channels), "
                f"got {len(stage_blocks)}"
            )
        if len(stage_channels) <= downsample_times:
            raise ValueError(
                f"stage_channels: expected more than downsample_times={downsample_times} "
                f"entries, got {len(stage_channels)}"
            )
        self.downsample_times = int(downsample_times)
        self.num_stacks = int(num_stacks)
        self.stage_channels = tuple(int(c) for c in stage_channels)
        self.stage_blocks = tuple(int(b) for b in stage_blocks)
        self.feat_channel = int(feat_channel)
        self.norm_eval = bool(norm_eval)

        width = self.stage_channels[0]
        self.stem = nn.Sequential(
            ConvNormAct(3, width // 2, 7, stride=2),
            ResidualBlock(width // 2, width, stride=2),
        )
        self.hourglasses = nn.ModuleList(
            HourglassStage(self.downsample_times, self.stage_channels, self.stage_blocks)
            for _ in range(self.num_stacks)
        )
        self.out_convs = nn.ModuleList(
            ConvNormAct(width, self.feat_channel, 3) for _ in range(self.num_stacks)
        )
        self.merge_in = nn.ModuleList(
            ConvNormAct(width, width, 1, relu=False) for _ in range(self.num_stacks - 1)
        )
        self.merge_out = nn.ModuleList(
            ConvNormAct(self.feat_channel, width, 1, relu=False) for _ in range(self.num_stacks - 1)
        )
        self.inter_blocks = nn.ModuleList(
            ResidualBlock(width, width) for _ in range(self.num_stacks - 1)
        )
        self.act = nn.ReLU(inplace=True)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Run the stem and every stack.

        Args:
            images: ``(B, 3, H, W)`` float.

        Returns:
            list[Tensor]: ``num_stacks`` features ``(B, feat_channel, H', W')`` with
            ``H' = ceil(ceil(H / 2) / 2)``; the last one is the final feature.
        """
        check_tensor("images", images, (None, 3, None, None), floating=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.stem(images)
        outs: list[Tensor] = []
        for i in range(self.num_stacks):
            feat = self.out_convs[i](self.hourglasses[i](x))
            outs.append(feat.contiguous())
            if i + 1 < self.num_stacks:
                x = self.merge_in[i](x) + self.merge_out[i](feat)
                x = self.inter_blocks[i](self.act(x))
        return outs

    def train(self, mode: bool = True) -> HourglassNet:
        """Switch train/eval mode; with ``norm_eval`` BatchNorm layers stay in eval mode."""
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


__all__ = [
    "HOURGLASS_104",
    "HOURGLASS_TINY",
    "HourglassNet",
    "HourglassStage",
    "ResidualBlock",
    "residual_stack",
]
