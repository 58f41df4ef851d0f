"""plugins.mm.config_check: every registry type and basic values, one line per problem."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import mmdet
import pytest
from mmengine.config import Config

from plugins.mm.config_check import check_config
from tests.mm.test_tools import _load_tool

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "mmdet" / "demo" / "efficientdet_shapes.py"
MMDET_CONFIGS = Path(mmdet.__file__).parent / ".mim" / "configs"


@pytest.fixture(scope="module")
def demo() -> Config:
    return Config.fromfile(str(DEMO))


def _set(cfg, path: str, value) -> None:
    """``cfg.<path> = value`` for paths such as ``a.b[4].c``."""
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    node = cfg
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value


def _problems(cfg, path: str, value, mode: str = "train") -> list[str]:
    cfg = copy.deepcopy(cfg)
    _set(cfg, path, value)
    return check_config(cfg, mode)


@pytest.mark.parametrize(
    "path, bad, kind, suggestion",
    [
        ("model.backbone.type", "PluginsEfficientNett", "model", "PluginsEfficientNet"),
        ("model.bbox_head.loss_cls.type", "PluginsFocalLos", "model", "PluginsFocalLoss"),
        ("model.train_cfg.assigner.type", "MaxIOUAssigner", "task-util", "MaxIoUAssigner"),
        (
            "model.bbox_head.bbox_coder.type",
            "PluginsEfficientDetBoxCodr",
            "task-util",
            "PluginsEfficientDetBoxCoder",
        ),
        ("model.test_cfg.nms.type", "plugins_softnms", "nms", "plugins_soft_nms"),
        ("train_dataloader.dataset.type", "PluginsShapeDataset", "dataset", "PluginsShapesDataset"),
        ("train_dataloader.dataset.pipeline[4].type", "RandomFlipp", "transform", "RandomFlip"),
        ("train_dataloader.sampler.type", "DefaultSampeler", "data sampler", "DefaultSampler"),
        ("val_evaluator.type", "PluginsShapesMetrc", "metric", "PluginsShapesMetric"),
        ("optim_wrapper.optimizer.type", "AdamWW", "optimizer", "AdamW"),
        ("optim_wrapper.type", "OptimWraper", "optim wrapper", "OptimWrapper"),
        ("param_scheduler[1].type", "CosineAnealingLR", "param scheduler", "CosineAnnealingLR"),
        ("custom_hooks[0].type", "EMAHok", "hook", "EMAHook"),
        ("default_hooks.checkpoint.type", "CheckpointHok", "hook", "CheckpointHook"),
        ("train_cfg.type", "EpochBasedTrainLop", "loop", "EpochBasedTrainLoop"),
    ],
)
def test_unknown_type_is_one_line_with_path_value_and_close_match(
    demo, path, bad, kind, suggestion
):
    problems = _problems(demo, path, bad)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"unknown {kind} type {bad!r} at {path} (")
    assert f"did you mean {suggestion!r}" in problems[0]


@pytest.mark.parametrize(
    "path, bad, expected",
    [
        ("train_dataloader.batch_size", "8", "train_dataloader.batch_size: expected an int > 0"),
        ("val_dataloader.num_workers", -1, "val_dataloader.num_workers: expected an int >= 0"),
        ("optim_wrapper.optimizer.lr", "0.005", "optim_wrapper.optimizer.lr: expected a number"),
        ("train_cfg.max_epochs", 0, "train_cfg.max_epochs: expected an int > 0, got 0 (int)"),
        ("model.bbox_head.num_classes", True, "model.bbox_head.num_classes: expected an int > 0"),
        ("randomness.seed", 1.5, "randomness.seed: expected an int or None, got 1.5 (float)"),
        ("param_scheduler[0].end", 0, "param_scheduler[0]: end (0) must be greater than begin"),
    ],
)
def test_bad_value_is_one_line(demo, path, bad, expected):
    problems = _problems(demo, path, bad)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_test_mode_checks_only_what_testing_builds(demo):
    assert _problems(demo, "train_dataloader.dataset.pipeline[0].type", "LoadImage", "test") == []
    problems = _problems(demo, "test_dataloader.dataset.pipeline[1].type", "Resise", "test")
    assert len(problems) == 1 and "did you mean 'Resize'" in problems[0]


def test_our_configs_are_clean():
    # efficientdet_d1 ... d7x differ from d0 in sizes only: d0 stands for them
    configs = sorted((REPO / "configs" / "mmdet").rglob("*.py"))
    configs = [
        c
        for c in configs
        if "_base_" not in c.parts and not re.match(r"efficientdet_d[1-7]", c.name)
    ]
    assert len(configs) >= 7
    for path in configs:
        assert check_config(Config.fromfile(str(path))) == [], path


@pytest.mark.parametrize(
    "name",
    [
        "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py",  # roi_layer: mmcv.ops, not a registry
        "cascade_rpn/cascade-rpn_faster-rcnn_r50-caffe_fpn_1x_coco.py",  # adapt_cfg types
        "fpg/faster-rcnn_r50_fpg-chn128_crop640-50e_coco.py",  # the neck's own 'conv' types
        "ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py",  # dqs_cfg type 'nms'
        "cornernet/cornernet_hourglass104_8xb6-210e-mstest_coco.py",  # soft_nms, TTA
    ],
)
def test_mmdet_configs_with_unusual_types_are_clean(name):
    assert check_config(Config.fromfile(str(MMDET_CONFIGS / name))) == []


def test_mm_train_reports_every_problem_before_training(tmp_path, capsys):
    options = [
        "model.bbox_head.loss_cls.type=PluginsFocalLos",
        "train_dataloader.batch_size=0",
        "model.test_cfg.nms.type=softnms",
    ]
    with pytest.raises(SystemExit) as info:
        _load_tool("mm_train").main(
            [str(DEMO), "--work-dir", str(tmp_path), "--cfg-options", *options]
        )
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(
        line.startswith(f"mm_train: error: config {DEMO}: ") for line in lines
    )
    assert "'PluginsFocalLos' at model.bbox_head.loss_cls.type" in lines[0]
    assert "did you mean 'soft_nms'" in lines[1] and "batch_size" in lines[2]
    assert os.listdir(tmp_path) == []  # nothing was built or written
