"""Inference inputs in Detectron2: grayscale, 1 x N and 5000 x 5000 arrays (plugins.d2.predictor)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import plugins.d2  # noqa: F401  (first: stands in for a missing detectron2._C)

# isort: split
from plugins.core.image_input import as_three_channels, pad_for_resize, resized_size
from plugins.d2.predictor import Predictor
from tests.d2.test_train_net import TINY as EFFICIENTDET_TINY

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import train_net  # noqa: E402

# random weights; score threshold 0 so that every image gives detections to compare
TINY = {
    "efficientdet_shapes.yaml": EFFICIENTDET_TINY,
    "retinanet_shapes.yaml": ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"],
    "cornernet_shapes.yaml": ["MODEL.CORNERNET.DISTANCE_THRESHOLD", "1e9"],
}  # fmt: skip
SMALL = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128"]  # as EFFICIENTDET_TINY


@functools.cache
def _predictor(config: str) -> Predictor:
    torch.manual_seed(1)  # (seed 0 happens to give CornerNet no corner pair of one class)
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *SMALL, *TINY[config]]
    return Predictor(train_net.load_config(str(ROOT / "configs" / "demo" / config), opts))


@pytest.fixture(params=list(TINY))
def predictor(request, single_thread) -> Predictor:
    return _predictor(request.param)


def _boxes(out: dict) -> torch.Tensor:
    return out["instances"].pred_boxes.tensor


def test_grayscale_is_the_replicated_color_image(predictor: Predictor) -> None:
    gray = np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)
    color = predictor(np.repeat(gray[:, :, None], 3, axis=2))
    assert len(color["instances"]) > 0
    for image in (gray, np.dstack([gray, gray, gray, np.zeros_like(gray)])):
        out = predictor(image)  # (H, W); (H, W, 4) with alpha
        assert out["instances"].image_size == (64, 80)
        assert torch.equal(_boxes(out), _boxes(color))


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1), (1, 1)])
def test_one_pixel_high_or_wide_images_give_boxes_inside_them(predictor, shape) -> None:
    image = np.full((*shape, 3), 128, dtype=np.uint8)
    out = predictor(image)
    assert out["instances"].image_size == shape
    boxes = _boxes(out)
    assert (boxes[:, 0::2] <= shape[1]).all() and (boxes[:, 1::2] <= shape[0]).all()
    assert (boxes >= 0).all() and out["instances"].pred_boxes.nonempty().all()


def test_5000_by_5000_image(single_thread) -> None:
    predictor = _predictor("efficientdet_shapes.yaml")  # the others ran it by hand
    image = np.zeros((5000, 5000, 3), dtype=np.uint8)
    image[1000:3000, 2000:4000] = 255
    out = predictor(image)
    assert out["instances"].image_size == (5000, 5000) and len(out["instances"]) > 0
    assert (_boxes(out) <= 5000).all()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ([[0, 1], [2, 3]], "expected a numpy array"),
        (np.zeros((8, 8, 2), np.uint8), r"got \(8, 8, 2\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), r"got \(2, 8, 8, 3\)"),
        (np.zeros((0, 8, 3), np.uint8), "empty image"),
        (np.zeros((8, 8, 3), bool), "dtype bool"),
    ],
)
def test_other_inputs_are_clear_errors(image, message: str) -> None:
    with pytest.raises(ValueError, match=f"original_image: .*{message}"):
        as_three_channels(image, "original_image")


def test_resize_rule_and_padding_match_detectron2() -> None:
    from detectron2.data.transforms import ResizeShortestEdge

    for h, w, short, long in [(1, 5000, 256, 256), (3, 700, 800, 1333), (480, 640, 256, 320)]:
        assert resized_size(h, w, short, long) == ResizeShortestEdge.get_output_shape(
            h, w, short, long
        )
        padded = pad_for_resize(np.ones((h, w, 3)), long)
        new_h, new_w = resized_size(*padded.shape[:2], short, long)
        assert min(new_h, new_w) >= 1 and padded[:h, :w].all() and padded.sum() == h * w * 3
