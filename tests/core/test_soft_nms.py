"""Soft-NMS against mmcv (soft_nms, batched_nms) and torchvision (hard NMS).

Tolerance: kept indices (and their order) must be identical; decayed scores agree with
``mmcv.ops.soft_nms`` to rtol 1e-6 / atol 1e-7 (the arithmetic is the same float32 sequence)
and with ``mmcv.ops.batched_nms`` to rtol 1e-4 / atol 1e-6 (mmcv offsets boxes by class, which
perturbs the IoUs in the last bits).
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from plugins.core.soft_nms import batched_soft_nms, soft_nms


def _mmcv_ops():
    import mmcv.ops  # the reference; installed in the project environment

    return mmcv.ops


RTOL, ATOL = 1e-6, 1e-7


def _random_boxes(n, seed, scale=100.0, tie_scores=False):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * scale
    wh = torch.rand(n, 2, generator=g) * scale * 0.4 + 1.0
    boxes = torch.cat([xy, xy + wh], 1)
    if tie_scores:
        scores = (torch.randint(1, 5, (n,), generator=g).float()) / 5
    else:
        scores = torch.rand(n, generator=g)
    return boxes, scores


def _detector_like(n, seed, num_objects=6, num_classes=1):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(num_objects, 2, generator=g) * 300
    size = torch.rand(num_objects, 2, generator=g) * 80 + 20
    which = torch.randint(0, num_objects, (n,), generator=g)
    c = ctr[which] + torch.randn(n, 2, generator=g) * size[which] * 0.1
    s = size[which] * (1 + 0.1 * torch.randn(n, 2, generator=g)).clamp(min=0.5)
    boxes = torch.cat([c - s / 2, c + s / 2], 1)
    scores = torch.rand(n, generator=g) * 0.9 + 0.05
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    return boxes, scores, idxs


def _mmcv_soft(boxes, scores, method, sigma, iou_threshold, min_score):
    dets, inds = _mmcv_ops().soft_nms(
        boxes,
        scores,
        iou_threshold=iou_threshold,
        sigma=sigma,
        min_score=min_score,
        method=method,
        offset=0,
    )
    dets_scores = dets[:, 4]
    # mmcv returns its first pick even below min_score; we do not (documented).
    if dets_scores.numel() and dets_scores[0] < min_score:
        inds, dets_scores = inds[1:], dets_scores[1:]
    return inds.long(), dets_scores


def _assert_same(ours, ref, rtol=RTOL, atol=ATOL):
    keep, sc = ours
    rkeep, rsc = ref
    assert keep.dtype == torch.int64
    assert keep.tolist() == rkeep.tolist()
    torch.testing.assert_close(sc, rsc.to(sc.dtype), rtol=rtol, atol=atol)
    # Sorted by decayed score, descending.
    assert bool((sc[1:] <= sc[:-1]).all())


CASES = [
    ("gaussian", 0.5, 0.3, 0.001),
    ("gaussian", 0.1, 0.3, 0.05),
    ("linear", 0.5, 0.3, 0.001),
    ("linear", 0.5, 0.6, 0.1),
    ("gaussian", 0.5, 0.3, 0.0),  # no discarding at all (other fast-path branch)
]


@pytest.mark.parametrize(("method", "sigma", "iou_thr", "min_score"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_nms_random_matches_mmcv(method, sigma, iou_thr, min_score, seed):
    boxes, scores = _random_boxes(150, seed)
    ours = soft_nms(boxes, scores, method, sigma, iou_thr, min_score)
    _assert_same(ours, _mmcv_soft(boxes, scores, method, sigma, iou_thr, min_score))


@pytest.mark.parametrize(("method", "sigma", "iou_thr", "min_score"), CASES)
def test_soft_nms_detector_like_matches_mmcv(method, sigma, iou_thr, min_score):
    boxes, scores, _ = _detector_like(300, 3)
    ours = soft_nms(boxes, scores, method, sigma, iou_thr, min_score)
    _assert_same(ours, _mmcv_soft(boxes, scores, method, sigma, iou_thr, min_score))


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_soft_nms_ties_and_duplicates_match_mmcv(method, seed):
    """Equal scores and identical boxes: the pick order follows mmcv's slot swaps."""
    boxes, scores = _random_boxes(60, seed, tie_scores=True)
    boxes[30:] = boxes[:30].clone()  # duplicated boxes (IoU 1, linear weight 0)
    for min_score in (0.001, 0.05):
        ours = soft_nms(boxes, scores, method, 0.5, 0.3, min_score)
        _assert_same(ours, _mmcv_soft(boxes, scores, method, 0.5, 0.3, min_score))


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_identical_boxes_match_mmcv(method):
    boxes = torch.tensor([[10.0, 10.0, 50.0, 60.0]]).repeat(12, 1)
    scores = torch.linspace(0.9, 0.2, 12)
    scores[5] = scores[4]  # one tie
    ours = soft_nms(boxes, scores, method, 0.5, 0.3, 0.001)
    _assert_same(ours, _mmcv_soft(boxes, scores, method, 0.5, 0.3, 0.001))
    if method == "linear":  # identical boxes get weight 1 - 1 = 0: only the top survives
        assert ours[0].tolist() == [0]


def test_soft_nms_single_zero_area_box_matches_mmcv():
    boxes, scores = _random_boxes(40, 7)
    boxes[5] = torch.tensor([20.0, 20.0, 20.0, 40.0])  # zero width
    for method in ("gaussian", "linear"):
        ours = soft_nms(boxes, scores, method, 0.5, 0.3, 0.001)
        _assert_same(ours, _mmcv_soft(boxes, scores, method, 0.5, 0.3, 0.001))


def test_soft_nms_several_zero_area_boxes_do_not_interact():
    """mmcv computes 0/0 = NaN for two zero-area boxes; we define that IoU as 0."""
    boxes = torch.tensor([[5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 5.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, sc = soft_nms(boxes, scores)
    assert keep.tolist() == [0, 1, 2]
    torch.testing.assert_close(sc, scores)


def test_soft_nms_closed_form_two_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])  # IoU 1/3
    scores = torch.tensor([0.9, 0.8])
    keep, sc = soft_nms(boxes, scores, "gaussian", sigma=0.5)
    assert keep.tolist() == [0, 1]
    expected = 0.8 * torch.exp(torch.tensor(-(1 / 9) / 0.5))
    torch.testing.assert_close(sc, torch.stack([torch.tensor(0.9), expected]))
    keep, sc = soft_nms(boxes, scores, "linear", iou_threshold=0.3)
    torch.testing.assert_close(sc, torch.tensor([0.9, 0.8 * (2 / 3)]))
    keep, sc = soft_nms(boxes, scores, "linear", iou_threshold=0.5)  # below threshold
    torch.testing.assert_close(sc, scores)


def test_soft_nms_empty_and_single():
    keep, sc = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.shape == (0,) and keep.dtype == torch.int64
    assert sc.shape == (0,) and sc.dtype == torch.float32
    keep, sc = batched_soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert keep.shape == (0,) and sc.shape == (0,)
    box = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    keep, sc = soft_nms(box, torch.tensor([0.5]))
    assert keep.tolist() == [0]
    assert sc.tolist() == [0.5]
    _assert_same((keep, sc), _mmcv_soft(box, torch.tensor([0.5]), "gaussian", 0.5, 0.3, 0.001))
    keep, sc = soft_nms(box, torch.tensor([0.0001]))  # below score_threshold
    assert keep.numel() == 0


def test_soft_nms_max_detections_and_float64():
    boxes, scores = _random_boxes(80, 11)
    full = soft_nms(boxes, scores)
    keep, sc = soft_nms(boxes, scores, max_detections=7)
    assert keep.tolist() == full[0][:7].tolist()
    keep64, sc64 = soft_nms(boxes.double(), scores.double())
    assert sc64.dtype == torch.float64
    assert keep64.tolist() == full[0].tolist()
    torch.testing.assert_close(sc64.float(), full[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("split_thr", [10000, 50])  # mmcv's offset path and per-class path
def test_batched_soft_nms_matches_mmcv(method, split_thr):
    boxes, scores, idxs = _detector_like(400, 8, num_objects=10, num_classes=7)
    cfg = dict(type="soft_nms", iou_threshold=0.3, sigma=0.5, min_score=0.001, method=method)
    cfg["split_thr"] = split_thr
    dets, rkeep = _mmcv_ops().batched_nms(boxes, scores, idxs, cfg)
    keep, sc = batched_soft_nms(boxes, scores, idxs, method, 0.5, 0.3, 0.001)
    assert keep.tolist() == rkeep.tolist()
    torch.testing.assert_close(sc, dets[:, 4], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(boxes[keep], dets[:, :4])


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_batched_matches_mmcv_soft_nms_per_class(method):
    """Many classes at detector scale: equal to mmcv.ops.soft_nms run class by class.

    (mmcv.ops.batched_nms itself shifts boxes by class * (max + 1); at 1000 px and 20 classes
    that float32 rounding moves linear-method IoUs across the threshold, so this is the
    reference for large inputs.)
    """
    g = torch.Generator().manual_seed(14)
    n = 600
    xy = torch.rand(n, 2, generator=g) * 1000
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 200 + 5], 1)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, 20, (n,), generator=g)
    keep, sc = batched_soft_nms(boxes, scores, idxs, method)
    ours = torch.full((n,), float("nan"))
    ours[keep] = sc
    ref = torch.full((n,), float("nan"))
    for cid in idxs.unique():
        where = torch.nonzero(idxs == cid).flatten()
        k, s = _mmcv_soft(boxes[where], scores[where], method, 0.5, 0.3, 0.001)
        ref[where[k]] = s
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL, equal_nan=True)
    assert bool((sc[1:] <= sc[:-1]).all())


def test_batched_equals_per_class_soft_nms():
    boxes, scores, idxs = _detector_like(300, 9, num_classes=5)
    idxs = idxs * 10 - 3  # arbitrary (negative, sparse) class ids
    keep, sc = batched_soft_nms(boxes, scores, idxs)
    parts_k, parts_s = [], []
    for cid in idxs.unique():
        where = torch.nonzero(idxs == cid).flatten()
        k, s = soft_nms(boxes[where], scores[where])
        parts_k.append(where[k])
        parts_s.append(s)
    ref_s, order = torch.sort(torch.cat(parts_s), descending=True, stable=True)
    assert keep.tolist() == torch.cat(parts_k)[order].tolist()
    torch.testing.assert_close(sc, ref_s, rtol=0, atol=0)


def test_hard_method_equals_torchvision():
    boxes, scores, idxs = _detector_like(300, 10, num_classes=6)
    keep, sc = soft_nms(boxes, scores, "hard", iou_threshold=0.5, score_threshold=0.0)
    ref = torchvision.ops.nms(boxes, scores, 0.5)
    assert keep.tolist() == ref.tolist()
    torch.testing.assert_close(sc, scores[ref])
    keep, sc = batched_soft_nms(boxes, scores, idxs, "hard", iou_threshold=0.5, score_threshold=0.0)
    ref = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert keep.tolist() == ref.tolist()
    keep, _ = batched_soft_nms(boxes, scores, idxs, "hard", iou_threshold=0.5, max_detections=5)
    assert keep.tolist() == ref[:5].tolist()


def test_bad_inputs_raise_value_error_naming_argument():
    good_b, good_s = torch.zeros(3, 4), torch.zeros(3)
    with pytest.raises(ValueError, match="boxes"):
        soft_nms(torch.zeros(3, 5), good_s)
    with pytest.raises(ValueError, match="scores"):
        soft_nms(good_b, torch.zeros(4))
    with pytest.raises(ValueError, match="scores"):
        soft_nms(good_b, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="boxes"):
        soft_nms(good_b.long(), good_s)
    with pytest.raises(ValueError, match="method"):
        soft_nms(good_b, good_s, method="soft")
    with pytest.raises(ValueError, match="sigma"):
        soft_nms(good_b, good_s, sigma=0.0)
    with pytest.raises(ValueError, match="idxs"):
        batched_soft_nms(good_b, good_s, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="idxs"):
        batched_soft_nms(good_b, good_s, torch.zeros(3))


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_batched_ties_across_and_within_classes_match_mmcv_per_class(method):
    """Tied scores inside classes follow mmcv's slot order; across classes, class-id order."""
    boxes, scores = _random_boxes(240, 21, tie_scores=True)
    boxes[120:] = boxes[:120].clone()
    idxs = torch.arange(240) % 6
    keep, sc = batched_soft_nms(boxes, scores, idxs, method)
    for cid in range(6):
        where = torch.nonzero(idxs == cid).flatten()
        mine = torch.isin(keep, where)
        ref_k, ref_s = _mmcv_soft(boxes[where], scores[where], method, 0.5, 0.3, 0.001)
        assert keep[mine].tolist() == where[ref_k].tolist()  # per-class order as mmcv
        torch.testing.assert_close(sc[mine], ref_s, rtol=RTOL, atol=ATOL)
    same = sc[1:] == sc[:-1]  # equal scores: ascending class id, then selection order
    assert bool((idxs[keep][1:][same] >= idxs[keep][:-1][same]).all())


def test_inputs_requiring_grad_and_half_precision():
    boxes, scores, idxs = _detector_like(200, 22, num_classes=4)
    ref = batched_soft_nms(boxes, scores, idxs)
    keep, sc = batched_soft_nms(boxes.requires_grad_(), scores.requires_grad_(), idxs)
    assert keep.tolist() == ref[0].tolist() and not sc.requires_grad
    keep, sc = batched_soft_nms(boxes.detach().half(), scores.detach().half(), idxs)
    assert sc.dtype == torch.float16 and keep.numel() > 0


# ------------------------------------------------------------------------------------------
# CUDA: the Triton kernel (tests/core/test_soft_nms_triton.py runs it on CPU, interpreted)
# ------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize(
    ("n", "num_classes", "tie"), [(500, 5, False), (3000, 80, False), (600, 3, True)]
)
def test_cuda_matches_cpu(method, n, num_classes, tie):
    boxes, scores, idxs = _detector_like(n, 12, num_objects=30, num_classes=num_classes)
    if tie:
        scores = (scores * 4).round() / 4 + 0.01
        boxes[n // 2 :] = boxes[: n - n // 2].clone()
    a = batched_soft_nms(boxes, scores, idxs, method)
    b = batched_soft_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), method)
    assert b[0].device.type == "cuda" and b[1].device.type == "cuda"
    assert a[0].tolist() == b[0].cpu().tolist()
    torch.testing.assert_close(a[1], b[1].cpu(), rtol=1e-6, atol=1e-7)
    s = soft_nms(boxes.cuda(), scores.cuda(), method)
    r = soft_nms(boxes, scores, method)
    assert s[0].cpu().tolist() == r[0].tolist()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_cuda_kernel_does_not_synchronise(method):
    from plugins.core.soft_nms_triton import soft_nms_padded

    boxes, scores, idxs = _detector_like(5000, 3, num_objects=40, num_classes=80)
    b, s, i = boxes.cuda(), scores.cuda(), idxs.cuda()
    soft_nms_padded(b, s, i, method, 0.5, 0.3, 0.001)  # compile outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        keep, sc, num = soft_nms_padded(b, s, i, method, 0.5, 0.3, 0.001)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    k = int(num)
    ref = batched_soft_nms(boxes, scores, idxs, method)
    assert keep[:k].cpu().tolist() == ref[0].tolist()
    torch.testing.assert_close(sc[:k].cpu(), ref[1], rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
@needs_cuda
def test_cuda_large_class_and_float64():
    """One class far larger than a tile (the greedy loop walks several tiles per step)."""
    boxes, scores, _ = _detector_like(3000, 4, num_objects=60)
    for dtype in (torch.float32, torch.float64):
        b, s = boxes.to(dtype), scores.to(dtype)
        a = soft_nms(b, s, "gaussian")
        c = soft_nms(b.cuda(), s.cuda(), "gaussian")
        assert c[1].dtype == dtype
        assert a[0].tolist() == c[0].cpu().tolist()
        torch.testing.assert_close(a[1], c[1].cpu(), rtol=1e-6, atol=1e-7)
