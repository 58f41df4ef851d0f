"""configs/demo/faster_rcnn_shapes.yaml: Detectron2's model-zoo Faster R-CNN as the CPU demo
of the soft-NMS AP table. The config builds with each ``MODEL.NMS.TYPE`` override of the
measurement commands (README / BENCHMARKS) and predicts on one image (random weights)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import plugins.d2  # noqa: F401  (first: stands in for a missing detectron2._C)

# isort: split
from detectron2.structures import pairwise_iou

from plugins.d2.predictor import Predictor
from plugins.d2.soft_nms import SoftNMSThreshold

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import train_net  # noqa: E402

CONFIG = ROOT / "configs" / "demo" / "faster_rcnn_shapes.yaml"
# the --eval-only overrides of the AP table's three rows
SWITCHES = {"hard": [], "linear": ["MODEL.NMS.TYPE", "linear"], "gaussian": ["MODEL.NMS.TYPE", "gaussian"]}  # fmt: skip


def _image() -> np.ndarray:
    """A 256 x 256 BGR image with a few filled rectangles (seeded)."""
    rng = np.random.default_rng(0)
    image = np.full((256, 256, 3), 90, np.uint8)
    for x, y, w, h in rng.integers([0, 0, 20, 20], [200, 200, 60, 60], (4, 4)):
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return image


@functools.cache
def _run(nms: str):
    torch.manual_seed(0)
    fast = ["MODEL.RPN.POST_NMS_TOPK_TEST", "200", "TEST.DETECTIONS_PER_IMAGE", "-1"]  # no cut
    cfg = train_net.load_config(str(CONFIG), ["MODEL.WEIGHTS", "", *fast, *SWITCHES[nms]])
    predictor = Predictor(cfg)
    return cfg, predictor.model, predictor(_image())["instances"]


@pytest.mark.parametrize("nms", list(SWITCHES))
def test_demo_config_predicts_with_each_nms(nms, single_thread):
    cfg, model, inst = _run(nms)
    assert type(model).__name__ == "GeneralizedRCNN"
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 6
    threshold = model.roi_heads.box_predictor.test_nms_thresh
    assert float(threshold) == cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.5
    assert not isinstance(model.proposal_generator.nms_thresh, SoftNMSThreshold)  # RPN: hard
    assert len(inst) > 0
    boxes = inst.pred_boxes.tensor
    assert bool((boxes >= 0).all() and (boxes <= 256).all())
    assert set(inst.pred_classes.tolist()) <= set(range(6))
    if nms == "hard":
        assert not isinstance(threshold, SoftNMSThreshold)
        iou = pairwise_iou(inst.pred_boxes, inst.pred_boxes)
        same = inst.pred_classes[:, None] == inst.pred_classes[None, :]
        assert float(torch.where(same, iou, 0.0).fill_diagonal_(0.0).max()) <= 0.5 + 1e-6
        return
    assert isinstance(threshold, SoftNMSThreshold) and threshold.method == nms
    assert (threshold.iou_threshold, threshold.sigma) == (0.3, 0.5)  # the paper's N_t, sigma
    # same weights and image as the hard run: the top box is the same and undecayed; boxes
    # kept by both runs never score higher here, some (overlapping others) score lower
    hard = _run("hard")[2]
    assert torch.equal(inst.pred_boxes.tensor[0], hard.pred_boxes.tensor[0])
    assert float(inst.scores[0]) == float(hard.scores[0])
    hard_scores = {_key(hard, i): float(hard.scores[i]) for i in range(len(hard))}
    pairs = [(float(inst.scores[i]), hard_scores.get(_key(inst, i))) for i in range(len(inst))]
    pairs = [(soft, h) for soft, h in pairs if h is not None]
    assert all(soft <= h for soft, h in pairs)
    assert any(soft < h for soft, h in pairs)
    assert len(inst) > len(hard)  # suppressed boxes stay, with decayed scores


def _key(inst, i: int) -> tuple:
    return (int(inst.pred_classes[i]), *inst.pred_boxes.tensor[i].tolist())
