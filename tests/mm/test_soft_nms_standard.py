"""``nms=dict(type="plugins_soft_nms")`` in MMDetection's own detectors (plugins.mm.soft_nms).

Each case builds one of mmdet's packaged configs (``mmdet/.mim/configs``) with random weights,
switches only ``nms.type`` (and sets the soft-NMS keys), and runs ``predict`` on
``demo_mm_inputs``. The core soft-NMS is recorded where the hook calls it; the detections must
be exactly the core's output on those pre-NMS candidates (boxes, order, decayed scores), cut to
``max_per_img``; masks follow the kept boxes.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import mmdet
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config
from mmengine.registry import init_default_scope

import plugins.mm  # noqa: F401  (installs the hook)
from plugins.core.soft_nms import batched_soft_nms

snms = importlib.import_module("plugins.mm.soft_nms")

CONFIGS = Path(mmdet.__file__).parent / ".mim" / "configs"
SOFT = dict(type="plugins_soft_nms", method="gaussian", sigma=0.5, min_score=0.001)

# packaged config, test_cfg nodes whose nms is switched (None: test_cfg itself)
CASES = {
    "faster_rcnn": ("faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", ["rcnn", "rpn"]),
    "mask_rcnn": ("mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py", ["rcnn"]),
    "cascade_mask_rcnn": ("cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py", ["rcnn"]),
    "fcos": ("fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py", [None]),
    "atss": ("atss/atss_r50_fpn_1x_coco.py", [None]),
    "gfl": ("gfl/gfl_r50_fpn_1x_coco.py", [None]),
    "retinanet": ("retinanet/retinanet_r50_fpn_1x_coco.py", [None]),
    "yolox": ("yolox/yolox_tiny_8xb8-300e_coco.py", [None]),
}


@pytest.fixture(scope="module", autouse=True)
def _scope(single_thread):
    init_default_scope("mmdet")


def _config(rel: str, where: list, nms: dict) -> Config:
    cfg = Config.fromfile(str(CONFIGS / rel))
    for key in where:
        node = cfg.model.test_cfg if key is None else cfg.model.test_cfg[key]
        node.nms = dict(nms, iou_threshold=node.nms.get("iou_threshold", 0.3))
    return cfg


def _confident_(model: torch.nn.Module) -> None:
    """Random R-CNN classifiers give every class 1/81: spread the logits so boxes pass
    ``score_thr`` and reach the NMS."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("fc_cls"):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.5)


@pytest.fixture
def recorder(monkeypatch):
    calls = []
    core = snms.plugins_batched_soft_nms

    def record(bboxes, scores, labels, nms_cfg):
        dets, keep = core(bboxes, scores, labels, nms_cfg)
        calls.append((bboxes.clone(), scores.clone(), labels.clone(), dict(nms_cfg), dets, keep))
        return dets, keep

    monkeypatch.setattr(snms, "plugins_batched_soft_nms", record)
    return calls


def _predict(model, with_mask: bool):
    torch.manual_seed(0)
    packed = demo_mm_inputs(
        batch_size=1, image_shapes=(3, 128, 128), num_items=[3], num_classes=80, with_mask=with_mask
    )
    data = model.data_preprocessor(packed, False)
    with torch.no_grad():
        return model.predict(data["inputs"], data["data_samples"], rescale=False)[0].pred_instances


@pytest.mark.parametrize("name", list(CASES))
def test_packaged_config_with_plugins_soft_nms_equals_core(name, recorder):
    rel, where = CASES[name]
    cfg = _config(rel, where, SOFT)
    model = MODELS.build(cfg.model).eval()
    _confident_(model)
    pred = _predict(model, with_mask="mask" in name)
    # the last call is the detector's final NMS (RPN proposals come first where switched)
    assert len(recorder) == len(where), [c[3] for c in recorder]
    bboxes, scores, labels, nms_cfg, dets, keep = recorder[-1]
    assert nms_cfg["type"] == "plugins_soft_nms" and keep.numel() > 0
    ref_keep, ref_scores = batched_soft_nms(
        bboxes, scores, labels, "gaussian", 0.5, nms_cfg["iou_threshold"], 0.001
    )
    node = cfg.model.test_cfg.rcnn if where[0] == "rcnn" else cfg.model.test_cfg
    k = min(ref_keep.numel(), node.get("max_per_img", ref_keep.numel()))  # YOLOX: no cut
    assert len(pred) == k
    torch.testing.assert_close(pred.bboxes, bboxes[ref_keep[:k]], rtol=0, atol=0)
    torch.testing.assert_close(pred.scores, ref_scores[:k], rtol=0, atol=0)
    assert pred.labels.tolist() == labels[ref_keep[:k]].tolist()
    if where[0] == "rcnn":  # (random dense heads may predict boxes that never intersect)
        assert bool((ref_scores < scores[ref_keep]).any())  # decayed: soft, not hard NMS
    if "mask" in name:
        assert pred.masks.shape[0] == k  # masks follow the kept boxes


def test_misspelled_type_fails_when_the_model_is_built():
    cfg = _config(CASES["faster_rcnn"][0], ["rcnn"], dict(SOFT, type="plugins_softnms"))
    with pytest.raises(ValueError, match=r"test_cfg\.rcnn\.nms\.type.*'plugins_soft_nms'"):
        MODELS.build(cfg.model)
    cfg = _config(CASES["retinanet"][0], [None], dict(SOFT, type="sofft_nms"))
    with pytest.raises(ValueError, match=r"did you mean 'soft_nms'"):
        MODELS.build(copy.deepcopy(cfg.model))


def test_check_nms_type_accepts_mmcv_and_plugins_types():
    for name in snms.NMS_TYPES:
        snms.check_nms_type(name)
    assert all(callable(getattr(snms._MMCV_NMS_MODULE, n)) for n in snms.MMCV_NMS_TYPES)
    with pytest.raises(ValueError, match="unknown NMS type 'nmss'.*did you mean 'nms'"):
        snms.check_nms_type("nmss")


def test_mmcv_batched_nms_held_before_the_hook_still_resolves_the_type():
    """Code holding mmcv's own batched_nms reaches ``plugins_soft_nms`` through its eval."""
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 60 + 5], 1)
    scores = torch.rand(300, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    dets, keep = snms._MMCV_BATCHED_NMS(boxes, scores, labels, dict(SOFT))
    ref_keep, ref_scores = batched_soft_nms(boxes, scores, labels)
    assert sorted(keep.tolist()) == sorted(ref_keep.tolist())
    mine = torch.full((300,), -1.0)
    mine[keep] = dets[:, 4]
    torch.testing.assert_close(mine[ref_keep], ref_scores, rtol=1e-4, atol=1e-6)  # offsets
    hooked, hooked_keep = snms.batched_nms(boxes, scores, labels, dict(SOFT))
    assert hooked_keep.tolist() == ref_keep.tolist()
