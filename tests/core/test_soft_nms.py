"""Soft-NMS against mmcv (soft_nms, batched_nms) and torchvision (hard NMS).

Tolerance: kept indices (and their order) must be identical; decayed scores agree with
``mmcv.ops.soft_nms`` to rtol 1e-6 / atol 1e-7 (the arithmetic is the same float32 sequence)
and with ``mmcv.ops.batched_nms`` to rtol 1e-4 / atol 1e-6 (mmcv offsets boxes by class, which
perturbs the IoUs in the last bits).
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torchvision

from plugins.core.soft_nms import _run, batched_soft_nms, soft_nms

# The module itself (the package re-exports a function of the same name).
soft_nms_module = importlib.import_module("plugins.core.soft_nms")


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
        # The mmcv-exact engine also runs alone (it is the fallback after a detected tie).
        forced = _run(boxes, scores, None, method, 0.5, 0.3, min_score, -1, force_exact=True)
        _assert_same(forced, _mmcv_soft(boxes, scores, method, 0.5, 0.3, min_score))


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


def test_soft_nms_no_sync_path_equals_cpu_path():
    """The device path (fixed steps, no host sync, always compacting) gives the same result."""
    boxes, scores, idxs = _detector_like(200, 5, num_classes=4)
    scores[::7] = 0.0005  # some boxes below threshold from the start
    for method in ("gaussian", "linear"):
        a = _run(boxes, scores, idxs, method, 0.5, 0.3, 0.01, -1)
        b = _run(boxes, scores, idxs, method, 0.5, 0.3, 0.01, -1, sync=False)
        assert a[0].tolist() == b[0].tolist()
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


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
def test_memory_bound_paths_match_mmcv(monkeypatch, method):
    """Weight rows computed on the fly and many small class chunks (tiny memory bound)."""
    monkeypatch.setattr(soft_nms_module, "_MAX_BLOCK", 300)
    boxes, scores, idxs = _detector_like(120, 13, num_classes=3)
    keep, sc = soft_nms(boxes, scores, method)
    _assert_same((keep, sc), _mmcv_soft(boxes, scores, method, 0.5, 0.3, 0.001))
    per_class = _run(boxes, scores, None, method, 0.5, 0.3, 0.001, -1, components=False)
    _assert_same(per_class, _mmcv_soft(boxes, scores, method, 0.5, 0.3, 0.001))
    bk, bs = batched_soft_nms(boxes, scores, idxs, method)
    monkeypatch.undo()
    ref_k, ref_s = batched_soft_nms(boxes, scores, idxs, method)
    assert bk.tolist() == ref_k.tolist()
    torch.testing.assert_close(bs, ref_s, rtol=0, atol=0)


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


# ------------------------------------------------------------------------------------------
# Device path (what CUDA tensors run): no host synchronisation inside
# ------------------------------------------------------------------------------------------

# Calls that make a CUDA stream wait for the host (a device-to-host copy or a data-dependent
# output size).
_SYNCING = {
    "__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu",
    "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select",
    "repeat_interleave",
}  # fmt: skip


class _HostSyncRecorder(torch.overrides.TorchFunctionMode):
    """Records every torch call that would synchronise a CUDA device with the host."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        syncs = name in _SYNCING
        if name == "where" and len(args) + len(kwargs) == 1:
            syncs = True  # torch.where(cond) is nonzero
        if name in ("__getitem__", "__setitem__", "index_put_", "index_put"):
            index = args[1] if len(args) > 1 else None
            parts = index if isinstance(index, (tuple, list)) else (index,)
            syncs = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts)
        if name == "to" and any(str(a).startswith("cpu") for a in args[1:]):
            syncs = True
        if syncs:
            self.calls.append(name)
        return func(*args, **kwargs)


def test_recorder_sees_syncing_calls():
    x = torch.arange(6.0)
    with _HostSyncRecorder() as rec:
        _ = x[x > 2], torch.nonzero(x), x.sum().item(), bool(x.max() > 1), x.unique()
        _ = x.sort(stable=True), x.cummax(0), x[torch.tensor([1, 2])], x.masked_fill(x > 1, 0)
    assert rec.calls == ["__getitem__", "nonzero", "item", "__bool__", "unique"]


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize(("n", "num_classes"), [(60, 3), (700, 40)])
def test_device_path_reads_two_pairs_and_equals_cpu_path(method, n, num_classes):
    """The path CUDA tensors take, run on CPU: same result as the CPU path, and the only host
    reads are the two documented ones (layout size before the solve; output length and tie
    flag after it), whatever the number of boxes and greedy steps."""
    boxes, scores, idxs = _detector_like(n, 21, num_objects=8, num_classes=num_classes)
    scores[::9] = 0.0005
    ref = _run(boxes, scores, idxs, method, 0.5, 0.3, 0.01, 50)
    with _HostSyncRecorder() as rec:
        got = _run(boxes, scores, idxs, method, 0.5, 0.3, 0.01, 50, sync=False)
    assert rec.calls == ["tolist", "tolist"]
    assert got[0].tolist() == ref[0].tolist()
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_device_path_ties_rerun_the_exact_engine(method):
    """Tied scores: the fast device engine reports the tie, the slot-exact engine reruns (one
    more int read) and the result is mmcv's order, as on the CPU path."""
    boxes, scores = _random_boxes(60, 44, scale=150.0, tie_scores=True)
    idxs = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(44))
    with _HostSyncRecorder() as rec:
        got = _run(boxes, scores, idxs, method, 0.5, 0.3, 0.001, -1, sync=False)
    assert rec.calls == ["tolist", "tolist", "__int__"]
    ref = _run(boxes, scores, idxs, method, 0.5, 0.3, 0.001, -1, components=False)
    assert got[0].tolist() == ref[0].tolist()
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)
    single = _run(boxes, scores, None, method, 0.5, 0.3, 0.001, -1, sync=False)
    _assert_same(single, _mmcv_soft(boxes, scores, method, 0.5, 0.3, 0.001))


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_device_engine_runs_on_meta_tensors(method, exact):
    """Meta tensors have shapes but no data: any host read or data-dependent shape raises.
    The layout and the whole greedy engine run on them, so nothing in them waits for data."""
    n, num_classes, width = 64, 5, 20
    meta = torch.device("meta")
    boxes = torch.empty(n, 4, device=meta)
    scores = torch.empty(n, device=meta)
    idxs = torch.empty(n, dtype=torch.long, device=meta)
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.nonzero(scores)  # the premise: a data-dependent op fails on meta
    order, cls, slot, counts, bounds = soft_nms_module._device_layout(idxs, n, meta)
    assert bounds.shape == (2,)
    keep, sc, num, tied = soft_nms_module._device_solve(
        boxes, scores, order, cls, slot, counts, num_classes, width, method, 0.5, 0.3, 0.001, 30,
        exact=exact,
    )  # fmt: skip
    assert keep.shape == sc.shape == (30,) and num.shape == tied.shape == ()
    assert keep.device.type == "meta" and keep.dtype == torch.int64


def test_device_layout_matches_unique():
    _, _, idxs = _detector_like(200, 4, num_classes=9)
    idxs = idxs * 5 - 7
    order, cls, slot, counts, bounds = soft_nms_module._device_layout(idxs, 200, idxs.device)
    _, inverse, r_counts = torch.unique(idxs, return_inverse=True, return_counts=True)
    r_order = torch.argsort(inverse, stable=True)
    r_cls = inverse[r_order]
    r_slot = torch.arange(200) - (torch.cumsum(r_counts, 0) - r_counts)[r_cls]
    assert bounds.tolist() == [r_counts.numel(), int(r_counts.max())]
    assert order.tolist() == r_order.tolist() and cls.tolist() == r_cls.tolist()
    assert slot.tolist() == r_slot.tolist()
    assert counts[: r_counts.numel()].tolist() == r_counts.tolist()
    assert int(counts[r_counts.numel() :].abs().sum()) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_cuda_engine_does_not_synchronise(method, exact):
    boxes, scores, idxs = _detector_like(2000, 3, num_objects=20, num_classes=80)
    dev = torch.device("cuda")
    b, s, i = boxes.to(dev), scores.to(dev), idxs.to(dev)
    order, cls, slot, counts, bounds = soft_nms_module._device_layout(i, b.shape[0], dev)
    num_classes, width = bounds.tolist()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        keep, sc, num, tied = soft_nms_module._device_solve(
            b, s, order, cls, slot, counts, num_classes, width, method, 0.5, 0.3, 0.001, -1,
            exact=exact,
        )  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not bool(tied)
    k = int(num)
    ref = batched_soft_nms(boxes, scores, idxs, method)
    assert keep[:k].cpu().tolist() == ref[0].tolist()
    torch.testing.assert_close(sc[:k].cpu(), ref[1], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    boxes, scores, idxs = _detector_like(500, 12, num_classes=5)
    a = batched_soft_nms(boxes, scores, idxs)
    b = batched_soft_nms(boxes.cuda(), scores.cuda(), idxs.cuda())
    assert b[0].device.type == "cuda"
    assert a[0].tolist() == b[0].cpu().tolist()
    torch.testing.assert_close(a[1], b[1].cpu(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Component path (CPU): each class split into connected components of its interaction graph
# ------------------------------------------------------------------------------------------


def _mmcv_per_class(boxes, scores, idxs, method, sigma=0.5, iou_thr=0.3, min_score=0.001):
    """mmcv.ops.soft_nms class by class -> decayed score per input box (NaN: not kept)."""
    ref = torch.full((boxes.shape[0],), float("nan"), dtype=scores.dtype)
    for cid in idxs.unique():
        where = torch.nonzero(idxs == cid).flatten()
        k, s = _mmcv_soft(boxes[where], scores[where], method, sigma, iou_thr, min_score)
        ref[where[k]] = s
    return ref


def _brute_components(boxes, idxs, method, iou_thr):
    """Components by breadth-first search over all pairs whose decay weight is not 1."""
    n = boxes.shape[0]
    x1 = torch.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = torch.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = torch.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = torch.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = inter / (area[:, None] + area[None, :] - inter)
    adj = (inter > 0) if method == "gaussian" else (iou >= iou_thr)
    adj &= idxs[:, None] == idxs[None, :]
    label = [-1] * n
    for root in range(n):
        if label[root] >= 0:
            continue
        label[root], todo = root, [root]
        while todo:
            for j in torch.nonzero(adj[todo.pop()]).flatten().tolist():
                if label[j] < 0:
                    label[j] = root
                    todo.append(j)
    return torch.tensor(label)


def _same_partition(a, b):
    pairs_a = {(x, y) for x, y in zip(a.tolist(), b.tolist())}
    return len(pairs_a) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("small_blocks", [False, True])
def test_components_equal_brute_force(monkeypatch, method, small_blocks):
    """The sweep finds exactly the connected components (lowest index labels each one)."""
    if small_blocks:  # many pair blocks and several merges of the collected edges
        monkeypatch.setattr(soft_nms_module, "_PAIR_BLOCK", 64)
        monkeypatch.setattr(soft_nms_module, "_MERGE_EDGES", 32)
    boxes, _, idxs = _detector_like(250, 21, num_objects=25, num_classes=4)
    boxes[::9, 2] = boxes[::9, 0]  # some zero-width boxes: no edges
    comp = soft_nms_module._components(boxes, idxs, method, 0.3)
    ref = _brute_components(boxes, idxs, method, 0.3)
    assert _same_partition(comp, ref)
    first = torch.full((250,), 250).scatter_reduce(0, comp, torch.arange(250), "amin")
    assert comp.tolist() == first[comp].tolist() and bool((comp <= torch.arange(250)).all())
    assert 20 < len(set(comp.tolist())) < 250  # a real mix of components


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", [0, 1])
def test_component_path_many_components_matches_mmcv(method, seed):
    """Many small clusters per class: equal to the per-class path (bit for bit) and mmcv."""
    boxes, scores, idxs = _detector_like(500, 30 + seed, num_objects=60, num_classes=6)
    boxes = boxes * 4  # spread the objects: many separate components
    keep, sc = batched_soft_nms(boxes, scores, idxs, method)
    old = _run(boxes, scores, idxs, method, 0.5, 0.3, 0.001, -1, components=False)
    assert keep.tolist() == old[0].tolist()
    torch.testing.assert_close(sc, old[1], rtol=0, atol=0)
    ours = torch.full((500,), float("nan"))
    ours[keep] = sc
    ref = _mmcv_per_class(boxes, scores, idxs, method)
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL, equal_nan=True)


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_component_path_one_giant_component_matches_mmcv(method):
    """Every box overlaps every other: one component of the whole input."""
    g = torch.Generator().manual_seed(40)
    base = torch.tensor([100.0, 100.0, 300.0, 260.0])
    boxes = base + torch.randn(400, 4, generator=g) * 12
    scores = torch.rand(400, generator=g)
    comp = soft_nms_module._components(boxes, torch.zeros(400, dtype=torch.long), method, 0.3)
    assert set(comp.tolist()) == {0}
    ours = soft_nms(boxes, scores, method)
    _assert_same(ours, _mmcv_soft(boxes, scores, method, 0.5, 0.3, 0.001))


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_component_path_isolated_and_touching_boxes_match_mmcv(method):
    """A grid of boxes that at most share an edge (intersection 0): nothing decays."""
    g = torch.Generator().manual_seed(41)
    xy = torch.stack(torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij"), -1)
    xy = xy.reshape(-1, 2) * 10
    boxes = torch.cat([xy, xy + 10], 1)  # neighbours touch
    scores = torch.rand(boxes.shape[0], generator=g)
    idxs = torch.randint(0, 3, (boxes.shape[0],), generator=g)
    keep, sc = soft_nms(boxes, scores, method)
    _assert_same((keep, sc), _mmcv_soft(boxes, scores, method, 0.5, 0.3, 0.001))
    assert sorted(keep.tolist()) == torch.nonzero(scores >= 0.001).flatten().tolist()
    torch.testing.assert_close(sc, scores[keep], rtol=0, atol=0)
    bk, bs = batched_soft_nms(boxes, scores, idxs, method)
    ref_s, ref_k = torch.sort(scores, descending=True, stable=True)
    assert bk.tolist() == ref_k[ref_s >= 0.001].tolist()


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_component_path_ties_fall_back_to_mmcv_order(method):
    """Equal decayed scores in one class (separate components, and inside one component):
    the slot-exact per-class path decides the order, as mmcv."""
    boxes, scores = _random_boxes(80, 42, scale=400.0, tie_scores=True)
    idxs = torch.randint(0, 2, (80,), generator=torch.Generator().manual_seed(42))
    tied = soft_nms_module._run_components(boxes, scores, idxs, method, 0.5, 0.3, 0.001, False)
    assert tied is None  # the component path declines
    keep, sc = batched_soft_nms(boxes, scores, idxs, method)
    old = _run(boxes, scores, idxs, method, 0.5, 0.3, 0.001, -1, components=False)
    assert keep.tolist() == old[0].tolist()
    torch.testing.assert_close(sc, old[1], rtol=0, atol=0)
    _assert_same(
        soft_nms(boxes, scores, method), _mmcv_soft(boxes, scores, method, 0.5, 0.3, 0.001)
    )


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_shallow_classes_skip_the_component_search(monkeypatch, method):
    """Classes of at most _SHALLOW_CLASS boxes go straight to the per-class path (cheaper);
    deeper ones use the component search. Both give the same result."""
    boxes, scores, idxs = _detector_like(300, 50, num_objects=12, num_classes=20)
    assert int(torch.bincount(idxs).max()) <= soft_nms_module._SHALLOW_CLASS
    calls = []
    real = soft_nms_module._run_components
    monkeypatch.setattr(soft_nms_module, "_run_components", lambda *a: calls.append(1) or real(*a))
    shallow = batched_soft_nms(boxes, scores, idxs, method)
    assert calls == []
    forced = _run(boxes, scores, idxs, method, 0.5, 0.3, 0.001, -1, components=True)
    assert calls == [1]
    assert shallow[0].tolist() == forced[0].tolist()
    torch.testing.assert_close(shallow[1], forced[1], rtol=0, atol=0)
    batched_soft_nms(boxes, scores, idxs // 4, method)  # 5 classes of ~60 boxes
    assert calls == [1, 1]


def test_cpu_path_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """Hundreds of small ops: one intra-op thread (immune to busy cores), count restored."""
    boxes, scores, idxs = _detector_like(100, 60, num_classes=3)
    seen = []
    real = soft_nms_module._run_host

    def spy(*args):
        seen.append(torch.get_num_threads())
        if len(seen) == 2:
            raise RuntimeError("boom")
        return real(*args)

    monkeypatch.setattr(soft_nms_module, "_run_host", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        keep, _ = batched_soft_nms(boxes, scores, idxs)
        assert keep.numel() > 0 and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"):
            batched_soft_nms(boxes, scores, idxs)
        assert torch.get_num_threads() == 2  # restored on the error path too
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]
