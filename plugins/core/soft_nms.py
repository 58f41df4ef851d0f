"""Soft-NMS (Bodla et al. 2017, https://arxiv.org/abs/1704.04503), per class.

Semantics follow mmcv 2.1.0's CPU ``soft_nms`` (``mmcv/ops/csrc/pytorch/cpu/nms.cpp``), offset 0,
applied to each class alone:

* Repeatedly pick the remaining box with the highest current score, then multiply the score of
  every other remaining box by a weight of its IoU with the picked box:
  ``"gaussian"``: ``exp(-iou^2 / sigma)`` for every box; ``"linear"``: ``1 - iou`` when
  ``iou >= iou_threshold`` and 1 otherwise. A box whose score falls below ``score_threshold``
  (mmcv's ``min_score``) is discarded.
* Ties: mmcv keeps the boxes in one array in input order. Picking box ``m`` swaps it with the
  first remaining slot; discarding a box moves the *last* remaining box into its slot. The
  argmax takes the first slot holding the maximum. Both engines below keep exactly this slot
  bookkeeping, so ties resolve as in ``mmcv.ops.soft_nms``.

Engines (one algorithm, mmcv's loop, in two compiled forms):

* CPU: :func:`plugins.core._soft_nms_cpu.soft_nms_groups`, one numba-compiled loop over all
  classes (compiled once per machine and cached on disk; numba is pinned in requirements.txt).
  Work per class is that of mmcv's kernel, minus the IoU of pairs that do not intersect; no
  per-class Python overhead.
* CUDA: :func:`plugins.core.soft_nms_triton.soft_nms_padded`, one Triton kernel launch (one
  program per class) plus a few torch ops for grouping and merging; nothing synchronises with
  the host until the output length is read, once, at the end. Without Triton (a torch build
  that lacks it) and on other devices the boxes take a round trip through the CPU engine, as
  mmcv's soft-NMS does for every CUDA call.

Outputs are sorted by decayed score, descending; exactly tied scores of different classes come
in class-id order, then in selection order.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import Tensor

from plugins.core._validate import check_choice, check_positive, check_tensor

__all__ = ["soft_nms", "batched_soft_nms"]

_METHODS = ("linear", "gaussian", "hard")


def _run(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor | None,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    max_detections: int,
) -> tuple[Tensor, Tensor]:
    dev = boxes.device
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=dev), scores.new_zeros(0)
    if method == "hard":
        return _hard(boxes, scores, idxs, iou_threshold, score_threshold, max_detections)
    args = (method, sigma, iou_threshold, score_threshold)
    if dev.type == "cuda" and _has_triton():
        from plugins.core.soft_nms_triton import soft_nms_padded

        keep, out, num = soft_nms_padded(boxes, scores, idxs, *args)
        k = int(num)  # the one host read: the output length
        if max_detections >= 0:
            k = min(k, max_detections)
        return keep[:k], out[:k].to(scores.dtype)
    if dev.type == "cpu":
        keep, out = _run_cpu(boxes, scores, idxs, *args)
    else:  # other devices, or CUDA without Triton: a round trip through the CPU engine
        keep, out = _run_cpu(boxes.cpu(), scores.cpu(), None if idxs is None else idxs.cpu(), *args)
        keep, out = keep.to(dev), out.to(dev)
    if max_detections >= 0:
        keep, out = keep[:max_detections], out[:max_detections]
    return keep, out.to(scores.dtype)


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _run_cpu(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor | None,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """The compiled CPU engine; returns all kept boxes in the working dtype."""
    from plugins.core._soft_nms_cpu import soft_nms_groups  # numba: imported on first use

    work = torch.float64 if scores.dtype == torch.float64 else torch.float32
    real = np.float64 if work == torch.float64 else np.float32
    b = boxes.detach().to(work).contiguous().numpy()
    s = scores.detach().to(work).contiguous().numpy()
    n = s.shape[0]
    if idxs is None:
        order = np.arange(n, dtype=np.int64)
        starts = np.zeros(1, dtype=np.int64)
        sizes = np.full(1, n, dtype=np.int64)
    else:
        ids = idxs.detach().numpy()
        order = np.argsort(ids, kind="stable").astype(np.int64, copy=False)
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
        sizes = np.diff(np.append(starts, n))
    keep, out = soft_nms_groups(
        b, s, order, starts, sizes, method == "linear", real(sigma), real(iou_threshold),
        real(score_threshold), real(1.0),
    )  # fmt: skip
    return torch.from_numpy(keep), torch.from_numpy(out)


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
        ``0 / 0 = NaN`` there. On CUDA the computation stays on the device (one Triton
        kernel); the host reads one int, the output length, at the end. ``"hard"`` is
        torchvision's NMS and synchronises as it does. No autograd: the outputs are detached.
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
