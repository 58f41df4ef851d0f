"""Weights of effdet's tf_efficientdet_d0 (the port of the official TF checkpoint) load as-is
into our Detectron2 and MMDetection EfficientDet-D0 configs through tools/convert_effdet.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def effdet_d0_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    from effdet import create_model

    torch.manual_seed(0)
    model = create_model("tf_efficientdet_d0", pretrained=False, pretrained_backbone=False)
    path = tmp_path_factory.mktemp("effdet") / "tf_efficientdet_d0.pth"
    state = model.state_dict()
    torch.save(state, path)
    return path, state


def _convert(src: Path, dst: Path, fmt: str) -> None:
    cmd = [sys.executable, str(ROOT / "tools/convert_effdet.py"), "--variant", "efficientdet_d0"]
    res = subprocess.run(
        [*cmd, "--format", fmt, str(src), str(dst)], capture_output=True, text=True, cwd="/"
    )
    assert res.returncode == 0, res.stderr
    assert f"{fmt} layout" in res.stdout


def _assert_same_tensors(model_state: dict, loaded: dict) -> None:
    assert set(model_state) == set(loaded)
    for key, value in loaded.items():
        assert torch.equal(model_state[key], value), key


def test_detectron2_d0_loads_converted_effdet_weights(effdet_d0_checkpoint, tmp_path):
    import plugins.d2  # noqa: F401

    # isort: split
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from plugins.d2.config import add_plugins_config

    src, effdet_state = effdet_d0_checkpoint
    dst = tmp_path / "d0_d2.pth"
    _convert(src, dst, "d2")
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs/efficientdet_d0.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    result = DetectionCheckpointer(model).load(str(dst), checkpointables=[])
    assert result is not None
    converted = torch.load(dst, map_location="cpu", weights_only=True)["model"]
    assert len(converted) == len(effdet_state) - sum(k.startswith("anchors") for k in effdet_state)
    _assert_same_tensors(model.state_dict(), converted)
    # the 90-way effdet head becomes Detectron2's 80 COCO classes: class i of anchor a is
    # effdet's channel a * 90 + (category id - 1), category ids from Detectron2's own metadata
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    ids = sorted(c["id"] for c in COCO_CATEGORIES if c["isthing"])
    assert len(ids) == 80
    rows = [a * 90 + i - 1 for a in range(9) for i in ids]
    theirs = effdet_state["class_net.predict.conv_pw.weight"]
    assert torch.equal(converted["head.class_net.predict.pw.weight"], theirs[rows])


def test_mmdetection_d0_loads_converted_effdet_weights(effdet_d0_checkpoint, tmp_path):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    import plugins.mm  # noqa: F401

    src, _ = effdet_d0_checkpoint
    dst = tmp_path / "d0_mm.pth"
    _convert(src, dst, "mm")
    init_default_scope("mmdet")
    cfg = Config.fromfile(str(ROOT / "configs/mmdet/efficientdet_d0.py"))
    model = MODELS.build(cfg.model)
    checkpoint = load_checkpoint(model, str(dst), map_location="cpu", strict=True)
    _assert_same_tensors(model.state_dict(), checkpoint["state_dict"])
