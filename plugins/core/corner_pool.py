"""Corner pooling and CornerNet's corner pooling modules.

Paper: CornerNet: Detecting Objects as Paired Keypoints, Law & Deng 2018,
https://arxiv.org/abs/1808.01244 (section 3.4, "Corner Pooling").

``corner_pool(x, "top")`` replaces every value by the maximum of itself and everything below
it in the same column (``out[..., i, j] = max_{k >= i} x[..., k, j]``); ``"bottom"`` looks up,
``"left"`` looks right and ``"right"`` looks left. A top-left corner is found by adding a
top-pooled and a left-pooled map.

The scan is a running maximum computed row by row (or column by column through a transposed
copy) on whole ``(B, C, W)`` slices, which on CPU is several times cheaper than
``torch.cummax`` (no int64 index tensor is written). The backward pass routes each output
gradient to the position that produced the running maximum; on ties it goes to the tied
position closest to the output (the most recent one in scan order), which is what
``torch.cummax`` (and hence ``mmcv.ops.CornerPool``) records.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from plugins.core._validate import check_choice, check_tensor

DIRECTIONS = ("top", "bottom", "left", "right")

# direction -> (spatial axis scanned: "h" or "w", scan runs from the high index downwards)
_SCAN = {
    "top": ("h", True),
    "bottom": ("h", False),
    "left": ("w", True),
    "right": ("w", False),
}

# Planes (B * C) are processed in chunks of about this many elements, so that a chunk and its
# scratch buffers stay in cache during the row loop and no full-size temporaries are allocated.
_CHUNK_ELEMENTS = 1 << 22


def _plane_chunks(planes: int, plane_size: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(1, plane_size))
    return [(p, min(planes, p + step)) for p in range(0, planes, step)]


def _scan_max(src: Tensor, dst: Tensor, reverse: bool) -> None:
    """Running maximum along dim 1 of contiguous ``(P, L, M)`` ``src`` into ``dst``.

    NaN propagates forward like ``torch.cummax`` does.
    """
    n = src.shape[1]
    order = range(n - 1, -1, -1) if reverse else range(n)
    previous = -1
    for i in order:
        if previous < 0:
            dst[:, i].copy_(src[:, i])
        else:
            torch.maximum(dst[:, previous], src[:, i], out=dst[:, i])
        previous = i


def _scan_grad(grad: Tensor, keep: Tensor, dst: Tensor, reverse: bool, finite: bool) -> None:
    """Backward of :func:`_scan_max` on ``(P, L, M)`` chunks.

    ``keep`` (float 0/1) is 1 where the input did *not* set the running maximum. Walking against
    the scan direction, ``acc_i = g_i + acc_prev * keep_prev``: every output gradient flows back
    to the nearest position at or before it (in scan order) that set the maximum, which is the
    position ``torch.cummax`` records (the latest one on ties). ``dst`` receives ``acc``; the
    caller zeroes the positions where ``keep`` is 1.
    """
    n = grad.shape[1]
    order = range(n) if reverse else range(n - 1, -1, -1)
    if finite:
        previous = -1
        for i in order:  # one fused op per row; x * 0 == 0 and x * 1 == x for finite x
            if previous < 0:
                dst[:, i].copy_(grad[:, i])
            else:
                torch.addcmul(grad[:, i], dst[:, previous], keep[:, previous], out=dst[:, i])
            previous = i
    else:  # inf / NaN gradients: reset by selection so that inf * 0 never appears
        pending = torch.zeros_like(grad[:, 0])
        zero = grad.new_zeros(())
        for i in order:
            pending.add_(grad[:, i])
            hit = keep[:, i] == 0
            torch.where(hit, pending, zero, out=dst[:, i])
            pending.masked_fill_(hit, 0.0)


class _CornerPoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, axis: str, reverse: bool) -> Tensor:  # type: ignore[override]
        b, c, h, w = x.shape
        along_w = axis == "w"
        src = x.contiguous().view(b * c, h, w)
        out = torch.empty_like(src)
        # keep: True where the input did not set the running maximum, stored in scan layout
        # (P, L, M) with the scanned axis L in the middle: (P, H, W) or (P, W, H)
        scan_shape = (b * c, w, h) if along_w else (b * c, h, w)
        keep = torch.empty(scan_shape, dtype=torch.bool, device=x.device)
        last = 0 if reverse else -1
        for p0, p1 in _plane_chunks(b * c, h * w):
            s, o, k = src[p0:p1], out[p0:p1], keep[p0:p1]
            if along_w:
                s = s.transpose(1, 2).contiguous()
                o_scan = torch.empty_like(s)
            else:
                o_scan = o
            _scan_max(s, o_scan, reverse)
            torch.ne(o_scan, s, out=k)
            # a NaN input sets the running maximum too (as in torch.cummax); any NaN of a
            # line reaches the last scanned output of that line
            if bool(torch.isnan(o_scan[:, last]).any()):
                k.logical_and_(torch.isnan(s).logical_not_())
            if along_w:
                o.copy_(o_scan.transpose(1, 2))
        ctx.save_for_backward(keep)
        ctx.along_w = along_w
        ctx.reverse = reverse
        return out.view(b, c, h, w)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        b, c, h, w = grad_out.shape
        grad = grad_out.contiguous().view(b * c, h, w)
        finite = bool(torch.isfinite(grad.sum()))
        grad_in = torch.empty_like(grad)
        zero = grad.new_zeros(())
        for p0, p1 in _plane_chunks(b * c, h * w):
            g, k, d = grad[p0:p1], keep[p0:p1], grad_in[p0:p1]
            if ctx.along_w:
                g = g.transpose(1, 2).contiguous()
                d_scan = torch.empty_like(g)
            else:
                d_scan = d
            _scan_grad(g, k.to(grad.dtype), d_scan, ctx.reverse, finite)
            if ctx.along_w:  # transpose back and zero the non-record positions in one pass
                torch.where(k.transpose(1, 2), zero, d_scan.transpose(1, 2), out=d)
            else:
                d.masked_fill_(k, 0.0)
        return grad_in.view(b, c, h, w), None, None


def corner_pool(x: Tensor, direction: str) -> Tensor:
    """Corner pooling: running maximum over one spatial direction.

    Equals ``mmcv.ops.CornerPool(direction)(x)`` in value and gradient.

    Args:
        x: feature map ``(B, C, H, W)``, floating point.
        direction: ``"top"`` (``out[i] = max x[i:]`` along H), ``"bottom"``
            (``max x[:i+1]`` along H), ``"left"`` (``max x[j:]`` along W) or ``"right"``
            (``max x[:j+1]`` along W).

    Returns:
        Tensor: ``(B, C, H, W)``, same dtype as ``x``.

    Raises:
        ValueError: ``x`` is not a 4-D floating tensor or ``direction`` is unknown.
    """
    check_tensor("x", x, (None, None, None, None), floating=True)
    check_choice("direction", direction, DIRECTIONS)
    if x.numel() == 0:
        return x.clone()
    axis, reverse = _SCAN[direction]
    return _CornerPoolFn.apply(x, axis, reverse)


class CornerPool(nn.Module):
    """``nn.Module`` wrapper of :func:`corner_pool` (no parameters).

    Paper: https://arxiv.org/abs/1808.01244 (CornerNet, section 3.4).

    Args:
        direction: ``"top"``, ``"bottom"``, ``"left"`` or ``"right"``.
    """

    def __init__(self, direction: str) -> None:
        super().__init__()
        check_choice("direction", direction, DIRECTIONS)
        self.direction = direction

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``x`` ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return corner_pool(x, self.direction)

    def extra_repr(self) -> str:
        return f"direction={self.direction!r}"


class ConvNormAct(nn.Sequential):
    """``Conv2d`` (no bias) + ``BatchNorm2d`` + optional ``ReLU``, "same" padding.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size (odd). Default 3.
        stride: convolution stride. Default 1.
        relu: append a ReLU. Default ``True``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        relu: bool = True,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        )
        layers["norm"] = nn.BatchNorm2d(out_channels)
        if relu:
            layers["act"] = nn.ReLU(inplace=True)
        super().__init__(layers)


class CornerPoolBlock(nn.Module):
    """CornerNet's corner pooling module for one corner type.

    Paper: https://arxiv.org/abs/1808.01244 (CornerNet, Fig. 7).

    Structure (mmdet's ``BiCornerPool``, weights map 1:1)::

        a = pool_a(branch_a(x))          branch_*: 3x3 conv-BN-ReLU -> pool_channels
        b = pool_b(branch_b(x))
        y = relu(merge(a + b) + skip(x))  merge: 3x3 conv-BN; skip: 1x1 conv-BN
        out = fuse(y)                     fuse: 3x3 conv-BN-ReLU

    Args:
        in_channels: channels of ``x``.
        directions: the two pooling directions, e.g. ``("top", "left")``.
        pool_channels: channels of the two pooled branches. Default 128.
        out_channels: output channels. Default ``in_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        directions: tuple[str, str],
        pool_channels: int = 128,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if len(directions) != 2:
            raise ValueError(f"directions: expected two directions, got {directions!r}")
        for d in directions:
            check_choice("directions", d, DIRECTIONS)
        out_channels = in_channels if out_channels is None else out_channels
        self.directions = tuple(directions)
        self.branch_a = ConvNormAct(in_channels, pool_channels, 3)
        self.branch_b = ConvNormAct(in_channels, pool_channels, 3)
        self.merge = ConvNormAct(pool_channels, out_channels, 3, relu=False)
        self.skip = ConvNormAct(in_channels, out_channels, 1, relu=False)
        self.fuse = ConvNormAct(out_channels, out_channels, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""
        check_tensor("x", x, (None, None, None, None), floating=True)
        pooled = corner_pool(self.branch_a(x), self.directions[0]) + corner_pool(
            self.branch_b(x), self.directions[1]
        )
        y = self.act(self.merge(pooled) + self.skip(x))
        return self.fuse(y)


class TopLeftPool(CornerPoolBlock):
    """Top-left corner pooling module (top + left pooling), see :class:`CornerPoolBlock`.

    Paper: https://arxiv.org/abs/1808.01244 (CornerNet).
    """

    def __init__(
        self, in_channels: int, pool_channels: int = 128, out_channels: int | None = None
    ) -> None:
        super().__init__(in_channels, ("top", "left"), pool_channels, out_channels)


class BottomRightPool(CornerPoolBlock):
    """Bottom-right corner pooling module (bottom + right pooling), see
    :class:`CornerPoolBlock`.

    Paper: https://arxiv.org/abs/1808.01244 (CornerNet).
    """

    def __init__(
        self, in_channels: int, pool_channels: int = 128, out_channels: int | None = None
    ) -> None:
        super().__init__(in_channels, ("bottom", "right"), pool_channels, out_channels)


# Short names used in DESIGN.md.
TLPool = TopLeftPool
BRPool = BottomRightPool

__all__ = [
    "DIRECTIONS",
    "BottomRightPool",
    "BRPool",
    "ConvNormAct",
    "CornerPool",
    "CornerPoolBlock",
    "TLPool",
    "TopLeftPool",
    "corner_pool",
]
