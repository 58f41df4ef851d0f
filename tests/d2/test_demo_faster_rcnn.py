"""configs/demo/faster_rcnn_shapes.yaml: Detectron2's model-zoo Faster R-CNN as the CPU demo
of the soft-NMS AP table. The config builds with each ``MODEL.NMS.TYPE`` override of the
measurement commands (README / BENCHMARKS) and predicts on one image (random weights)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

import plugins.d2  # noqa: F401  (first: stands in for a missing detectron2._C)

# isort: split
from plugins.d2.predictor import Predictor
from plugins.d2.soft_nms import SoftNMSThreshold
from tests.nms_checks import assert_soft_decays_hard, max_same_class_iou, rectangles_image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import train_net  # noqa: E402

CONFIG = ROOT / "configs" / "demo" / "faster_rcnn_shapes.yaml"
# the --eval-only overrides of the AP table's three rows
SWITCHES = {"hard": [], "linear": ["MODEL.NMS.TYPE", "linear"], "gaussian": ["MODEL.NMS.TYPE", "gaussian"]}  # fmt: skip


@functools.cache
def _run(nms: str):
    torch.manual_seed(0)
    fast = ["MODEL.RPN.POST_NMS_TOPK_TEST", "200", "TEST.DETECTIONS_PER_IMAGE", "-1"]  # no cut
    cfg = train_net.load_config(str(CONFIG), ["MODEL.WEIGHTS", "", *fast, *SWITCHES[nms]])
    predictor = Predictor(cfg)
    inst = predictor(rectangles_image())["instances"]
    return cfg, predictor.model, (inst.pred_boxes.tensor, inst.scores, inst.pred_classes)


@pytest.mark.parametrize("nms", list(SWITCHES))
def test_demo_config_predicts_with_each_nms(nms, single_thread):
    cfg, model, (boxes, scores, labels) = _run(nms)
    assert type(model).__name__ == "GeneralizedRCNN"
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 6
    threshold = model.roi_heads.box_predictor.test_nms_thresh
    assert float(threshold) == cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.5
    assert not isinstance(model.proposal_generator.nms_thresh, SoftNMSThreshold)  # RPN: hard
    assert len(boxes) > 0 and bool((boxes >= 0).all() and (boxes <= 256).all())
    assert set(labels.tolist()) <= set(range(6))
    if nms == "hard":
        assert not isinstance(threshold, SoftNMSThreshold)
        assert max_same_class_iou(boxes, labels) <= 0.5 + 1e-6
    else:
        assert isinstance(threshold, SoftNMSThreshold) and threshold.method == nms
        assert (threshold.iou_threshold, threshold.sigma) == (0.3, 0.5)  # the paper's N_t, sigma
        # same weights and image as the hard run
        assert_soft_decays_hard((boxes, scores, labels), _run("hard")[2])
