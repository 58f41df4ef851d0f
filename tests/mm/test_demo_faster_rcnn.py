"""configs/mmdet/demo/faster_rcnn_shapes.py: MMDetection's packaged Faster R-CNN as the CPU demo
of the soft-NMS AP table. The config builds with each ``--cfg-options`` switch of the
measurement commands (README / BENCHMARKS) and predicts on one image (random weights)."""

from __future__ import annotations

import functools
from pathlib import Path

import mmdet.models  # noqa: F401
import numpy as np
import pytest
import torch
from mmdet.apis import inference_detector, init_detector
from mmdet.structures.bbox import bbox_overlaps
from mmengine.config import Config

import plugins.mm  # noqa: F401

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


def _image() -> np.ndarray:
    """A 256 x 256 BGR image with a few filled rectangles (seeded)."""
    rng = np.random.default_rng(0)
    image = np.full((256, 256, 3), 90, np.uint8)
    for x, y, w, h in rng.integers([0, 0, 20, 20], [200, 200, 60, 60], (4, 4)):
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return image


@functools.cache
def _run(nms: str):
    cfg = Config.fromfile(str(CONFIG))
    fast = {"model.test_cfg.rpn.max_per_img": 200, "model.test_cfg.rcnn.max_per_img": -1}  # no cut
    cfg.merge_from_dict({**fast, **SWITCHES[nms]})
    torch.manual_seed(0)
    model = init_detector(cfg, None, device="cpu")
    return cfg, inference_detector(model, _image()).pred_instances


def _key(pred, i: int) -> tuple:
    return (int(pred.labels[i]), *pred.bboxes[i].tolist())


@pytest.mark.parametrize("nms", list(SWITCHES))
def test_demo_config_predicts_with_each_nms(nms, single_thread):
    cfg, pred = _run(nms)
    assert cfg.model.type == "FasterRCNN" and cfg.model.backbone.depth == 18
    assert cfg.model.roi_head.bbox_head.num_classes == 6
    assert cfg.model.test_cfg.rpn.nms.type == "nms"  # proposals: hard NMS
    assert len(pred) > 0
    assert bool((pred.bboxes >= 0).all() and (pred.bboxes <= 256).all())
    assert set(pred.labels.tolist()) <= set(range(6))
    if nms == "hard":
        assert cfg.model.test_cfg.rcnn.nms == dict(type="nms", iou_threshold=0.5)
        # no two kept boxes of one class overlap by more than the threshold
        iou = bbox_overlaps(pred.bboxes, pred.bboxes)
        same = pred.labels[:, None] == pred.labels[None, :]
        assert float(torch.where(same, iou, 0.0).fill_diagonal_(0.0).max()) <= 0.5 + 1e-6
        return
    # same weights and image as the hard run: the top box is the same and undecayed; boxes
    # kept by both runs never score higher here, some (overlapping others) score lower
    hard = _run("hard")[1]
    torch.testing.assert_close(pred.bboxes[0], hard.bboxes[0], rtol=0, atol=0)
    assert float(pred.scores[0]) == float(hard.scores[0])
    hard_scores = {_key(hard, i): float(hard.scores[i]) for i in range(len(hard))}
    pairs = [(float(pred.scores[i]), hard_scores.get(_key(pred, i))) for i in range(len(pred))]
    pairs = [(soft, h) for soft, h in pairs if h is not None]
    assert all(soft <= h for soft, h in pairs)
    assert any(soft < h for soft, h in pairs)
    assert len(pred) > len(hard)  # suppressed boxes stay, with decayed scores
