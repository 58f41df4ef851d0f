"""Soft-NMS on CUDA tensors in one Triton kernel launch, without host synchronisation.

One program per class runs the whole greedy loop of :mod:`plugins.core.soft_nms` (mmcv's
algorithm, slot for slot) on the device: pick the first slot holding the highest score, swap it
to the front, decay the remaining slots, and move the last remaining boxes into the slots of
the boxes whose score fell below ``score_threshold`` (mmcv's compaction, so exactly tied scores
resolve as in ``mmcv.ops.soft_nms``). A class of any size is processed in tiles of ``BLOCK``
slots, its slot arrays living in a global-memory workspace.

Host side (:func:`soft_nms_padded`): the boxes are grouped by class with a stable sort and
cumulative sums, the kernel is launched with one program per *box* (programs past the last class
find an empty class and stop), and the picks are merged by one stable sort; every shape follows
from ``N``, so nothing waits for the device. The caller reads the output length once, at the
end (:func:`plugins.core.soft_nms.batched_soft_nms` does).

Arithmetic: float32 (float64 for float64 scores) with IEEE division (``div_rn``), no fused
multiply-add (``enable_fp_fusion=False``) and libdevice's ``exp``, so linear soft-NMS matches
mmcv's CPU kernel bit for bit and the Gaussian scores within an ulp or two of the C library's
``expf``. Under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, used by the tests) the kernel
runs on CPU tensors with numpy's ``exp``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["soft_nms_padded"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if not _INTERPRET:
    from triton.language.extra import libdevice
else:  # extern (libdevice) calls are not supported by the interpreter
    libdevice = None

#: Slots per tile. A class larger than this loops over tiles within each greedy step.
DEFAULT_BLOCK = 256


@triton.jit
def _soft_nms_kernel(
    x1_ptr,
    y1_ptr,
    x2_ptr,
    y2_ptr,
    area_ptr,
    sc_ptr,
    ind_ptr,
    start_ptr,
    count_ptr,
    hole_ptr,
    out_s_ptr,
    out_i_ptr,
    param_ptr,
    LINEAR: tl.constexpr,
    ACCURATE_EXP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Greedy soft-NMS of one class (program id = dense class id) in mmcv's slot layout.

    ``x1 .. ind`` hold the boxes grouped by class (input order inside a class) and are the
    slot arrays (modified in place); ``start`` / ``count`` each class's offset and size (zero
    past the last class); ``hole`` is scratch; ``out_s`` / ``out_i`` receive the picks at
    ``start + step`` (scores pre-filled with ``-inf``); ``param`` = (sigma, iou_threshold,
    score_threshold) in the working dtype.
    """
    pid = tl.program_id(0)
    n = tl.load(count_ptr + pid).to(tl.int32)
    base = tl.load(start_ptr + pid)
    sigma = tl.load(param_ptr)
    iou_thr = tl.load(param_ptr + 1)
    thr = tl.load(param_ptr + 2)
    x1_ptr += base
    y1_ptr += base
    x2_ptr += base
    y2_ptr += base
    area_ptr += base
    sc_ptr += base
    ind_ptr += base
    hole_ptr += base
    out_s_ptr += base
    out_i_ptr += base
    lanes = tl.arange(0, BLOCK)
    zero = n * 0
    live = n
    i = zero
    while i < live:
        # 1. The first slot in [i, live) holding the highest score (mmcv's scan).
        best = tl.load(sc_ptr + i)
        pos = i
        for t0 in tl.range(i + 1, live, BLOCK):
            offs = t0 + lanes
            m = offs < live
            s = tl.load(sc_ptr + offs, mask=m, other=float("-inf"))
            tmax = tl.max(s, axis=0)
            tpos = tl.min(tl.where(m & (s == tmax), offs, live), axis=0)
            take = tmax > best
            pos = tl.where(take, tpos, pos)
            best = tl.where(take, tmax, best)
        # 2. Swap the picked slot with slot i and record the pick.
        px1 = tl.load(x1_ptr + pos)
        py1 = tl.load(y1_ptr + pos)
        px2 = tl.load(x2_ptr + pos)
        py2 = tl.load(y2_ptr + pos)
        parea = tl.load(area_ptr + pos)
        pind = tl.load(ind_ptr + pos)
        ix1 = tl.load(x1_ptr + i)
        iy1 = tl.load(y1_ptr + i)
        ix2 = tl.load(x2_ptr + i)
        iy2 = tl.load(y2_ptr + i)
        iarea = tl.load(area_ptr + i)
        isc = tl.load(sc_ptr + i)
        iind = tl.load(ind_ptr + i)
        tl.debug_barrier()
        tl.store(x1_ptr + pos, ix1)
        tl.store(y1_ptr + pos, iy1)
        tl.store(x2_ptr + pos, ix2)
        tl.store(y2_ptr + pos, iy2)
        tl.store(area_ptr + pos, iarea)
        tl.store(sc_ptr + pos, isc)
        tl.store(ind_ptr + pos, iind)
        tl.debug_barrier()
        tl.store(x1_ptr + i, px1)
        tl.store(y1_ptr + i, py1)
        tl.store(x2_ptr + i, px2)
        tl.store(y2_ptr + i, py2)
        tl.store(area_ptr + i, parea)
        tl.store(sc_ptr + i, best)
        tl.store(ind_ptr + i, pind)
        tl.store(out_s_ptr + i, best)
        tl.store(out_i_ptr + i, pind)
        tl.debug_barrier()
        # 3. Decay the slots after i; count those that stay at or above the threshold.
        kept = zero
        for t0 in tl.range(i + 1, live, BLOCK):
            offs = t0 + lanes
            m = offs < live
            bx1 = tl.load(x1_ptr + offs, mask=m, other=0.0)
            by1 = tl.load(y1_ptr + offs, mask=m, other=0.0)
            bx2 = tl.load(x2_ptr + offs, mask=m, other=0.0)
            by2 = tl.load(y2_ptr + offs, mask=m, other=0.0)
            barea = tl.load(area_ptr + offs, mask=m, other=0.0)
            s = tl.load(sc_ptr + offs, mask=m, other=0.0)
            w = tl.maximum(tl.minimum(px2, bx2) - tl.maximum(px1, bx1), 0.0)
            h = tl.maximum(tl.minimum(py2, by2) - tl.maximum(py1, by1), 0.0)
            inter = w * h
            union = parea + barea - inter
            pos_union = union > 0
            ovr = tl.where(pos_union, tl.math.div_rn(inter, tl.where(pos_union, union, 1.0)), 0.0)
            if LINEAR:
                s = tl.where(ovr >= iou_thr, s * (1.0 - ovr), s)
            else:
                arg = tl.math.div_rn(-(ovr * ovr), sigma + tl.zeros_like(ovr))
                if ACCURATE_EXP:
                    s = s * libdevice.exp(arg)
                else:
                    s = s * tl.exp(arg)
            tl.store(sc_ptr + offs, s, mask=m)
            kept += tl.sum((m & ~(s < thr)).to(tl.int32), axis=0)
        tl.debug_barrier()
        front = i + 1 + kept
        if front < live:
            # 4. Compaction as mmcv: the k-th discarded slot of [i + 1, front) (ascending)
            # receives the k-th kept box of [front, live) counted from the back.
            holes = zero
            for t0 in tl.range(i + 1, front, BLOCK):
                offs = t0 + lanes
                m = offs < front
                s = tl.load(sc_ptr + offs, mask=m, other=0.0)
                hole = m & (s < thr)
                rank = holes + tl.cumsum(hole.to(tl.int32), axis=0) - 1
                tl.store(hole_ptr + rank, offs, mask=hole)
                holes += tl.sum(hole.to(tl.int32), axis=0)
            tl.debug_barrier()
            movers = zero
            for t0 in tl.range(front, live, BLOCK):
                offs = t0 + lanes
                m = offs < live
                s = tl.load(sc_ptr + offs, mask=m, other=0.0)
                mover = m & ~(s < thr)
                rank = movers + tl.cumsum(mover.to(tl.int32), axis=0) - 1
                dest = tl.load(hole_ptr + (holes - 1 - rank), mask=mover, other=0)
                tl.store(x1_ptr + dest, tl.load(x1_ptr + offs, mask=mover), mask=mover)
                tl.store(y1_ptr + dest, tl.load(y1_ptr + offs, mask=mover), mask=mover)
                tl.store(x2_ptr + dest, tl.load(x2_ptr + offs, mask=mover), mask=mover)
                tl.store(y2_ptr + dest, tl.load(y2_ptr + offs, mask=mover), mask=mover)
                tl.store(area_ptr + dest, tl.load(area_ptr + offs, mask=mover), mask=mover)
                tl.store(sc_ptr + dest, s, mask=mover)
                tl.store(ind_ptr + dest, tl.load(ind_ptr + offs, mask=mover), mask=mover)
                movers += tl.sum(mover.to(tl.int32), axis=0)
            tl.debug_barrier()
            live = front
        i += 1


def _group(idxs: Tensor | None, n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Class-stable order ``(N,)`` and each dense class's start and size, padded with zeros to
    ``(N,)`` (classes numbered by ascending id). No host synchronisation."""
    if idxs is None:
        order = torch.arange(n, device=device)
        counts = torch.zeros(n, dtype=torch.long, device=device)
        counts[0] = n
        return order, torch.zeros_like(counts), counts
    sorted_ids, order = torch.sort(idxs, stable=True)
    new = torch.ones(n, dtype=torch.long, device=device)
    new[1:] = (sorted_ids[1:] != sorted_ids[:-1]).long()
    cls = new.cumsum(0).sub_(1)
    counts = torch.zeros(n, dtype=torch.long, device=device).scatter_add_(0, cls, new.fill_(1))
    return order, counts.cumsum(0).sub_(counts), counts


def soft_nms_padded(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor | None,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    block: int = DEFAULT_BLOCK,
) -> tuple[Tensor, Tensor, Tensor]:
    """Class-wise soft-NMS with padded outputs; no host synchronisation.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy on a CUDA device (or on the CPU under
            ``TRITON_INTERPRET=1``), ``N >= 1``.
        scores: ``Tensor[N]``.
        idxs: ``Tensor[N]`` integer class ids, or ``None`` for one class.
        method: ``"linear"`` or ``"gaussian"``.
        sigma, iou_threshold, score_threshold: as :func:`plugins.core.soft_nms.soft_nms`.
        block: slots per tile (a power of two; tests use small ones to cover tiling).

    Returns:
        ``(keep, new_scores, num)``: ``Tensor[N]`` int64 box ids and ``Tensor[N]`` decayed
        scores (working dtype: float64 for float64 scores, else float32), sorted by score
        descending (ties: class id, then selection order); entries from ``num`` (a 0-d int64
        tensor) on are padding with score ``-inf``.
    """
    n = boxes.shape[0]
    dev = boxes.device
    work = torch.float64 if scores.dtype == torch.float64 else torch.float32
    order, starts, counts = _group(idxs, n, dev)
    b = boxes.detach().to(work)[order]
    x1, y1, x2, y2 = (b[:, k].contiguous() for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    sc = scores.detach().to(work)[order].contiguous()
    ind = order.to(torch.int32)
    hole = torch.empty(n, dtype=torch.int32, device=dev)
    out_s = torch.full((n,), float("-inf"), dtype=work, device=dev)
    out_i = torch.zeros(n, dtype=torch.int32, device=dev)
    param = torch.empty(3, dtype=work, device=dev)
    param[0], param[1], param[2] = sigma, iou_threshold, score_threshold  # fills, no copies
    launch = {} if _INTERPRET else {"enable_fp_fusion": False}
    _soft_nms_kernel[(n,)](
        x1, y1, x2, y2, area, sc, ind, starts, counts, hole, out_s, out_i, param,
        LINEAR=method == "linear", ACCURATE_EXP=not _INTERPRET, BLOCK=block, **launch,
    )  # fmt: skip
    out_s.masked_fill_(~(out_s >= score_threshold), float("-inf"))
    new_scores, perm = torch.sort(out_s, descending=True, stable=True)
    keep = out_i.long()[perm]
    return keep, new_scores, (new_scores > float("-inf")).sum()
