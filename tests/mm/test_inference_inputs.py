"""Inference inputs in MMDetection: grayscale, 1 x N and 5000 x 5000 arrays through mmdet's own
``inference_detector`` / ``DetInferencer`` with our configs (``PluginsCheckImage``)."""

from __future__ import annotations

import functools
from pathlib import Path

import mmdet.models  # noqa: F401
import numpy as np
import pytest
import torch
from mmdet.apis import DetInferencer, inference_detector, init_detector
from mmengine.config import Config

import plugins.mm  # noqa: F401
from plugins.mm.image_input import PluginsCheckImage

DEMO = Path(__file__).resolve().parents[2] / "configs" / "mmdet" / "demo"
CONFIGS = ["efficientdet_shapes.py", "retinanet_shapes.py", "cornernet_shapes.py"]


def _config(name: str) -> Config:
    cfg = Config.fromfile(str(DEMO / name))
    if name == "efficientdet_shapes.py":  # the tiny variant: random weights, fast
        tiny = dict(base="efficientdet_test", anchor_scale=3.0)
        for node in (cfg.model.backbone, cfg.model.neck, cfg.model.bbox_head):
            node.variant = tiny
        cfg.model.bbox_head.anchor_generator.variant = tiny
    if name == "cornernet_shapes.py":  # random embeddings: pair corners regardless
        cfg.model.test_cfg.distance_threshold = 1e9
    return cfg


@functools.cache
def _model(name: str):
    torch.manual_seed(1)  # as in tests/d2/test_inference_inputs.py
    return init_detector(_config(name), None, device="cpu")


@pytest.fixture(params=CONFIGS)
def model(request, single_thread):
    return _model(request.param)


def _boxes(sample) -> torch.Tensor:
    return sample.pred_instances.bboxes


def test_grayscale_is_the_replicated_color_image(model) -> None:
    gray = np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)
    color = inference_detector(model, np.repeat(gray[:, :, None], 3, axis=2))
    assert len(color.pred_instances) > 0
    for image in (gray, np.dstack([gray, gray, gray, np.zeros_like(gray)])):
        out = inference_detector(model, image)  # (H, W); (H, W, 4) with alpha
        assert out.metainfo["ori_shape"] == (64, 80)
        assert torch.equal(_boxes(out), _boxes(color))


def test_det_inferencer_takes_grayscale(single_thread) -> None:
    inferencer = DetInferencer(
        model=_config("efficientdet_shapes.py"), weights=None, device="cpu", show_progress=False
    )
    inferencer.model.load_state_dict(_model("efficientdet_shapes.py").state_dict())
    gray = np.random.default_rng(1).integers(0, 255, (48, 64), dtype=np.uint8)
    out = inferencer(gray, return_datasamples=True, no_save_pred=True)["predictions"][0]
    ref = inference_detector(_model("efficientdet_shapes.py"), np.dstack([gray] * 3))
    assert out.metainfo["ori_shape"] == (48, 64) and torch.equal(_boxes(out), _boxes(ref))


def test_elongated_images_work_or_name_the_limit(model) -> None:
    scale = next(t.scale for t in model.cfg.test_dataloader.dataset.pipeline if "scale" in t)
    limit = 2 * max(scale)  # up to this aspect ratio the shorter side keeps >= 1 px
    out = inference_detector(model, np.full((1, limit - 10, 3), 128, np.uint8))
    assert out.metainfo["ori_shape"] == (1, limit - 10)
    with pytest.raises(ValueError, match=r"an image of 1 x 5000 px .* would be resized to 0 x"):
        inference_detector(model, np.full((1, 5000, 3), 128, np.uint8))


def test_5000_by_5000_image(single_thread) -> None:
    model = _model("efficientdet_shapes.py")  # the others ran it by hand
    image = np.zeros((5000, 5000, 3), dtype=np.uint8)
    image[1000:3000, 2000:4000] = 255
    out = inference_detector(model, image)
    assert out.metainfo["ori_shape"] == (5000, 5000) and len(out.pred_instances) > 0
    assert (_boxes(out) <= 5000 + 1e-3).all()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 2), np.uint8), r"got \(8, 8, 2\)"),
        (np.zeros((0, 8, 3), np.uint8), "empty image"),
        (np.zeros((8, 8, 3), object), "dtype object"),
    ],
)
def test_other_inputs_are_clear_errors(image, message: str) -> None:
    with pytest.raises(ValueError, match=f"img: .*{message}"):
        PluginsCheckImage(scale=(256, 256)).transform({"img": image})
