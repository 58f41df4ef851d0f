"""configs/mmdet/demo/faster_rcnn_shapes.py: MMDetection's packaged Faster R-CNN as the CPU demo
of the soft-NMS AP table. The config builds with each ``--cfg-options`` switch of the
measurement commands (README / BENCHMARKS) and predicts on one image (random weights)."""

from __future__ import annotations

import functools
from pathlib import Path

import mmdet.models  # noqa: F401
import pytest
import torch
from mmdet.apis import inference_detector, init_detector
from mmengine.config import Config

import plugins.mm  # noqa: F401
from tests.nms_checks import assert_soft_decays_hard, max_same_class_iou, rectangles_image

CONFIG = (
    Path(__file__).resolve().parents[2] / "configs" / "mmdet" / "demo" / "faster_rcnn_shapes.py"
)
NMS = "model.test_cfg.rcnn.nms."
# the tools/mm_test.py --cfg-options of the AP table's three rows
SWITCHES = {
    "hard": {},
    "linear": {NMS + "type": "plugins_soft_nms", NMS + "method": "linear", NMS + "iou_threshold": 0.3},
    "gaussian": {NMS + "type": "plugins_soft_nms", NMS + "method": "gaussian", NMS + "sigma": 0.5},
}  # fmt: skip


@functools.cache
def _run(nms: str):
    cfg = Config.fromfile(str(CONFIG))
    fast = {"model.test_cfg.rpn.max_per_img": 200, "model.test_cfg.rcnn.max_per_img": -1}  # no cut
    cfg.merge_from_dict({**fast, **SWITCHES[nms]})
    torch.manual_seed(0)
    pred = inference_detector(init_detector(cfg, None, device="cpu"), rectangles_image())
    pred = pred.pred_instances
    return cfg, (pred.bboxes, pred.scores, pred.labels)


@pytest.mark.parametrize("nms", list(SWITCHES))
def test_demo_config_predicts_with_each_nms(nms, single_thread):
    cfg, (boxes, scores, labels) = _run(nms)
    assert cfg.model.type == "FasterRCNN" and cfg.model.backbone.depth == 18
    assert cfg.model.roi_head.bbox_head.num_classes == 6
    assert cfg.model.test_cfg.rpn.nms.type == "nms"  # proposals: hard NMS
    assert len(boxes) > 0 and bool((boxes >= 0).all() and (boxes <= 256).all())
    assert set(labels.tolist()) <= set(range(6))
    if nms == "hard":
        assert cfg.model.test_cfg.rcnn.nms == dict(type="nms", iou_threshold=0.5)
        assert max_same_class_iou(boxes, labels) <= 0.5 + 1e-6
    else:
        # same weights and image as the hard run
        assert_soft_decays_hard((boxes, scores, labels), _run("hard")[1])
