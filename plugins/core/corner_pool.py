"""Corner pooling and CornerNet's corner pooling modules.

Paper: CornerNet: Detecting Objects as Paired Keypoints, Law & Deng 2018,
https://arxiv.org/abs/1808.01244 (section 3.4, "Corner Pooling").

``corner_pool(x, "top")`` replaces every value by the maximum of itself and everything below
it in the same column (``out[..., i, j] = max_{k >= i} x[..., k, j]``); ``"bottom"`` looks up,
``"left"`` looks right and ``"right"`` looks left. A top-left corner is found by adding a
top-pooled and a left-pooled map.

``"right"`` is ``torch.cummax`` along the contiguous last axis (what mmcv runs too), as is every
direction on non-CPU devices (flip + ``cummax`` + flip). On CPU the other three directions avoid ``cummax`` on a flipped copy or along a strided axis: the running
maximum is computed one row at a time on whole ``(B*C, W)`` slices (for ``"left"`` after a
blocked 2-D transpose, chunk by chunk), and the backward pass is one fused multiply-add per row
driven by a boolean "did not set the maximum" mask instead of an int64 index tensor. On CPU
this is several times faster than flip + ``cummax`` + flip for ``"top"``/``"bottom"`` and
faster for ``"left"``. Gradients go to the position that produced the running maximum; on ties
to the tied position closest to the output (the most recent one in scan order), which is what
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

# Lines are processed in chunks of about this many elements: scratch buffers of that size are
# reused within a call, so no full-size temporaries (and their page faults) are needed.
_CHUNK_ELEMENTS = 1 << 22


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(1, size))
    return [(p, min(total, p + step)) for p in range(0, total, step)]


def _scan_max(src: Tensor, dst: Tensor, reverse: bool) -> None:
    """Running maximum of ``src`` along dim 0 into ``dst`` (same shape), one op per step.

    NaN propagates forward like ``torch.cummax`` does.
    """
    n = src.shape[0]
    order = range(n - 1, -1, -1) if reverse else range(n)
    previous = -1
    for i in order:
        if previous < 0:
            dst[i].copy_(src[i])
        else:
            torch.maximum(dst[previous], src[i], out=dst[i])
        previous = i


def _scan_grad(grad: Tensor, keep: Tensor, dst: Tensor, reverse: bool, finite: bool) -> None:
    """Backward of :func:`_scan_max` along dim 0.

    ``keep`` (float 0/1) is 1 where the input did *not* set the running maximum. Walking against
    the scan direction, ``acc_i = g_i + acc_prev * keep_prev``: every output gradient flows back
    to the nearest position at or before it (in scan order) that set the maximum, which is the
    position ``torch.cummax`` records (the latest one on ties). ``dst`` receives ``acc``; the
    caller zeroes the positions where ``keep`` is 1.
    """
    n = grad.shape[0]
    order = range(n) if reverse else range(n - 1, -1, -1)
    if finite:
        previous = -1
        for i in order:  # one fused op per step; x * 0 == 0 and x * 1 == x for finite x
            if previous < 0:
                dst[i].copy_(grad[i])
            else:
                torch.addcmul(grad[i], dst[previous], keep[previous], out=dst[i])
            previous = i
    else:  # inf / NaN gradients: reset by selection so that inf * 0 never appears
        pending = torch.zeros_like(grad[0])
        zero = grad.new_zeros(())
        for i in order:
            pending.add_(grad[i])
            hit = keep[i] == 0
            torch.where(hit, pending, zero, out=dst[i])
            pending.masked_fill_(hit, 0.0)


class _CornerPoolFn(torch.autograd.Function):
    """Running max along H (``(P, H, W)`` view, scanned in place) or along W (the
    ``(P*H, W)`` matrix is transposed chunk by chunk into ``(W, n)`` buffers, a plain 2-D
    transpose that PyTorch copies with a blocked kernel)."""

    @staticmethod
    def forward(ctx, x: Tensor, axis: str, reverse: bool) -> Tensor:  # type: ignore[override]
        b, c, h, w = x.shape
        along_w = axis == "w"
        last = 0 if reverse else -1
        src = x.contiguous()
        out = torch.empty_like(src)
        if along_w:
            rows = b * c * h
            src2, out2 = src.view(rows, w), out.view(rows, w)
            keep = torch.empty((w, rows), dtype=torch.bool, device=x.device)
            s_buf = src.new_empty((w, min(rows, max(1, _CHUNK_ELEMENTS // w))))
            o_buf = torch.empty_like(s_buf)
            for r0, r1 in _chunks(rows, w):
                n = r1 - r0
                s_t, o_t, k = s_buf[:, :n], o_buf[:, :n], keep[:, r0:r1]
                s_t.copy_(src2[r0:r1].t())
                _scan_max(s_t, o_t, reverse)
                _mark_kept(o_t, s_t, k, last)
                out2[r0:r1].copy_(o_t.t())
        else:
            planes = b * c
            src3, out3 = src.view(planes, h, w), out.view(planes, h, w)
            keep = torch.empty((planes, h, w), dtype=torch.bool, device=x.device)
            for p0, p1 in _chunks(planes, h * w):
                s_v = src3[p0:p1].transpose(0, 1)  # (H, p, W) views: scan along dim 0
                o_v = out3[p0:p1].transpose(0, 1)
                _scan_max(s_v, o_v, reverse)
                _mark_kept(o_v, s_v, keep[p0:p1].transpose(0, 1), last)
        ctx.save_for_backward(keep)
        ctx.along_w = along_w
        ctx.reverse = reverse
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        b, c, h, w = grad_out.shape
        grad = grad_out.contiguous()
        finite = bool(torch.isfinite(grad.sum()))
        grad_in = torch.empty_like(grad)
        if ctx.along_w:
            rows = b * c * h
            g2, d2 = grad.view(rows, w), grad_in.view(rows, w)
            g_buf = grad.new_empty((w, min(rows, max(1, _CHUNK_ELEMENTS // w))))
            k_buf, d_buf = torch.empty_like(g_buf), torch.empty_like(g_buf)
            for r0, r1 in _chunks(rows, w):
                n = r1 - r0
                g_t, k_t, d_t, k = g_buf[:, :n], k_buf[:, :n], d_buf[:, :n], keep[:, r0:r1]
                g_t.copy_(g2[r0:r1].t())
                k_t.copy_(k)
                _scan_grad(g_t, k_t, d_t, ctx.reverse, finite)
                d_t.masked_fill_(k, 0.0)
                d2[r0:r1].copy_(d_t.t())
        else:
            planes = b * c
            g3, d3 = grad.view(planes, h, w), grad_in.view(planes, h, w)
            step = max(1, _CHUNK_ELEMENTS // (h * w))
            k_buf = grad.new_empty((h, min(planes, step), w))
            for p0, p1 in _chunks(planes, h * w):
                k = keep[p0:p1].transpose(0, 1)
                k_f = k_buf[:, : p1 - p0]
                k_f.copy_(k)
                d_v = d3[p0:p1].transpose(0, 1)
                _scan_grad(g3[p0:p1].transpose(0, 1), k_f, d_v, ctx.reverse, finite)
                d_v.masked_fill_(k, 0.0)
        return grad_in, None, None


def _mark_kept(out: Tensor, src: Tensor, keep: Tensor, last: int) -> None:
    """``keep = out != src``; a NaN input sets the running maximum too (as in torch.cummax).

    Any NaN of a line reaches the line's last scanned output, so only then is ``isnan`` needed.
    """
    torch.ne(out, src, out=keep)
    if bool(torch.isnan(out[last]).any()):
        keep.logical_and_(torch.isnan(src).logical_not_())


def _running_max_by_doubling(x: Tensor, dim: int, reverse: bool) -> Tensor:
    """Running maximum along ``dim`` as ``ceil(log2(n))`` maxima with shifted copies.

    After the step with shift ``s`` every entry holds the maximum of the ``2 s`` entries ending
    (starting, with ``reverse``) at it. Exact (only ``max``), and built from slicing,
    concatenation and ``maximum``, which every exporter handles (ONNX has no cumulative max).
    """
    n = x.shape[dim]
    out, step = x, 1
    while step < n:
        pad_shape = list(x.shape)
        pad_shape[dim] = step
        pad = x.new_full(pad_shape, float("-inf"))
        if reverse:  # out[i] = max(out[i], out[i + step])
            shifted = torch.cat((out.narrow(dim, step, n - step), pad), dim)
        else:  # out[i] = max(out[i], out[i - step])
            shifted = torch.cat((pad, out.narrow(dim, 0, n - step)), dim)
        out = torch.maximum(out, shifted)
        step *= 2
    return out


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
    if torch.compiler.is_exporting():  # torch.export / ONNX: no data-dependent code, no cummax
        return _running_max_by_doubling(x, 3 if axis == "w" else 2, reverse)
    if direction == "right" or x.device.type != "cpu":
        # cummax along the contiguous last axis is already optimal on CPU, and on accelerators
        # one cummax kernel beats a per-row loop of launches
        dim = 3 if axis == "w" else 2
        src = x.flip(dim) if reverse else x
        out = torch.cummax(src, dim=dim).values
        return out.flip(dim) if reverse else out
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
