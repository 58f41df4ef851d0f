"""Soft-NMS (Bodla et al. 2017, https://arxiv.org/abs/1704.04503), vectorised over classes.

Semantics follow mmcv 2.1.0's CPU ``soft_nms`` (``mmcv/ops/csrc/pytorch/cpu/nms.cpp``), offset 0:

* Repeatedly pick the remaining box with the highest current score, then multiply the score of
  every other remaining box by a weight of its IoU with the picked box:
  ``"gaussian"``: ``exp(-iou^2 / sigma)`` for every box; ``"linear"``: ``1 - iou`` when
  ``iou >= iou_threshold`` and 1 otherwise. A box whose score falls below ``score_threshold``
  (mmcv's ``min_score``) is discarded.
* Ties: mmcv keeps the boxes in one array in input order. Picking box ``m`` swaps it with the
  first remaining slot; discarding a box moves the *last* remaining box into its slot. The
  argmax takes the first slot holding the maximum. This module reproduces that slot
  bookkeeping exactly (per class), so ties resolve as in ``mmcv.ops.soft_nms``.

Algorithm (CPU): boxes below ``score_threshold`` are dropped (mmcv discards them after the first
pick of their class, having changed nothing), then every class is split into the connected
components of its interaction graph: two boxes interact only if their decay weight differs
from 1 (``"gaussian"``: positive intersection; ``"linear"``: ``IoU >= iou_threshold``). The
components are found by a vectorised sweep (boxes sorted by ``(class, x1)``; only pairs whose
x-extents overlap are tested, in cache-sized blocks) and merged by min-label hooking with
pointer jumping. Components never interact, so solving each one alone gives exactly the
per-class kept set and decayed scores, and the per-class pick order is the decayed-score order.
When a tie could make mmcv's slot order matter (a tied maximum inside a component, or two kept
boxes of a class with equal decayed scores), the input is rerun by the per-class path below.

Groups (components, or classes in the per-class path) are solved in padded ``(C, Nmax)``
layouts (groups of similar size share a chunk; a small cost model picks the chunks under a
memory bound), the pairwise decay weights ``(C, Nmax, Nmax)`` of a chunk are computed once (a
group too large for the bound computes its weight rows on the fly), then the greedy selection
runs for all groups of the chunk in lock-step, one vectorised pick/decay/discard per step:

* CPU fast path: boxes stay in id order; a step is ``topk`` + one weight-row gather + one
  multiply (the weight diagonal is set to the smallest float so the pick removes itself, and
  discarded boxes simply keep their sub-threshold scores). It performs exactly mmcv's float
  multiplications, so it is bit-exact unless some pick has a tied maximum; ties are detected
  and the chunk is then rerun by
* the slot-exact engine, which reproduces mmcv's swaps and compactions.

Device path (CUDA, or any device other than CPU): the data never leaves the device (mmcv's
``soft_nms`` copies CUDA inputs to the CPU and back). Boxes are grouped by class with a stable
sort and cumulative sums (:func:`_device_layout`, no data-dependent shapes); one host read of
two ints (number of classes, largest class) sizes a single ``(classes, largest)`` padded
layout; the fast engine above (without its host-read shortcuts) runs exactly ``largest``
steps and the merge is a stable sort of the padded result (:func:`_device_solve`, no host
synchronisation at all: tests run it on meta tensors, which have no data, and under
``torch.cuda.set_sync_debug_mode("error")`` on a GPU); a second read of two ints gives the
output length and whether a pick had a tied maximum, in which case the slot-exact engine
reruns (and a third read gives its length). The component search is CPU only (its shapes
depend on the data). The CPU path runs on one intra-op thread (see :func:`_run`).

Cost: the component search tests the same-class pairs whose x-extents overlap; the solve is
``O(sum_chunks C_k * Nmax_k^2)`` elementwise work plus ``Nmax_k`` sequential steps per chunk,
so the sequential depth is the largest component, not the largest class. One component of
thousands of mutually overlapping boxes is still slower than mmcv (thousands of steps).
"""

from __future__ import annotations

import torch
from torch import Tensor

from plugins.core._validate import check_choice, check_positive, check_tensor

__all__ = ["soft_nms", "batched_soft_nms"]

_METHODS = ("linear", "gaussian", "hard")
# Upper bound on elements of one (C, Nmax, Nmax) weight block (float32: 4 bytes each).
_MAX_BLOCK = 1 << 21
# Modelled cost (us) of one pairwise element in the component path (see _plan_groups).
_ELEM_US = 0.05
# Candidate pairs tested per block in the component search (cache-sized buffers), and edges
# collected before they are merged into the component labels.
_PAIR_BLOCK = 1 << 15
_MERGE_EDGES = 1 << 16
# Largest class (boxes) up to which the CPU path skips the component search.
_SHALLOW_CLASS = 32


def _pairwise_iou(a: Tensor, b: Tensor, check_degenerate: bool = True) -> Tensor:
    """IoU of ``a (C, K, 4)`` against ``b (C, N, 4)`` per group -> ``(C, K, N)``.

    0 where the union is not positive. The arithmetic mirrors mmcv's CPU kernel (offset 0)
    so that float32 values agree bit for bit: ``inter / (area_a + area_b - inter)``.
    """
    ax1, ay1, ax2, ay2 = (a[..., k].contiguous()[..., None] for k in range(4))
    bx1, by1, bx2, by2 = (b[..., k].contiguous()[..., None, :] for k in range(4))
    area_a = (ax2 - ax1).mul_(ay2 - ay1)
    area_b = (bx2 - bx1).mul_(by2 - by1)
    # Three full-size buffers, reused through out= / in-place ops.
    inter = torch.minimum(ax2, bx2)
    tmp = torch.maximum(ax1, bx1)
    inter.sub_(tmp).clamp_(min=0)
    torch.minimum(ay2, by2, out=tmp)
    union = torch.maximum(ay1, by1)
    inter.mul_(tmp.sub_(union).clamp_(min=0))
    torch.add(area_a, area_b, out=union).sub_(inter)
    iou = inter.div_(union)
    if check_degenerate:
        iou.masked_fill_(~(union > 0), 0.0)
    return iou


class _Rows:
    """Weight rows ``w[c, sel_c, :]`` for a group: from a precomputed ``(C, N, N)`` matrix, or
    computed on the fly when that matrix would exceed the memory bound."""

    def __init__(
        self, boxes: Tensor, method: str, sigma: float, iou_threshold: float, degenerate: bool
    ) -> None:
        c, n = boxes.shape[:2]
        self.c, self.n = c, n
        self.method, self.sigma, self.iou_threshold = method, sigma, iou_threshold
        self.boxes = boxes
        self.base = torch.arange(c, device=boxes.device) * n
        self.degenerate = degenerate  # some real box has no area: guard 0 / 0
        if c * n * n <= _MAX_BLOCK:  # else rows on the fly
            iou = _pairwise_iou(boxes, boxes, self.degenerate)
            self.flat: Tensor | None = self.weight(iou).view(c * n, n)
        else:
            self.flat = None

    def weight(self, iou: Tensor) -> Tensor:
        """Decay factor of each IoU (in place where possible), clamped to the smallest
        normal float > 0 so that ``-inf * w`` (dead slots) stays ``-inf`` instead of NaN; a
        live score times ``tiny`` is below any positive threshold, as a score times 0."""
        if self.method == "gaussian":
            # mmcv: exp(-(iou * iou) / sigma); x / -s == -x / s exactly.
            w = iou.mul_(iou).div_(-self.sigma).exp_()
        else:
            below = iou < self.iou_threshold
            w = iou.neg_().add_(1.0).masked_fill_(below, 1.0)  # (scalar where() is slow)
        return w.clamp_(min=torch.finfo(w.dtype).tiny)

    def __call__(self, sel: Tensor) -> Tensor:
        """``sel`` ``(C,)`` box ids -> weights ``(C, N)`` indexed by box id."""
        if self.flat is not None:
            return self.flat.index_select(0, self.base + sel)
        return self.many(sel[:, None])[:, 0]

    def many(self, sel: Tensor) -> Tensor:
        """``sel`` ``(C, K)`` box ids -> weights ``(C, K, N)``."""
        c, k = sel.shape
        if self.flat is not None:
            flat_ids = (self.base[:, None] + sel).view(-1)
            return self.flat.index_select(0, flat_ids).view(c, k, self.n)
        picked = self.boxes.gather(1, sel[..., None].expand(c, k, 4))
        return self.weight(_pairwise_iou(picked, self.boxes, self.degenerate))


def _seq_greedy(
    scores: Tensor, rows: _Rows, score_threshold: float, sync: bool = True
) -> tuple[Tensor, Tensor, bool | Tensor]:
    """One pick per class and step, boxes in id order (cheapest per step).

    When the weight matrix is precomputed and ``score_threshold > 0``, its diagonal is set to
    the smallest normal float, so multiplying by the picked box's own row also removes that
    box (its score drops below the threshold) and no separate write is needed.
    Exact whenever no pick has a tied maximum; ties are reported.

    Args:
        sync: allow host reads (the self-removal check, early exit). ``False`` runs exactly
            ``N`` steps without any and returns ``tied`` as a device tensor.

    Returns:
        ``(sel_scores (T, C), sel_ids (T, C), tied)``; ``-inf`` where nothing was picked.
    """
    neg_inf = float("-inf")
    s = scores.clone()
    c, n = s.shape
    flat, base = rows.flat, rows.base
    self_kill = sync and flat is not None and score_threshold > 0
    if self_kill:
        top = float(s.max())
        self_kill = top * torch.finfo(s.dtype).tiny < score_threshold
    if self_kill:
        flat.view(c, n, n).diagonal(dim1=1, dim2=2).fill_(torch.finfo(s.dtype).tiny)
    vals, ids = [], []
    for t in range(n):
        if n > 1:
            v, i = s.topk(2, dim=1)
        else:
            v, i = s.max(dim=1, keepdim=True)
        i0 = i[:, 0]
        vals.append(v)
        ids.append(i0)
        if t + 1 == n:
            break
        if self_kill:
            # Discarded boxes keep their (sub-threshold) scores instead of -inf: they can
            # never outrank a live box again, and their picks are filtered out at the end.
            s.mul_(flat.index_select(0, base + i0))
            if t % 4 == 3 and v[:, 0].max().item() < score_threshold:
                break
            continue
        s.mul_(flat.index_select(0, base + i0) if flat is not None else rows(i0))
        s.scatter_(1, i[:, :1], neg_inf)
        s.masked_fill_(s < score_threshold, neg_inf)
        if sync and t % 4 == 3 and s.max().item() == neg_inf:
            break
    v = torch.stack(vals)
    if n > 1:
        tied = ((v[..., 1] == v[..., 0]) & (v[..., 0] >= score_threshold)).any()
    else:
        tied = torch.zeros((), dtype=torch.bool, device=s.device)
    return v[..., 0], torch.stack(ids), bool(tied) if sync else tied


def _exact_greedy(
    scores: Tensor, counts: Tensor, rows: _Rows, score_threshold: float, sync: bool
) -> tuple[Tensor, Tensor]:
    """Soft-NMS for ``C`` classes at once in mmcv's slot layout (exact tie handling).

    Args:
        scores: ``(C, N)`` scores, ``-inf`` in padding; slot order = input order in the class.
        counts: ``(C,)`` int64 number of real boxes per class.
        rows: weight-row provider of the group.
        sync: allow host synchronisation (early exit, window shrinking, skipping no-op
            compactions). ``False`` runs a fixed number of steps without syncing.

    Returns:
        ``(sel_scores (T, C), sel_ids (T, C))`` in selection order; entries at steps
        ``>= n_c`` (nothing left) are ``-inf``.
    """
    c, n_max = scores.shape
    dev = scores.device
    slot_s = scores.clone()
    slot_b = torch.arange(n_max, device=dev).expand(c, n_max).contiguous()
    n = counts.clone()
    end = n_max  # exclusive end of the window that can hold live slots
    neg_inf = float("-inf")
    out_s, out_b = [], []
    for t in range(n_max):
        if sync and t >= end:
            break
        win_s = slot_s[:, t:end]
        win_b = slot_b[:, t:end]
        p = win_s.argmax(dim=1, keepdim=True)  # first maximum, as mmcv's scan
        sel_s = win_s.gather(1, p)
        sel_b = win_b.gather(1, p)
        # Swap the chosen slot with slot t (a no-op where p == 0).
        win_s.scatter_(1, p, win_s[:, :1].clone())
        win_b.scatter_(1, p, win_b[:, :1].clone())
        out_s.append(sel_s[:, 0])
        out_b.append(sel_b[:, 0])
        if t + 1 >= end:
            break
        rest_s = slot_s[:, t + 1 : end]
        rest_b = slot_b[:, t + 1 : end]
        rest_s.mul_(rows(sel_b[:, 0]).gather(1, rest_b))
        keep = rest_s >= score_threshold
        kept = keep.sum(dim=1)
        alive = (n - (t + 1)).clamp_(min=0)
        if sync and bool((kept == alive).all()):
            continue
        # Compaction as mmcv: the k-th discarded slot (ascending) in the front part receives
        # the k-th kept box counted from the back.
        m = rest_s.shape[1]
        j = torch.arange(m, device=dev)
        front = j < kept[:, None]
        hole = front & ~keep
        mover = keep & ~front
        hole_rank = hole.cumsum(1).sub_(1).clamp_(min=0)
        mover_cum = mover.cumsum(1)
        mover_rank = mover_cum[:, -1:] - mover_cum  # 0 for the last mover
        by_rank = torch.zeros((c, m + 1), dtype=torch.long, device=dev)
        by_rank.scatter_(1, torch.where(mover, mover_rank, m), j.expand(c, m))
        src = torch.where(hole, by_rank.gather(1, hole_rank), j)
        new_s = rest_s.gather(1, src).masked_fill_(~front, neg_inf)
        rest_b.copy_(rest_b.gather(1, src))
        rest_s.copy_(new_s)
        n = torch.minimum(n, kept + (t + 1))
        if sync:
            end = t + 1 + int(kept.max())
    out = torch.stack(out_s)
    steps = torch.arange(out.shape[0], device=dev)[:, None]
    out = out.masked_fill(steps >= n[None, :], neg_inf)
    return out, torch.stack(out_b)


def _chunk_cost(sizes: list[int], lo: int, hi: int) -> float:
    """Modelled run time (us) of one chunk: per-step overhead plus per-element work."""
    width = max(sizes[lo], 1)
    if (hi - lo) > 1 and (hi - lo) * width * width > _MAX_BLOCK:
        return float("inf")
    return 30.0 * width + 0.012 * (hi - lo) * width * width


def _plan_chunks(sizes: list[int], lo: int = 0, hi: int | None = None) -> list[tuple[int, int]]:
    """Split classes (sorted by size, descending) into contiguous chunks.

    Minimises the cost model of :func:`_chunk_cost` (a step of the sequential loop costs
    ~30 us, a pairwise element ~12 ns) under the memory bound: recursive best binary split
    when the whole range fits the bound, otherwise dynamic programming.
    """
    hi = len(sizes) if hi is None else hi
    whole = _chunk_cost(sizes, lo, hi)
    if whole == float("inf"):
        return _plan_chunks_dp(sizes[lo:hi], lo)
    best, where = whole, -1
    for mid in range(lo + 1, hi):
        cost = _chunk_cost(sizes, lo, mid) + _chunk_cost(sizes, mid, hi)
        if cost < best:
            best, where = cost, mid
    if where < 0:
        return [(lo, hi)]
    return _plan_chunks(sizes, lo, where) + _plan_chunks(sizes, where, hi)


def _plan_chunks_dp(sizes: list[int], offset: int) -> list[tuple[int, int]]:
    num = len(sizes)
    best = [0.0] + [float("inf")] * num
    prev = [0] * (num + 1)
    for j in range(1, num + 1):
        for i in range(j - 1, -1, -1):
            cost = _chunk_cost(sizes, i, j)
            if cost == float("inf"):
                break
            if best[i] + cost < best[j]:
                best[j], prev[j] = best[i] + cost, i
    chunks = []
    j = num
    while j > 0:
        chunks.append((prev[j] + offset, j + offset))
        j = prev[j]
    return chunks[::-1]


def _components(boxes: Tensor, cls: Tensor, method: str, iou_threshold: float) -> Tensor:
    """Connected components of the interaction graph of each class.

    Two boxes interact (one's pick can change the other's score) only when their decay weight
    differs from 1: for ``"gaussian"`` only if their intersection is positive, for
    ``"linear"`` only if ``IoU >= iou_threshold``. Edges are taken conservatively (a superset
    of those pairs: positive intersection, and for ``"linear"`` an IoU within 1e-4 of the
    threshold computed in float64), which can only merge components, never split them.

    Pairs are found by a sweep: boxes sorted by ``(class, x1)`` and, per box, the run of later
    boxes whose ``x1`` lies left of its ``x2``; the pair list is tested in blocks of bounded
    size and the edges found are merged by min-label hooking with pointer jumping.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy.
        cls: ``Tensor[N]`` int64 dense class ids.

    Returns:
        ``Tensor[N]`` int64: the smallest box index of each box's component (boxes of
        different classes never share a component).
    """
    n = boxes.shape[0]
    dev = boxes.device
    b64 = boxes.to(torch.float64)
    x1 = b64[:, 0]
    lo = float(x1.min())
    span = float(b64[:, 2].max()) - lo
    # Key (class, x1) as one float64: rounding is monotone, so a box whose x1 is left of
    # x2 of an earlier box of its class always falls inside that box's window below.
    stride = 2.0 ** (max(span, 1.0).__ceil__().bit_length() + 1)
    key = cls.to(torch.float64) * stride + (x1 - lo)
    key_sorted, order = torch.sort(key)
    query = cls[order].to(torch.float64) * stride + (b64[order, 2] - lo)
    stop = torch.searchsorted(key_sorted, query, right=True)
    _, counts = torch.unique_consecutive(cls[order], return_counts=True)
    class_end = torch.cumsum(counts, 0).repeat_interleave(counts)
    first = torch.arange(n, device=dev)
    stop = torch.minimum(stop, class_end)
    width = (stop - first - 1).clamp_(min=0)
    labels = first.clone()  # labels in sorted positions; mapped back at the end
    sb = boxes[order]
    x1s, y1s, x2s, y2s = (sb[:, k].contiguous() for k in range(4))
    area = (x2s - x1s) * (y2s - y1s)
    total = torch.cumsum(width, 0)
    # Pair p of box i (p counted over all boxes) has partner i + 1 + p - (total[i] - width[i]).
    shift = first + 1 - (total - width)
    num_pairs = int(total[-1])
    block = _PAIR_BLOCK
    start = 0
    edges_u: list[Tensor] = []
    edges_v: list[Tensor] = []
    pending = 0
    while start < num_pairs:
        # Boxes whose windows lie in this block of the pair list (one window never splits).
        i_lo = int(torch.searchsorted(total, start, right=True))
        i_hi = int(torch.searchsorted(total, start + block, right=False)) + 1
        i_hi = min(max(i_hi, i_lo + 1), n)
        stop_pair = int(total[i_hi - 1])
        left = torch.repeat_interleave(first[i_lo:i_hi], width[i_lo:i_hi])
        right = torch.arange(start, stop_pair, device=dev).add_(shift.index_select(0, left))
        start = stop_pair
        iw = torch.minimum(x2s.index_select(0, left), x2s.index_select(0, right))
        iw.sub_(torch.maximum(x1s.index_select(0, left), x1s.index_select(0, right)))
        ih = torch.minimum(y2s.index_select(0, left), y2s.index_select(0, right))
        ih.sub_(torch.maximum(y1s.index_select(0, left), y1s.index_select(0, right)))
        if method == "linear" and iou_threshold > 1e-4:
            # IoU in the working dtype as the weights are computed; the margin keeps the
            # test conservative whatever the rounding.
            inter = iw.clamp_(min=0).mul_(ih.clamp_(min=0))
            union = area.index_select(0, left).add_(area.index_select(0, right)).sub_(inter)
            edge = inter.div_(union) >= iou_threshold - 1e-4
        else:
            edge = (iw > 0).logical_and_(ih > 0)
        hit = torch.nonzero(edge).flatten()
        edges_u.append(left.index_select(0, hit))
        edges_v.append(right.index_select(0, hit))
        pending += hit.numel()
        if pending >= _MERGE_EDGES:
            _merge_labels(labels, torch.cat(edges_u), torch.cat(edges_v))
            edges_u, edges_v, pending = [], [], 0
    if edges_u:
        _merge_labels(labels, torch.cat(edges_u), torch.cat(edges_v))
    out = torch.empty_like(labels)
    out[order] = order[labels]
    # Label = a member's original index; make it the smallest original index per component.
    smallest = torch.full((n,), n, dtype=torch.long, device=dev)
    smallest.scatter_reduce_(0, out, first, reduce="amin")
    return smallest[out]


def _merge_labels(labels: Tensor, u: Tensor, v: Tensor) -> None:
    """Union the sets of ``labels`` (a forest of parent pointers, each a star: root = min)
    along edges ``(u, v)``, in place: min-label hooking plus pointer jumping."""
    while u.numel():
        lu, lv = labels.index_select(0, u), labels.index_select(0, v)
        hit = torch.nonzero(lu != lv).flatten()
        if hit.numel() == 0:
            return
        u, v = u.index_select(0, hit), v.index_select(0, hit)
        lu, lv = lu.index_select(0, hit), lv.index_select(0, hit)
        labels.scatter_reduce_(0, torch.maximum(lu, lv), torch.minimum(lu, lv), reduce="amin")
        while True:  # pointer jumping until every node points at its root
            nxt = labels[labels]
            if bool((nxt == labels).all()):
                break
            labels.copy_(nxt)


def _plan_groups(sizes: list[int]) -> list[tuple[int, int]]:
    """Chunks of groups sorted by size (descending) for the component path.

    Groups of equal size always share a chunk (up to the memory bound ``_MAX_BLOCK``); a run
    of ``k`` groups of size ``w`` joins the current chunk of width ``W`` while padding it,
    ``k * W^2`` elements, is modelled cheaper than ``w`` more sequential steps plus
    ``k * w^2`` elements (the cost model of :func:`_chunk_cost`).
    """
    chunks: list[tuple[int, int]] = []
    num = len(sizes)
    lo = 0
    while lo < num:
        width = max(sizes[lo], 1)
        cap = max(_MAX_BLOCK // (width * width), 1)
        hi = lo
        while hi < num and hi - lo < cap:
            w = max(sizes[hi], 1)
            run_end = hi
            while run_end < num and sizes[run_end] == sizes[hi]:
                run_end += 1
            k = min(run_end, lo + cap) - hi
            if hi > lo and _ELEM_US * k * width * width > 30.0 * w + _ELEM_US * k * w * w:
                break
            hi += k
        chunks.append((lo, hi))
        lo = hi
    return chunks


def _solve(
    boxes_w: Tensor,
    scores_w: Tensor,
    order: Tensor,
    grp: Tensor,
    slot: Tensor,
    counts: Tensor,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    degenerate: bool,
    force_exact: bool,
    components: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Greedy soft-NMS of every group (class, or component of a class) in padded chunks.

    Args:
        order: group-stable ordering of the boxes; ``grp``, ``slot`` (rank within the group,
            in input order) and ``counts`` (group sizes) describe the sorted boxes.
        components: groups are components of classes: no slot-exact fallback; return
            ``None`` when a pick has a tied maximum.

    Returns:
        ``(keep, scores, group, step)`` of the kept boxes (unsorted), or ``None``.
    """
    dev = boxes_w.device
    num_grp = counts.shape[0]
    by_size = torch.argsort(counts, descending=True, stable=True)
    sizes = counts[by_size].tolist()
    table = torch.full((num_grp, int(sizes[0])), -1, dtype=torch.long, device=dev)
    table[grp, slot] = order
    if components:
        chunks = _plan_groups(sizes)
    else:
        chunks = _plan_chunks(sizes)
    keep_parts, score_parts, grp_parts, step_parts = [], [], [], []
    for lo, hi in chunks:
        members = by_size[lo:hi]
        width = max(int(sizes[lo]), 1)
        table_g = table[members, :width]
        if width == 1:  # lone boxes: nothing decays them
            sel_s = scores_w[table_g[:, 0]][None]
            sel_b = torch.zeros_like(sel_s, dtype=torch.long)
            safe = table_g
        else:
            valid = table_g >= 0
            safe = table_g.clamp(min=0)
            # Padding boxes are unit squares: never 0 / 0, never read for a live class.
            b_pad = boxes_w[safe]
            b_pad.masked_fill_(~valid[..., None], 0.0)
            b_pad[..., 2:].masked_fill_(~valid[..., None], 1.0)
            s_pad = scores_w[safe].masked_fill_(~valid, float("-inf"))
            rows = _Rows(b_pad, method, sigma, iou_threshold, degenerate)
            tied = True
            if not force_exact:
                sel_s, sel_b, tied = _seq_greedy(s_pad, rows, score_threshold)
            if tied:
                if components:
                    return None
                sel_s, sel_b = _exact_greedy(s_pad, counts[members], rows, score_threshold, True)
        live = sel_s >= score_threshold  # (T, C); drops spent steps and a sub-threshold pick
        steps = torch.arange(sel_s.shape[0], device=dev)[:, None].expand_as(sel_s)
        keep_parts.append(safe.gather(1, sel_b.t()).t()[live])
        score_parts.append(sel_s[live])
        grp_parts.append(members[None, :].expand_as(sel_s)[live])
        step_parts.append(steps[live])
    return (
        torch.cat(keep_parts),
        torch.cat(score_parts),
        torch.cat(grp_parts),
        torch.cat(step_parts),
    )


def _run(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor | None,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    max_detections: int,
    sync: bool | None = None,
    force_exact: bool = False,
    components: bool | None = None,
) -> tuple[Tensor, Tensor]:
    dev = boxes.device
    n_in = boxes.shape[0]
    if n_in == 0:
        return torch.zeros(0, dtype=torch.long, device=dev), scores.new_zeros(0)
    if method == "hard":
        return _hard(boxes, scores, idxs, iou_threshold, score_threshold, max_detections)
    if sync is None:
        sync = dev.type == "cpu"
    if not sync:
        return _run_device(
            boxes, scores, idxs, method, sigma, iou_threshold, score_threshold, max_detections
        )
    # One intra-op thread: the CPU path is hundreds of small ops, and when the cores are
    # shared (data-loader workers, another job) every parallel op waits for a descheduled
    # OpenMP thread. Measured at 5k boxes with a 2-thread matmul process beside it: 584 ms
    # with 2 threads, 4.6 ms with 1 (4.0 ms with 2 on an idle machine; BENCHMARKS.md 1b).
    # torch's thread count is process-wide: restored on the way out.
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        return _run_host(
            boxes, scores, idxs, method, sigma, iou_threshold, score_threshold,
            max_detections, force_exact, components,
        )  # fmt: skip
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _run_host(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor | None,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    max_detections: int,
    force_exact: bool,
    components: bool | None,
) -> tuple[Tensor, Tensor]:
    """CPU soft-NMS (component path, or per-class path); see the module docstring."""
    dev = boxes.device
    n_in = boxes.shape[0]
    work = torch.float64 if scores.dtype == torch.float64 else torch.float32
    boxes_w = boxes.detach().to(work)
    scores_w = scores.detach().to(work)
    area = (boxes_w[:, 2] - boxes_w[:, 0]) * (boxes_w[:, 3] - boxes_w[:, 1])
    degenerate = bool((area <= 0).any())

    if idxs is None:
        cls_of = torch.zeros(n_in, dtype=torch.long, device=dev)
        class_sizes = None
    else:
        _, cls_of, class_sizes = torch.unique(idxs, return_inverse=True, return_counts=True)
    if components is None:
        # Shallow classes: the per-class greedy loop is short, so the component search
        # would cost more than it saves (measured crossover ~30 boxes per class).
        largest = n_in if class_sizes is None else int(class_sizes.max())
        components = not force_exact and largest > _SHALLOW_CLASS
    result = None
    if components:
        result = _run_components(
            boxes_w, scores_w, cls_of, method, sigma, iou_threshold, score_threshold, degenerate
        )
    if result is None:
        order, cls, slot, counts, bounds = _device_layout(idxs, n_in, dev)
        counts = counts[: int(bounds[0])]
        keep, out_scores, grp, step = _solve(
            boxes_w, scores_w, order, cls, slot, counts, method, sigma, iou_threshold,
            score_threshold, degenerate, force_exact, False,
        )  # fmt: skip
        # Order: score descending; ties by class id, then selection order (the extra sort
        # only when some scores tie).
        sorted_scores, perm = torch.sort(out_scores, descending=True, stable=True)
        if bool((sorted_scores[1:] == sorted_scores[:-1]).any()):
            pre = torch.argsort(grp * (int(step.max()) + 1) + step)
            keep, out_scores = keep[pre], out_scores[pre]
            sorted_scores, perm = torch.sort(out_scores, descending=True, stable=True)
        keep, out_scores = keep[perm], sorted_scores
    else:
        keep, out_scores = result
    if max_detections >= 0:
        keep, out_scores = keep[:max_detections], out_scores[:max_detections]
    return keep, out_scores.to(scores.dtype)


def _device_layout(idxs: Tensor | None, n: int, device: torch.device) -> tuple[Tensor, ...]:
    """Group boxes by class (or any integer key) without host synchronisation: every shape
    derives from ``n``. Used by every path: per class, and on CPU per component.

    Returns:
        ``(order, cls, slot, counts, bounds)``: a class-stable ordering of the boxes
        ``(N,)``, each sorted box's dense class id ``(N,)`` (classes numbered by ascending
        id) and its slot (rank within its class, input order) ``(N,)``, the class sizes
        padded with zeros to ``(N,)``, and ``bounds = (number of classes, largest class)``
        as a device tensor ``(2,)``.
    """
    order = torch.arange(n, device=device)
    if idxs is None:
        cls = torch.zeros(n, dtype=torch.long, device=device)
        counts = torch.zeros(n, dtype=torch.long, device=device)
        counts[0] = n
        return order, cls, order, counts, torch.tensor([1, n], device=device)
    sorted_ids, order = torch.sort(idxs, stable=True)
    new = torch.ones(n, dtype=torch.bool, device=device)
    new[1:] = sorted_ids[1:] != sorted_ids[:-1]
    cls = new.cumsum(0).sub_(1)
    pos = torch.arange(n, device=device)
    start = torch.where(new, pos, 0).cummax(0).values
    counts = torch.zeros(n, dtype=torch.long, device=device).scatter_add_(
        0, cls, torch.ones_like(cls)
    )
    return order, cls, pos - start, counts, torch.stack([cls[-1] + 1, counts.max()])


def _device_solve(
    boxes_w: Tensor,
    scores_w: Tensor,
    order: Tensor,
    cls: Tensor,
    slot: Tensor,
    counts: Tensor,
    num_classes: int,
    width: int,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    max_detections: int,
    exact: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Soft-NMS of all classes in one ``(num_classes, width)`` padded layout.

    No host synchronisation: every shape follows from ``N``, ``num_classes`` and ``width``,
    the greedy loop runs exactly ``width`` steps, and the result stays padded.

    Args:
        exact: run the slot-exact engine (mmcv's tie order; ~30 small kernels per step)
            instead of the fast one (``topk`` + one weight-row gather + 3 updates per step),
            which is exact unless some pick has a tied maximum and reports that.

    Returns:
        ``(keep (K,), scores (K,), num (,), tied (,))`` with ``K = num_classes * width`` (cut
        to ``max_detections`` when ``>= 0``): kept box indices and decayed scores sorted by
        score descending (ties: class id, then selection order); entries from ``num`` on are
        padding (score ``-inf``); ``tied`` (bool) says the fast engine met a tie, so the
        result must be recomputed with ``exact=True`` (always ``False`` when exact).
    """
    neg_inf = float("-inf")
    table = torch.full((num_classes, width), -1, dtype=torch.long, device=boxes_w.device)
    table[cls, slot] = order
    valid = table >= 0
    safe = table.clamp(min=0)
    s_pad = scores_w[safe].masked_fill_(~valid, neg_inf)
    tied = torch.zeros((), dtype=torch.bool, device=boxes_w.device)
    if width == 1:  # lone boxes: nothing decays them
        sel_s = s_pad.t()
        sel_b = torch.zeros_like(sel_s, dtype=torch.long)
    else:
        # Padding boxes are unit squares: never 0 / 0, never read for a live class.
        b_pad = boxes_w[safe]
        b_pad.masked_fill_(~valid[..., None], 0.0)
        b_pad[..., 2:].masked_fill_(~valid[..., None], 1.0)
        rows = _Rows(b_pad, method, sigma, iou_threshold, True)
        if exact:
            counts = counts[:num_classes]
            sel_s, sel_b = _exact_greedy(s_pad, counts, rows, score_threshold, False)
        else:
            sel_s, sel_b, tied = _seq_greedy(s_pad, rows, score_threshold, sync=False)
    # (T, C) -> class-major flat order, so a stable sort breaks ties by class, then step.
    flat_s = sel_s.t().reshape(-1)
    flat_s = flat_s.masked_fill(~(flat_s >= score_threshold), neg_inf)
    flat_ids = safe.gather(1, sel_b.t()).reshape(-1)
    out_s, perm = torch.sort(flat_s, descending=True, stable=True)
    keep = flat_ids[perm]
    if max_detections >= 0:
        keep, out_s = keep[:max_detections], out_s[:max_detections]
    return keep, out_s, (out_s > neg_inf).sum(), tied


def _run_device(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor | None,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    max_detections: int,
) -> tuple[Tensor, Tensor]:
    """Device (CUDA) path: the data never leaves the device.

    Host reads: the padded layout's size (number of classes, largest class) before the solve;
    after it, the output length and the fast engine's tie flag, read together. Only when a
    pick had a tied maximum (rare outside constructed inputs) the slot-exact engine reruns
    and its output length is read.
    """
    work = torch.float64 if scores.dtype == torch.float64 else torch.float32
    n = boxes.shape[0]
    order, cls, slot, counts, bounds = _device_layout(idxs, n, boxes.device)
    num_classes, width = bounds.tolist()  # host read 1 (two ints)
    args = (
        boxes.detach().to(work), scores.detach().to(work), order, cls, slot, counts,
        num_classes, width, method, sigma, iou_threshold, score_threshold, max_detections,
    )  # fmt: skip
    keep, out_s, num, tied = _device_solve(*args)
    k, retry = torch.stack([num, tied.to(num.dtype)]).tolist()  # host read 2 (two ints)
    if retry:
        keep, out_s, num, _ = _device_solve(*args, exact=True)
        k = int(num)  # host read 3, ties only
    return keep[:k], out_s[:k].to(scores.dtype)


def _run_components(
    boxes_w: Tensor,
    scores_w: Tensor,
    cls_of: Tensor,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    degenerate: bool,
) -> tuple[Tensor, Tensor] | None:
    """Soft-NMS per connected component of each class's interaction graph (CPU path).

    Boxes below ``score_threshold`` are dropped first (mmcv discards them after the first
    pick of their class without them affecting anything). Components never interact, so the
    kept boxes and decayed scores equal the per-class result; the per-class pick order is
    the decayed-score order. Returns ``None`` (caller reruns the per-class slot-exact path)
    when some tie could make mmcv's slot order matter: a tied maximum inside a component, or
    two kept boxes of one class with equal decayed scores.

    Returns:
        ``(keep, scores)`` sorted by score descending, ties by class id; or ``None``.
    """
    dev = boxes_w.device
    cand = torch.nonzero(scores_w >= score_threshold).flatten()
    if cand.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=dev), scores_w.new_zeros(0)
    b, s, c = boxes_w[cand], scores_w[cand], cls_of[cand]
    comp = _components(b, c, method, iou_threshold)
    # One stable sort groups the components (the labels are box indices, so group order =
    # order of each component's first box, as torch.unique would number them).
    order, grp, slot, counts, bounds = _device_layout(comp, comp.numel(), dev)
    counts = counts[: int(bounds[0])]
    solved = _solve(
        b, s, order, grp, slot, counts, method, sigma, iou_threshold, score_threshold,
        degenerate, False, True,
    )  # fmt: skip
    if solved is None:
        return None
    keep, out_scores, _, _ = solved
    out_scores, perm = torch.sort(out_scores, descending=True, stable=True)
    keep = keep[perm]
    tie = out_scores[1:] == out_scores[:-1]
    if bool(tie.any()):  # rare: order exactly tied scores by class id (sort by class first)
        kcls = c[keep]
        pre = torch.argsort(kcls, stable=True)
        keep, out_scores, kcls = keep[pre], out_scores[pre], kcls[pre]
        out_scores, perm = torch.sort(out_scores, descending=True, stable=True)
        keep, kcls = keep[perm], kcls[perm]
        if bool(((out_scores[1:] == out_scores[:-1]) & (kcls[1:] == kcls[:-1])).any()):
            return None
    return cand[keep], out_scores


def _hard(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor | None,
    iou_threshold: float,
    score_threshold: float,
    max_detections: int,
) -> tuple[Tensor, Tensor]:
    from torchvision.ops import batched_nms, nms

    cand = torch.nonzero(scores >= score_threshold).flatten()
    b, s = boxes[cand], scores[cand]
    if idxs is None:
        kept = nms(b, s, iou_threshold)
    else:
        kept = batched_nms(b, s, idxs[cand], iou_threshold)
    keep = cand[kept]
    if max_detections >= 0:
        keep = keep[:max_detections]
    return keep, scores[keep]


def _check_common(
    boxes: object,
    scores: object,
    method: str,
    sigma: float,
    iou_threshold: float,
    max_detections: int,
) -> dict[str, int]:
    sizes: dict[str, int] = {}
    check_tensor("boxes", boxes, ("N", 4), floating=True, sizes=sizes)
    check_tensor("scores", scores, ("N",), floating=True, sizes=sizes)
    check_choice("method", method, _METHODS)
    check_positive("sigma", sigma)
    check_positive("iou_threshold", iou_threshold, allow_zero=True)
    if not isinstance(max_detections, int):
        raise ValueError(f"max_detections: expected an int, got {max_detections!r}")
    return sizes


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    max_detections: int = -1,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS of Bodla et al. (2017), https://arxiv.org/abs/1704.04503.

    Matches ``mmcv.ops.soft_nms(boxes, scores, iou_threshold, sigma, min_score=score_threshold,
    method=method, offset=0)`` (kept indices, their order including ties, and decayed scores),
    except that a first pick scoring below ``score_threshold`` is dropped (mmcv returns it).

    Args:
        boxes: ``Tensor[N, 4]`` ``(x1, y1, x2, y2)``, floating point.
        scores: ``Tensor[N]`` floating point.
        method: ``"gaussian"`` (weight ``exp(-iou^2 / sigma)``), ``"linear"`` (``1 - iou`` when
            ``iou >= iou_threshold``) or ``"hard"`` (classic NMS: drop boxes with
            ``iou > iou_threshold``, same as ``torchvision.ops.nms`` on the boxes with
            ``score >= score_threshold``). Default ``"gaussian"``.
        sigma: Gaussian width, ``> 0``. Default 0.5.
        iou_threshold: IoU threshold of ``"linear"`` / ``"hard"``. Default 0.3.
        score_threshold: boxes whose (decayed) score falls below it are discarded.
            Default 0.001.
        max_detections: keep at most this many (``< 0``: all). Default -1.

    Returns:
        ``(keep, new_scores)``: ``Tensor[K]`` int64 indices into ``boxes`` and ``Tensor[K]``
        decayed scores (dtype of ``scores``), sorted by decayed score, descending.

    Raises:
        ValueError: wrong shapes / dtypes or bad parameters; the message names the argument.

    Note:
        IoU with a non-positive union (two zero-area boxes) is taken as 0; mmcv computes
        ``0 / 0 = NaN`` there. On CUDA the computation stays on the device; the host reads
        two pairs of ints (layout size before the greedy loop, output length and a tie flag
        after it; one more int when scores tie), see the module docstring. ``"hard"`` is
        torchvision's NMS and synchronises as it does. On CPU the call runs on one intra-op
        thread (torch's setting, restored afterwards), which keeps it fast on busy cores.
    """
    _check_common(boxes, scores, method, sigma, iou_threshold, max_detections)
    return _run(boxes, scores, None, method, sigma, iou_threshold, score_threshold, max_detections)


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    max_detections: int = -1,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS applied independently per class id, all classes in parallel.

    Equivalent to running :func:`soft_nms` on each class's boxes (in input order) and merging
    the results by decayed score; boxes of different classes never interact. Matches
    ``mmcv.ops.batched_nms(boxes, scores, idxs, dict(type="soft_nms", iou_threshold=...,
    sigma=..., min_score=..., method=...))`` up to floating-point rounding (mmcv shifts the
    boxes by ``class * (max + 1)``, which costs IoU precision) and the order of exactly
    tied scores across classes (ours: class-id order, then selection order).

    Args:
        boxes: ``Tensor[N, 4]`` ``(x1, y1, x2, y2)``, floating point.
        scores: ``Tensor[N]`` floating point.
        idxs: ``Tensor[N]`` integer class ids (any values).
        method, sigma, iou_threshold, score_threshold, max_detections: as :func:`soft_nms`.

    Returns:
        ``(keep, new_scores)``: ``Tensor[K]`` int64 indices into ``boxes`` and ``Tensor[K]``
        decayed scores, sorted by decayed score, descending.

    Raises:
        ValueError: wrong shapes / dtypes or bad parameters; the message names the argument.
    """
    sizes = _check_common(boxes, scores, method, sigma, iou_threshold, max_detections)
    check_tensor("idxs", idxs, ("N",), floating=False, sizes=sizes)
    return _run(boxes, scores, idxs, method, sigma, iou_threshold, score_threshold, max_detections)
