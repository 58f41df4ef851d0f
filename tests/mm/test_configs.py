"""Every config under configs/mmdet loads and builds; the EfficientDet recipe matches the paper."""

from __future__ import annotations

from pathlib import Path

import mmdet.models  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
import pytest
import torch
from mmdet.registry import MODELS  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import plugins.mm  # noqa: E402,F401
from plugins.core.variants import EFFICIENTDET_VARIANTS  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "mmdet"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.py") if "_base_" not in p.parts)
EFFDET = sorted(p for p in CONFIGS if p.parent == CONFIG_DIR and p.stem.startswith("efficientdet_"))


def test_config_set_is_complete():
    names = {p.stem for p in EFFDET}
    expected = {f"efficientdet_d{i}" for i in range(8)} | {"efficientdet_d7x"}
    assert names == expected
    assert (CONFIG_DIR / "retinanet_r50_fpn_1x_coco_plugins.py") in CONFIGS
    assert (CONFIG_DIR / "demo" / "efficientdet_shapes.py") in CONFIGS
    assert (CONFIG_DIR / "demo" / "retinanet_shapes.py") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_loads_and_builds(path):
    cfg = Config.fromfile(str(path))
    assert "plugins.mm" in cfg.custom_imports["imports"]
    assert cfg.custom_imports.get("allow_failed_imports") is False
    init_default_scope("mmdet")
    model_cfg = cfg.model
    if path.stem in EFFICIENTDET_VARIANTS:  # the paper configs (not own_data/)
        # compare with effdet's parameter count, which is for 90 classes
        model_cfg = cfg.model.copy()
        model_cfg.bbox_head = dict(cfg.model.bbox_head, num_classes=90)
    with (
        torch.device("meta")
        if path.stem in ("efficientdet_d7", "efficientdet_d7x")
        else torch.device("cpu")
    ):
        model = MODELS.build(model_cfg)
    head = model.roi_head if hasattr(model, "roi_head") else model.bbox_head  # two-stage
    assert head is not None
    if path.stem in EFFICIENTDET_VARIANTS:  # the paper configs (not own_data/)
        variant = EFFICIENTDET_VARIANTS[path.stem]
        count = sum(p.numel() for p in model.parameters())
        assert count == variant.expected_params


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_test_pipelines_check_the_image_first(path):
    """Grayscale / RGBA / too thin inputs are handled by PluginsCheckImage in every val and
    test pipeline, right after loading, with the scale of the resize that follows."""
    cfg = Config.fromfile(str(path))
    for loader in ("val_dataloader", "test_dataloader"):
        pipeline = cfg[loader].dataset.pipeline
        types = [t["type"] for t in pipeline]
        assert types[:2] == ["LoadImageFromFile", "PluginsCheckImage"], (loader, types)
        resize = next((t for t in pipeline if t["type"] == "Resize"), None)
        scale = pipeline[1].get("scale")
        assert (None if scale is None else tuple(scale)) == (
            None if resize is None else tuple(resize["scale"])
        ), (loader, pipeline)


@pytest.mark.parametrize("path", EFFDET, ids=lambda p: p.stem)
def test_efficientdet_recipe(path):
    cfg = Config.fromfile(str(path))
    variant = EFFICIENTDET_VARIANTS[path.stem]
    size = variant.image_size
    m = cfg.model
    assert m.type == "PluginsEfficientDet"
    for part in (m.backbone, m.neck, m.bbox_head, m.bbox_head.anchor_generator):
        assert part.variant == path.stem
    assert m.data_preprocessor.pad_size_divisor == 2**variant.max_level
    assert m.data_preprocessor.batch_augments[0].size == (size, size)
    assert m.bbox_head.loss_cls == dict(
        type="PluginsFocalLoss", use_sigmoid=True, gamma=1.5, alpha=0.25, loss_weight=1.0
    )
    assert m.bbox_head.loss_bbox == dict(type="PluginsHuberLoss", delta=0.1, loss_weight=50.0)
    nms = m.test_cfg.nms
    assert (nms.type, nms.method, nms.sigma) == ("plugins_soft_nms", "gaussian", 0.5)

    jitter = next(t for t in cfg.train_pipeline if t.type == "RandomResize")
    assert jitter.scale == (size, size) and tuple(jitter.ratio_range) == (0.1, 2.0)
    crop = next(t for t in cfg.train_pipeline if t.type == "RandomCrop")
    assert crop.crop_size == (size, size)
    assert cfg.train_dataloader.dataset.pipeline == cfg.train_pipeline
    resize = next(t for t in cfg.test_dataloader.dataset.pipeline if t.type == "Resize")
    assert resize.scale == (size, size)

    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ("SGD", 0.16, 0.9, 4e-5)
    assert cfg.auto_scale_lr.base_batch_size == 128
    scheds = [s.type for s in cfg.param_scheduler]
    assert scheds == ["LinearLR", "CosineAnnealingLR"]
    assert cfg.param_scheduler[1].end == cfg.train_cfg.max_epochs
    (ema,) = [h for h in cfg.custom_hooks if h.type == "EMAHook"]
    assert abs((1 - ema.momentum) - 0.9998) < 1e-12


def test_retinanet_config_uses_plugins():
    cfg = Config.fromfile(str(CONFIG_DIR / "retinanet_r50_fpn_1x_coco_plugins.py"))
    head = cfg.model.bbox_head
    assert head.type == "PluginsRetinaHead"
    assert head.loss_cls.type == "PluginsFocalLoss" and head.loss_cls.gamma == 2.0
    assert cfg.model.test_cfg.nms.type == "plugins_soft_nms"
    assert "iou_threshold" in cfg.model.test_cfg.nms and cfg.model.backbone.depth == 50
