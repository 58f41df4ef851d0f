"""Compiled CPU loop of :mod:`plugins.core.soft_nms` (numba, compiled once and cached on disk).

Imported lazily by :mod:`plugins.core.soft_nms` on the first CPU call, so ``import plugins.core``
stays light. numba writes the compiled machine code next to this file (``__pycache__``) or, where
that is read-only, to its user-wide cache (``NUMBA_CACHE_DIR``); the first call of a process that
finds no cache compiles for about a second per dtype (float32, float64).
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def soft_nms_groups(
    boxes: np.ndarray,
    scores: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    linear: bool,
    sigma,
    iou_threshold,
    score_threshold,
    one,
) -> tuple[np.ndarray, np.ndarray]:
    """mmcv's CPU soft-NMS loop (``mmcv/ops/csrc/pytorch/cpu/nms.cpp``, offset 0) per group.

    Every group (class) is solved alone in mmcv's slot layout: pick the first slot holding the
    highest score, swap it into the front slot, decay every remaining slot, and move the last
    remaining box into the slot of a box whose score fell below ``score_threshold``. The same
    float arithmetic as mmcv, except that a pair without a positive intersection is skipped
    (its weight is exactly 1 in both methods) and a non-positive union gives IoU 0 (mmcv: NaN).

    Args:
        boxes: ``(N, 4)`` xyxy, float32 or float64 (the working dtype).
        scores: ``(N,)`` same dtype.
        order: ``(N,)`` int64, box ids grouped by class (stable: input order inside a class).
        starts, sizes: ``(G,)`` int64, each group's first position in ``order`` and its size.
        linear: ``True`` for the linear decay, ``False`` for the Gaussian one.
        sigma, iou_threshold, score_threshold, one: scalars of the working dtype (``one`` = 1,
            so that ``1 - iou`` stays in that dtype).

    Returns:
        ``(keep, new_scores)``: ``(K,)`` int64 box ids and their decayed scores, sorted by
        decayed score descending; ties by group, then selection order.
    """
    n = order.shape[0]
    x1 = np.empty_like(scores)
    y1 = np.empty_like(scores)
    x2 = np.empty_like(scores)
    y2 = np.empty_like(scores)
    area = np.empty_like(scores)
    sc = np.empty_like(scores)
    ind = np.empty(n, dtype=np.int64)
    for k in range(n):
        j = order[k]
        x1[k] = boxes[j, 0]
        y1[k] = boxes[j, 1]
        x2[k] = boxes[j, 2]
        y2[k] = boxes[j, 3]
        area[k] = (x2[k] - x1[k]) * (y2[k] - y1[k])
        sc[k] = scores[j]
        ind[k] = j
    out_ind = np.empty(n, dtype=np.int64)
    out_sc = np.empty_like(scores)
    num = 0
    for g in range(starts.shape[0]):
        i = starts[g]
        live = i + sizes[g]  # exclusive end of the remaining slots
        while i < live:
            p = i
            best = sc[i]
            for q in range(i + 1, live):
                if best < sc[q]:
                    best = sc[q]
                    p = q
            px1, py1, px2, py2, parea, pind = x1[p], y1[p], x2[p], y2[p], area[p], ind[p]
            x1[p], y1[p], x2[p], y2[p] = x1[i], y1[i], x2[i], y2[i]
            area[p], sc[p], ind[p] = area[i], sc[i], ind[i]
            x1[i], y1[i], x2[i], y2[i], area[i], sc[i], ind[i] = (
                px1,
                py1,
                px2,
                py2,
                parea,
                best,
                pind,
            )
            if best >= score_threshold:  # mmcv also returns a sub-threshold first pick
                out_ind[num] = pind
                out_sc[num] = best
                num += 1
            q = i + 1
            while q < live:
                w = min(px2, x2[q]) - max(px1, x1[q])
                h = min(py2, y2[q]) - max(py1, y1[q])
                if w > 0 and h > 0:
                    inter = w * h
                    union = parea + area[q] - inter
                    if union > 0:
                        ovr = inter / union
                        if linear:
                            if ovr >= iou_threshold:
                                sc[q] *= one - ovr
                        else:
                            sc[q] *= math.exp(-(ovr * ovr) / sigma)
                if sc[q] < score_threshold:  # discard: the last remaining box takes the slot
                    live -= 1
                    x1[q], y1[q], x2[q], y2[q] = x1[live], y1[live], x2[live], y2[live]
                    area[q], sc[q], ind[q] = area[live], sc[live], ind[live]
                else:
                    q += 1
            i += 1
    # Merge the groups: stable sort of the group-major picks by score, descending.
    perm = np.argsort(-out_sc[:num], kind="mergesort")
    return out_ind[:num][perm], out_sc[:num][perm]
